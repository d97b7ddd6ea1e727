"""Rewards derived from a report and the curriculum's earlier reports, besides the raw reported numbers.

- `return_progress`: |episode_return of this report - episode_return of the last report of the same
  task|. Same task: the same index in a discrete space; in a box, the nearest task (in coordinates
  scaled to [-1, 1], the most recent among equally near ones) among the curriculum's last
  `PROGRESS_WINDOW` reports. None (no reward) for a task's first report or a report without a return.
- `<gradient signal>_normalized` for each gradient norm (`grad_norm_mean_normalized`, ...): the value
  divided by the mean of that signal over this report and those of the curriculum's previous
  `SCALE_WINDOW - 1` reports that carry it, so that rewards stay comparable while gradient
  magnitudes drift during training. 1.0 for the first report that carries it.

Everything is read from the `proposals` rows inside the report's transaction (which holds the
curriculum's lock), so the values are the same after a restart and with several service processes.
"Last" means by report time.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from teacher_service import wire
from teacher_service.db import Proposal
from teacher_service.task_spaces import DiscreteSpace, TaskSpace

GRADIENT_SIGNALS = ("grad_norm_mean", "grad_norm_episode", "critic_grad_norm_mean", "critic_grad_norm_episode")
DERIVED_SIGNALS = ("return_progress", *(f"{name}_normalized" for name in GRADIENT_SIGNALS))
PROGRESS_WINDOW = 1_000
SCALE_WINDOW = 100


def earlier_reports(proposal: Row, *columns):
    """The curriculum's reported proposals other than this one, the most recently reported first."""
    return (
        select(*columns)
        .where(
            Proposal.curriculum_id == proposal.curriculum_id,
            Proposal.reported_at.is_not(None),
            Proposal.seq != proposal.seq,
        )
        .order_by(Proposal.reported_at.desc(), Proposal.seq.desc())
    )


def return_progress(conn: Connection, space: TaskSpace, proposal: Row, signals: wire.Signals) -> float | None:
    if signals.episode_return is None or proposal.task_values is None:
        return None
    query = earlier_reports(proposal, Proposal.task_values, Proposal.signals).limit(PROGRESS_WINDOW)
    if isinstance(space, DiscreteSpace):
        query = query.where(Proposal.task_index == proposal.task_index)
    previous = [row for row in conn.execute(query) if row.signals.get("episode_return") is not None]
    if not previous:
        return None
    nearest = 0  # a discrete task's own last report
    if not isinstance(space, DiscreteSpace):
        features = space.features_of_values(np.array([row.task_values for row in previous]))
        distances = np.linalg.norm(features - space.features_of_values(proposal.task_values), axis=1)
        nearest = int(np.argmin(distances))  # the first, i.e. most recent, among ties
    return abs(signals.episode_return - previous[nearest].signals["episode_return"])


def normalized(conn: Connection, proposal: Row, signals: wire.Signals, name: str) -> float | None:
    value = signals.value(name)
    if value is None:
        return None
    earlier = conn.scalars(earlier_reports(proposal, Proposal.signals).limit(SCALE_WINDOW - 1))
    values = [value, *(s[name] for s in earlier if s.get(name) is not None)]
    scale = float(np.mean(values))
    return value / scale if scale > 0 else 0.0  # a zero mean of norms means this one is zero too


def compute_reward(
    conn: Connection, reward_signal: str, space: TaskSpace, proposal: Row, signals: wire.Signals
) -> float | None:
    """The reward of this report for a curriculum rewarded with `reward_signal`; call before the
    proposal is marked reported."""
    if reward_signal == "return_progress":
        return return_progress(conn, space, proposal, signals)
    if reward_signal in DERIVED_SIGNALS:
        return normalized(conn, proposal, signals, reward_signal.removesuffix("_normalized"))
    return signals.value(reward_signal)
