"""`learnability`: Sampling For Learnability (Rutherford et al., 2024).

A task is worth practising when the student succeeds on it about half the time: the learnability
p(1 - p) of its success rate p is largest at p = 1/2 and 0 for tasks always solved or never.

- Reward: the curriculum's `reward_signal` must be `success` (a report's 0/1 outcome) or a rate in
  [0, 1] reported as `extra.<name>` (values are clipped to [0, 1]); the service refuses others.
- Tasks: a discrete space's tasks; a box is cut into a grid of `grid_bins` cells per dimension,
  a cell standing for its tasks, and a proposal is a uniform point inside the chosen cell.
- Estimate, per task: decayed success and failure counts. Each report of the task multiplies both
  by `decay` before adding the outcome, so p follows a learning student (about 1 / (1 - decay)
  recent reports count). p = (successes + prior / 2) / (successes + failures + prior): an untried
  task has p = 1/2 and the largest score, so each task is tried before it is judged.
- Propose: with probability `explore` a task uniformly at random; otherwise one of the `top_k`
  highest-scored tasks, uniformly (ties broken at random).
- Learns from every report (batch_size 1, horizon 1); every student's reports count alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from teacher_service.learning.task_spaces import DiscreteSpace
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams

MAX_CELLS = 100_000


class LearnabilityParams(TeacherParams):
    top_k: int = Field(default=10, ge=1, le=MAX_CELLS, description="How many top-scored tasks share the proposals.")
    explore: float = Field(default=0.2, ge=0, le=1, description="Share of tasks proposed uniformly at random.")
    decay: float = Field(default=0.95, gt=0, le=1, description="Weight of a task's past counts at each of its reports.")
    prior: float = Field(default=1.0, gt=0, le=100, description="Pseudo-reports at p = 1/2 for every task.")
    grid_bins: int = Field(default=4, ge=1, le=100, description="Box spaces: cells per dimension.")


class LearnabilityTeacher(Teacher):
    name = "learnability"
    reward_signals = ("success", "extra.*")  # a 0/1 outcome or a rate in [0, 1]
    Params = LearnabilityParams

    def __init__(self, space, params: LearnabilityParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self.discrete = isinstance(space, DiscreteSpace)
        if self.discrete:
            self.size = space.size
        else:
            if params.grid_bins**space.dim > MAX_CELLS:
                raise ValueError(
                    f"grid_bins {params.grid_bins} over {space.dim} dimensions makes more than {MAX_CELLS} cells; "
                    "use fewer grid_bins"
                )
            self.size = params.grid_bins**space.dim
        self.successes = np.zeros(self.size)
        self.failures = np.zeros(self.size)
        self.reports = 0

    batch_size = 1  # learns from every report

    def success_rates(self) -> np.ndarray:
        prior = self.params.prior
        return (self.successes + prior / 2) / (self.successes + self.failures + prior)

    def scores(self) -> np.ndarray:
        p = self.success_rates()
        return p * (1 - p)

    def top_tasks(self) -> np.ndarray:
        """The `top_k` highest-scored tasks, ties in a random order from the teacher's generator."""
        order = torch.randperm(self.size, generator=self.generator).numpy()
        ranked = order[np.argsort(-self.scores()[order], kind="stable")]
        return ranked[: min(self.params.top_k, self.size)]

    def propose(self, context: Context) -> Decision:
        if float(torch.rand(1, generator=self.generator)) < self.params.explore:
            cell = int(torch.randint(self.size, (1,), generator=self.generator))
        else:
            top = self.top_tasks()
            cell = int(top[int(torch.randint(len(top), (1,), generator=self.generator))])
        if self.discrete:
            return Decision(task_index=cell)
        return Decision(task_values=self._point_in(cell).tolist())

    # ------------------------------------------------------------------ box grid

    def _point_in(self, cell: int) -> np.ndarray:
        bins = self.params.grid_bins
        corner = np.array(np.unravel_index(cell, (bins,) * self.space.dim), dtype=np.float64)
        offset = torch.rand(self.space.dim, generator=self.generator, dtype=torch.float64).numpy()
        return self.space.from_unit(2 * (corner + offset) / bins - 1)

    def _cell_of(self, values: list[float]) -> int:
        bins = self.params.grid_bins
        unit = (self.space.features_of_values(values) + 1) / 2  # in [0, 1]
        indices = np.minimum((unit * bins).astype(int), bins - 1)
        return int(np.ravel_multi_index(tuple(indices), (bins,) * self.space.dim))

    # ------------------------------------------------------------------ learn

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        decay = self.params.decay
        for exp in sorted(batch, key=lambda e: e.seq):
            cell = exp.task_index if self.discrete else self._cell_of(exp.task_values)
            success = min(max(exp.reward, 0.0), 1.0)
            self.successes[cell] = decay * self.successes[cell] + success
            self.failures[cell] = decay * self.failures[cell] + 1 - success
        self.reports += len(batch)
        self.updates += 1
        scores = self.scores()
        return {
            "episodes": len(batch),
            "reward_mean": float(np.mean([exp.reward for exp in batch])),
            "score_max": float(scores.max()),
            "tried": int(np.count_nonzero(self.successes + self.failures)),
        }

    # ------------------------------------------------------------------ inspection

    def _task_name(self, cell: int) -> dict[str, Any]:
        if self.discrete:
            return {"index": cell, "name": self.space.names[cell]}
        bins = self.params.grid_bins
        corner = np.array(np.unravel_index(cell, (bins,) * self.space.dim), dtype=np.float64)
        low = self.space.from_unit(2 * corner / bins - 1)
        high = self.space.from_unit(2 * (corner + 1) / bins - 1)
        return {"cell": cell, "low": low.tolist(), "high": high.tolist()}

    def describe(self) -> dict[str, Any]:
        p, scores = self.success_rates(), self.scores()
        ranked = np.argsort(-scores, kind="stable")[: min(self.params.top_k, self.size)]
        state: dict[str, Any] = {
            "updates": self.updates,
            "reports": self.reports,
            "tasks": self.size,
            "tried": int(np.count_nonzero(self.successes + self.failures)),
            "top": [
                {**self._task_name(int(i)), "success_rate": float(p[i]), "score": float(scores[i]),
                 "decayed_reports": float(self.successes[i] + self.failures[i])}
                for i in ranked
            ],
        }
        if self.discrete:
            state["scores"] = scores.tolist()
            state["success_rates"] = p.tolist()
        return state

    def extra_state(self) -> dict[str, Any]:
        return {"successes": self.successes, "failures": self.failures, "reports": self.reports}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.successes, self.failures, self.reports = state["successes"], state["failures"], state["reports"]
