"""The reward of a report, with the earlier reports that derived rewards need read from the database.

The maths is in `learning/rewards.py`; this module only reads its inputs, inside the report's
transaction (which holds the curriculum's lock).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from teacher_service import wire
from teacher_service.learning import rewards
from teacher_service.learning.task_spaces import DiscreteSpace, TaskSpace
from teacher_service.serving.store.tables import Proposal


def earlier_reports(proposal: Row, *columns):
    """The curriculum's reported proposals other than this one, the most recently reported first, through
    ix_proposals_derived_window (with a student ix_proposals_student_derived_window, and a task index
    ix_proposals_task_derived_window): a report reads its window, not the history. Callers skip stopped and
    abandoned episodes (an `outcome` in their signals): a cut episode's return or gradients are not a finished
    episode's."""
    return (
        select(*columns)
        .where(
            Proposal.curriculum_id == proposal.curriculum_id,
            Proposal.derived_window_at.is_not(None),
            Proposal.seq != proposal.seq,
        )
        .order_by(Proposal.derived_window_at.desc(), Proposal.seq.desc())
    )


def reward(conn: Connection, reward_signal: str, space: TaskSpace, proposal: Row, signals: wire.Signals,
           before_reading: Callable[[], None] = lambda: None) -> float | None:
    """The reward of this report for a curriculum rewarded with `reward_signal`; call before the
    proposal is marked reported. `before_reading` is called before earlier reports are read (a report
    batch writes the rows it holds back)."""
    if reward_signal == "return_progress":
        if signals.episode_return is None or proposal.task_values is None:
            return None
        # Progress is a change in one student: another student's return on the task says nothing about it.
        query = (
            earlier_reports(proposal, Proposal.task_values, Proposal.signals)
            .where(Proposal.student_id == proposal.student_id)
            .limit(rewards.PROGRESS_WINDOW)
        )
        discrete = isinstance(space, DiscreteSpace)
        if discrete:
            query = query.where(Proposal.task_index == proposal.task_index)
        before_reading()
        with conn.execute(query) as rows:
            previous = (
                (row.task_values, row.signals["episode_return"])
                for row in rows
                if row.signals.get("episode_return") is not None and "outcome" not in row.signals
            )
            # A discrete task is compared with its own last report: the rows after the first are not decoded.
            previous = list(islice(previous, 1) if discrete else previous)
        return rewards.return_progress(space, proposal.task_values, signals.episode_return, previous)
    if reward_signal in rewards.DERIVED_SIGNALS:
        name = reward_signal.removesuffix("_normalized")
        value = signals.value(name)
        if value is None:
            return None
        before_reading()
        earlier = conn.scalars(earlier_reports(proposal, Proposal.signals).limit(rewards.SCALE_WINDOW - 1))
        return rewards.normalized(
            value, [s[name] for s in earlier if s.get(name) is not None and "outcome" not in s]
        )
    return signals.value(reward_signal)
