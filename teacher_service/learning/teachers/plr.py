"""`plr`: Prioritized Level Replay (Jiang et al., ICML 2021).

Replays the tasks ("levels") with the highest recent learning potential, measured by a score the
student reports: the curriculum's `reward_signal`, which should be `positive_value_loss` (PLR's
score; see README "More teachers and signals"), though any non-negative signal works.

- Levels: a discrete space's tasks; in a box, a buffer of at most `buffer_size` tasks drawn
  uniformly. A level is *seen* once it has a reported score; its score is its latest report's.
- Propose: replay (with probability `replay_prob`, and always once a discrete space has no unseen
  task left) or a new level (an unseen task uniformly; in a box, a uniform point). Never replay
  before a level is seen.
- Replay distribution over seen levels: P = (1 - `staleness_coef`) P_S + `staleness_coef` P_C.
  P_S is rank prioritization: P_S(i) proportional to (1 / rank(S_i))^(1 / `temperature`), rank 1
  for the highest score. P_C favours levels not reported for long: P_C(i) proportional to
  c - C_i, with c the teacher's report count and C_i that count at level i's last report.
- Box buffer: a new level's first report enters the buffer, into an empty slot or in place of the
  lowest-scored level if it scores higher. A replayed level whose slot was replaced meanwhile is
  treated as new.
- Learns from every report (batch_size 1, horizon 1). The report count, not the proposal count,
  clocks staleness: a proposal changes no state, so replicas and restarts see the same teacher.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams


class PLRParams(TeacherParams):
    replay_prob: float = Field(default=0.5, ge=0, le=1, description="Probability of replaying a seen level.")
    temperature: float = Field(default=0.1, gt=0, le=10, description="Beta of the rank prioritization.")
    staleness_coef: float = Field(default=0.1, ge=0, le=1, description="Rho: share of the staleness distribution.")
    buffer_size: int = Field(default=256, ge=1, le=100_000, description="Box spaces: levels kept.")


class PLRTeacher(Teacher):
    name = "plr"
    Params = PLRParams

    def __init__(self, space, params: PLRParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self.discrete = isinstance(space, DiscreteSpace)
        slots = space.size if self.discrete else params.buffer_size
        self.scores = np.full(slots, np.nan)  # NaN: not seen (discrete) or an empty slot (box)
        self.last_report = np.zeros(slots)
        self.levels = None if self.discrete else np.zeros((slots, space.dim))
        self.reports = 0

    batch_size = 1  # learns from every report

    # ------------------------------------------------------------------ propose

    def replay_distribution(self) -> np.ndarray:
        """P over slots; 0 for unseen ones. Call only when some level is seen."""
        seen = ~np.isnan(self.scores)
        ranks = np.empty(int(seen.sum()))
        ranks[np.argsort(-self.scores[seen], kind="stable")] = np.arange(1, len(ranks) + 1)
        by_score = (1 / ranks) ** (1 / self.params.temperature)
        staleness = self.reports - self.last_report[seen]
        by_staleness = staleness / staleness.sum() if staleness.sum() > 0 else np.full(len(ranks), 1 / len(ranks))
        rho = self.params.staleness_coef
        probs = np.zeros(len(self.scores))
        probs[seen] = (1 - rho) * by_score / by_score.sum() + rho * by_staleness
        return probs

    def propose(self, context: Context) -> Decision:
        seen = ~np.isnan(self.scores)
        unseen = np.flatnonzero(~seen) if self.discrete else None
        replay = seen.any() and (
            (self.discrete and len(unseen) == 0)
            or float(torch.rand(1, generator=self.generator)) < self.params.replay_prob
        )
        if replay:
            slot = int(torch.multinomial(torch.as_tensor(self.replay_distribution()), 1, generator=self.generator))
            if self.discrete:
                return Decision(task_index=slot, teacher_input={"replay": True})
            return Decision(task_values=self.levels[slot].tolist(), teacher_input={"replay": True, "slot": slot})
        if self.discrete:
            index = int(unseen[int(torch.randint(len(unseen), (1,), generator=self.generator))])
            return Decision(task_index=index, teacher_input={"replay": False})
        decision = self.uniform_decision()
        decision.teacher_input = {"replay": False, "slot": None}
        return decision

    # ------------------------------------------------------------------ learn

    def _slot_of(self, exp: Experience) -> int | None:
        """The slot this report scores; a box level that is not (or no longer) in the buffer: None."""
        if self.discrete:
            return exp.task_index
        slot = exp.teacher_input.get("slot")
        if slot is not None and np.array_equal(self.levels[slot], exp.task_values):
            return slot
        return None

    def _insert(self, values: list[float], score: float) -> int | None:
        empty = np.flatnonzero(np.isnan(self.scores))
        if len(empty):
            slot = int(empty[0])
        else:
            slot = int(np.argmin(self.scores))
            if self.scores[slot] >= score:
                return None
        self.levels[slot] = values
        return slot

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        replayed = 0
        for exp in sorted(batch, key=lambda e: e.seq):
            self.reports += 1
            slot = self._slot_of(exp)
            replayed += bool(exp.teacher_input.get("replay")) and slot is not None
            if slot is None:
                slot = self._insert(exp.task_values, exp.reward)
                if slot is None:
                    continue
            self.scores[slot] = exp.reward
            self.last_report[slot] = self.reports
        self.updates += 1
        seen = ~np.isnan(self.scores)
        return {
            "episodes": len(batch),
            "replayed": replayed,
            "reward_mean": float(np.mean([exp.reward for exp in batch])),
            "seen": int(seen.sum()),
            "score_max": float(self.scores[seen].max()) if seen.any() else None,
        }

    # ------------------------------------------------------------------ inspection

    def describe(self) -> dict[str, Any]:
        seen = ~np.isnan(self.scores)
        state: dict[str, Any] = {"updates": self.updates, "reports": self.reports, "seen": int(seen.sum())}
        probs = self.replay_distribution() if seen.any() else np.zeros(len(self.scores))
        top = np.argsort(-probs, kind="stable")[: min(10, int(seen.sum()))]
        state["top"] = [
            {
                **({"index": int(i), "name": self.space.names[int(i)]} if self.discrete else {"values": self.levels[i].tolist()}),
                "score": float(self.scores[i]),
                "replay_probability": float(probs[i]),
                "staleness": float(self.reports - self.last_report[i]),
            }
            for i in top
        ]
        if self.discrete:
            state["replay_probabilities"] = probs.tolist()
            state["scores"] = [None if np.isnan(s) else float(s) for s in self.scores]
        return state

    def extra_state(self) -> dict[str, Any]:
        return {"scores": self.scores, "last_report": self.last_report, "levels": self.levels, "reports": self.reports}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.scores, self.last_report = state["scores"], state["last_report"]
        self.levels, self.reports = state["levels"], state["reports"]
