"""How informative is a reward about tasks? Plain arrays in, numbers out.

A teacher can only learn from a signal whose value depends on the task it proposed. Over training
most signals drift (gradient norms shrink, returns grow), and that drift says nothing about tasks,
so it is removed first:

1. Trend: a centered moving mean of the signal over report order (`window` reports, by default
   a tenth of them, at least 11); the residual is value - trend.
2. Task share: R^2 of the residuals explained by per-task means, i.e. the between-task sum of
   squares over the total sum of squares of the residuals (one-way ANOVA's eta squared).
   With k tasks and n reports, pure noise gives about (k - 1) / (n - 1); `adjusted_r2` removes
   that bias (1 - (1 - R^2)(n - 1)/(n - k), can be below 0).
3. p-value: the share of `permutations` random relabellings of the residuals' tasks whose R^2 is at
   least the observed one (with the usual +1 in numerator and denominator).

`trend_r2` says how much of the raw variance the trend took. Box tasks are grouped by `grid_cells`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_REPORTS = 10


def grid_cells(features: np.ndarray, bins: int) -> np.ndarray:
    """A label per row of task features in [-1, 1]^d: equal for rows in the same cell of a grid of
    `bins` cells per dimension (labels number the occupied cells, so any dimension fits)."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(features) == 0:
        return np.zeros(0, dtype=np.int64)
    indices = np.clip(((features + 1) / 2 * bins).astype(int), 0, bins - 1)
    return np.unique(indices, axis=0, return_inverse=True)[1].reshape(-1)


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving mean; the window shrinks at both ends."""
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)


def _between_share(residuals: np.ndarray, labels: np.ndarray, k: int, total: float) -> float:
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=residuals, minlength=k)
    mean = residuals.mean()
    between = float(np.sum(sums[counts > 0] ** 2 / counts[counts > 0]) - len(residuals) * mean**2)
    return between / total


def informativeness(
    tasks: Sequence[int], values: Sequence[float], window: int | None = None, permutations: int = 200, seed: int = 0
) -> dict[str, Any]:
    """`tasks` and `values` of the reports in report order (one task id per report)."""
    values = np.asarray(values, dtype=np.float64)
    _, labels = np.unique(np.asarray(tasks), return_inverse=True)
    n, k = len(values), int(labels.max()) + 1 if len(values) else 0
    result: dict[str, Any] = {"reports": n, "tasks": k, "r2": None, "adjusted_r2": None, "p_value": None,
                              "trend_r2": None, "window": None}
    if n < MIN_REPORTS or k < 2 or k >= n:
        return result
    window = window or max(11, n // 10)
    trend = moving_mean(values, window)
    residuals = values - trend
    # Variation below a billionth of the values' size is the rounding of the sums above (a constant signal left
    # residuals of 1e-17 whose task shares were noise): none.
    negligible = n * (1e-9 * float(np.abs(values).max())) ** 2
    total = float(np.sum((residuals - residuals.mean()) ** 2))
    raw_total = float(np.sum((values - values.mean()) ** 2))
    result["trend_r2"] = 1 - float(np.sum(residuals**2)) / raw_total if raw_total > negligible else 0.0
    if total <= negligible:  # nothing left once the trend is removed
        result.update(r2=0.0, adjusted_r2=0.0, p_value=1.0)
        return result
    r2 = _between_share(residuals, labels, k, total)
    rng = np.random.default_rng(seed)
    at_least = sum(_between_share(residuals, rng.permutation(labels), k, total) >= r2 for _ in range(permutations))
    result.update(
        r2=r2,
        adjusted_r2=1 - (1 - r2) * (n - 1) / (n - k),
        p_value=(1 + at_least) / (1 + permutations),
        window=window,
    )
    return result
