"""The two shapes a task space can have: a finite list of tasks, or a box of real vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from teacher_service.wire import Task


def check_within(values: Sequence[float], low: np.ndarray, high: np.ndarray) -> None:
    """ValueError unless `values` lie within [low, high] (up to rounding: a proposed point may be an ulp past a bound)."""
    point = np.asarray(values, dtype=np.float64)
    slack = 1e-9 * np.maximum(high - low, 1.0)
    if np.any(point < low - slack) or np.any(point > high + slack):
        raise ValueError(f"{point.tolist()} is outside the task space's range [{low.tolist()}, {high.tolist()}]")


class DiscreteSpace:
    """A finite list of tasks; the teacher picks an index."""

    kind = "discrete"

    def __init__(
        self,
        names: Sequence[str],
        values: np.ndarray,
        options: Sequence[dict[str, Any]],
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.names = list(names)
        self.values = np.asarray(values, dtype=np.float64).reshape(len(self.names), -1)
        self.options = list(options)
        self._extra_summary = summary or {}
        # Features for the teacher's observation: each coordinate scaled to [-1, 1].
        self._low, self._high = self.values.min(axis=0), self.values.max(axis=0)
        self._span = np.where(self._high > self._low, self._high - self._low, 1.0)
        self._features = self.features_of_values(self.values)
        self._tasks: dict[int, Task] = {}  # built once each: a proposal's pydantic Task cost ~5 us per proposal

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def feature_dim(self) -> int:
        return self.values.shape[1]

    def task(self, index: int) -> Task:
        task = self._tasks.get(index)
        if task is None:
            task = self._tasks[index] = Task(index=index, name=self.names[index], values=self.values[index].tolist())
        return task

    def reset_options(self, index: int) -> dict[str, Any]:
        return self.options[index]

    def features(self, index: int) -> np.ndarray:
        return self._features[index]

    def features_of_values(self, values: Sequence[float]) -> np.ndarray:
        """Features of a task given by its coordinates (a student's own `last_task`)."""
        return np.clip(2.0 * (np.asarray(values, dtype=np.float64) - self._low) / self._span - 1.0, -1.0, 1.0)

    def check_values(self, values: Sequence[float]) -> None:
        """ValueError unless a task's coordinates (a student's `last_task`) lie within those of the tasks."""
        check_within(values, self._low, self._high)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, **self._extra_summary}


class BoxSpace:
    """A box [low, high] of real vectors; the teacher picks a point."""

    kind = "box"

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        names: Sequence[str],
        to_reset_options: Callable[[np.ndarray], dict[str, Any]],
        from_reset_options: Callable[[dict[str, Any]], Sequence[float]],
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.names = list(names)
        self._to_reset_options = to_reset_options
        self._from_reset_options = from_reset_options
        self._extra_summary = summary or {}

    @property
    def dim(self) -> int:
        return len(self.low)

    @property
    def feature_dim(self) -> int:
        return self.dim

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Map a point of [-1, 1]^d to the box."""
        return self.low + (np.asarray(unit) + 1.0) * 0.5 * (self.high - self.low)

    def task(self, values: np.ndarray) -> Task:
        return Task(values=[float(v) for v in values])

    def reset_options(self, values: np.ndarray) -> dict[str, Any]:
        return self._to_reset_options(np.asarray(values, dtype=np.float64))

    def values_of_options(self, options: Any) -> np.ndarray:
        """The point whose reset options are `options`; ValueError unless they are exactly what
        `reset_options` gives for a point within the bounds."""
        try:
            values = self._from_reset_options(options)
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise TypeError
            point = np.asarray(values, dtype=np.float64)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            point = None
        if point is None or point.shape != (self.dim,) or self.reset_options(point) != options:
            example = self.reset_options(self.low)
            raise ValueError(f"not the reset options of a point of this box: they look like {example}")
        if np.any(point < self.low) or np.any(point > self.high):
            raise ValueError(f"{point.tolist()} is outside the box [{self.low.tolist()}, {self.high.tolist()}]")
        return point

    def features_of_values(self, values: Sequence[float]) -> np.ndarray:
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return np.clip(2.0 * (np.asarray(values, dtype=np.float64) - self.low) / span - 1.0, -1.0, 1.0)

    def check_values(self, values: Sequence[float]) -> None:
        """ValueError unless a point (a student's `last_task`) lies within the box."""
        check_within(values, self.low, self.high)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "names": self.names,
            **self._extra_summary,
        }

    def histograms(self, sample: np.ndarray | None, bins: int) -> dict[str, Any]:
        """Per-dimension histograms of a sample of tasks (rows of values), over the box's range."""
        if sample is None:
            return {"samples": 0, "histograms": []}
        histograms = []
        for i, dim in enumerate(self.names):
            edges = np.linspace(self.low[i], self.high[i], bins + 1)
            if not np.all(np.diff(edges) > 0):  # a range too narrow for that many floats apart: one bin
                edges = np.array([self.low[i], self.high[i]])
            counts, _ = np.histogram(sample[:, i], bins=edges)
            histograms.append({"name": dim, "edges": edges.tolist(), "counts": counts.tolist()})
        return {"samples": len(sample), "histograms": histograms}


TaskSpace = DiscreteSpace | BoxSpace
