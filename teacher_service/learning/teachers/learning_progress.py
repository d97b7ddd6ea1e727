"""`learning-progress`: a bandit on bidirectional learning progress (as in OMNI and Metta).

A task is worth practising while the student's success on it is changing, up or down (forgetting
counts too). Two moving averages of each task's success, a fast and a slow one, follow the
student; their gap |fast - slow| is the task's learning progress (LP): near 0 for a task whose
success is steady, solved or not, and large while it climbs or falls.

- Reward: the curriculum's `reward_signal` must be `success` or a rate in [0, 1] reported as
  `extra.<name>` (clipped to [0, 1]); the service refuses others.
- Averages: per report of task i, fast_i += `fast_rate` (s - fast_i) and slow_i += `slow_rate`
  (s - slow_i); both start at the task's first outcome.
- Propose: with probability `explore` a task uniformly; otherwise a task with probability
  proportional to its LP, where a task never reported counts as the largest LP seen (so every
  task is tried), and all tasks equally while no LP is above 0.
- Noise looks like progress: a task solved half the time at random keeps |fast - slow| near 0.1
  with the default rates, so tasks being learned must change faster than that to stand out (in the
  test, four learnable tasks took about half the proposals after 400 episodes, but four coin-flip
  tasks took most of the first 200).
- Discrete spaces only; learns from every report (batch_size 1, horizon 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams


class LearningProgressParams(TeacherParams):
    fast_rate: float = Field(default=0.1, gt=0, le=1, description="Step of the fast moving average.")
    slow_rate: float = Field(default=0.02, gt=0, le=1, description="Step of the slow moving average.")
    explore: float = Field(default=0.2, ge=0, le=1, description="Share of tasks proposed uniformly at random.")

    @model_validator(mode="after")
    def _fast_is_faster(self) -> "LearningProgressParams":
        if self.slow_rate >= self.fast_rate:
            raise ValueError(f"slow_rate ({self.slow_rate}) must be below fast_rate ({self.fast_rate})")
        return self


class LearningProgressTeacher(Teacher):
    name = "learning-progress"
    reward_signals = ("success", "extra.*")  # a 0/1 outcome or a rate in [0, 1]
    Params = LearningProgressParams

    def __init__(self, space, params: LearningProgressParams, seed: int) -> None:
        if not isinstance(space, DiscreteSpace):
            raise ValueError("learning-progress needs a discrete task space; for a box use learnability or alp-gmm")
        super().__init__(space, params, seed)
        self.fast = np.full(space.size, np.nan)  # NaN: never reported
        self.slow = np.full(space.size, np.nan)

    batch_size = 1  # learns from every report

    def progress(self) -> np.ndarray:
        return np.abs(self.fast - self.slow)

    def probabilities(self) -> np.ndarray:
        lp = self.progress()
        seen = ~np.isnan(lp)
        lp[~seen] = lp[seen].max() if seen.any() and lp[seen].max() > 0 else 1.0
        weights = lp / lp.sum() if lp.sum() > 0 else np.full(len(lp), 1 / len(lp))
        explore = self.params.explore
        return (1 - explore) * weights + explore / len(lp)

    def propose(self, context: Context) -> Decision:
        probs = torch.as_tensor(self.probabilities())
        return Decision(task_index=int(torch.multinomial(probs, 1, generator=self.generator)))

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        for exp in sorted(batch, key=lambda e: e.seq):
            i, success = exp.task_index, min(max(exp.reward, 0.0), 1.0)
            if np.isnan(self.fast[i]):
                self.fast[i] = self.slow[i] = success
            self.fast[i] += self.params.fast_rate * (success - self.fast[i])
            self.slow[i] += self.params.slow_rate * (success - self.slow[i])
        self.updates += 1
        lp = self.progress()
        return {
            "episodes": len(batch),
            "reward_mean": float(np.mean([exp.reward for exp in batch])),
            "progress_max": float(np.nanmax(lp)) if not np.isnan(lp).all() else None,
        }

    def describe(self) -> dict[str, Any]:
        probs = self.probabilities()
        best = int(probs.argmax())

        def plain(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "updates": self.updates,
            "probabilities": probs.tolist(),
            "progress": plain(self.progress()),
            "fast": plain(self.fast),
            "slow": plain(self.slow),
            "best_task": {"index": best, "name": self.space.names[best]},
        }

    def extra_state(self) -> dict[str, Any]:
        return {"fast": self.fast, "slow": self.slow}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.fast, self.slow = state["fast"], state["slow"]
