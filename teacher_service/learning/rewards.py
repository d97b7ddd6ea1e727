"""Rewards derived from a report and the same curriculum's earlier reports, besides the raw reported numbers.

- `return_progress`: |episode_return of this report - episode_return of the same student's last
  report of the same task|. Same task: the same index in a discrete space; in a box, the nearest
  task (in coordinates scaled to [-1, 1], the most recent among equally near ones) among the
  student's last `PROGRESS_WINDOW` reports in the curriculum. Only the same student's: two students
  of different skill taking turns on a task would otherwise look like progress while neither learns.
  None (no reward) for the student's first report of a task or a report without a return.
- `<gradient signal>_normalized` for each gradient norm (`grad_norm_mean_normalized`, ...): the value
  divided by the mean of that signal over this report and those of the curriculum's previous
  `SCALE_WINDOW - 1` reports that carry it, so that rewards stay comparable while gradient
  magnitudes drift during training. 1.0 for the first report that carries it.

Plain maths on plain lists: the service reads the earlier reports (in the report's transaction,
under the curriculum's lock, so the values are the same after a restart and across replicas).
"Last" means by report time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from teacher_service.learning.task_spaces import DiscreteSpace, TaskSpace

GRADIENT_SIGNALS = (
    "grad_norm_mean", "grad_norm_episode", "grad_norm_local",
    "critic_grad_norm_mean", "critic_grad_norm_episode", "critic_grad_norm_local",
)
DERIVED_SIGNALS = ("return_progress", *(f"{name}_normalized" for name in GRADIENT_SIGNALS))
PROGRESS_WINDOW = 1_000
SCALE_WINDOW = 100


def return_progress(
    space: TaskSpace,
    task_values: Sequence[float],
    episode_return: float,
    previous: Sequence[tuple[Sequence[float], float]],
) -> float | None:
    """`previous`: (task_values, episode_return) of the same student's earlier reports, the most
    recent first; in a discrete space only those of the same task."""
    if not previous:
        return None
    nearest = 0  # a discrete task's own last report
    if not isinstance(space, DiscreteSpace):
        features = space.features_of_values(np.array([values for values, _ in previous]))
        distances = np.linalg.norm(features - space.features_of_values(task_values), axis=1)
        nearest = int(np.argmin(distances))  # the first, i.e. most recent, among ties
    return abs(episode_return - previous[nearest][1])


def normalized(value: float, earlier: Sequence[float]) -> float:
    """`value` over the mean of itself and the `earlier` values of the same signal."""
    scale = float(np.mean([value, *earlier]))
    return value / scale if scale > 0 else 0.0  # a zero mean of norms means this one is zero too
