"""The share of a signal's variance explained by the task once the training trend is removed."""

from __future__ import annotations

import numpy as np
import pytest

from teacher_service.learning.informativeness import grid_cells, informativeness, moving_mean


def test_a_task_effect_under_a_strong_trend_is_found_with_its_share():
    rng = np.random.default_rng(0)
    n, k = 2000, 8
    tasks = rng.integers(k, size=n)
    effect = rng.standard_normal(k)
    effect = (effect - effect.mean()) / effect.std()  # variance 1 across tasks
    # A trend 10x larger than anything else (gradient norms shrinking over training), then task + noise.
    values = 30 * np.exp(-np.arange(n) / 500) + effect[tasks] + rng.standard_normal(n)
    result = informativeness(tasks, values)
    assert result["r2"] == pytest.approx(0.5, abs=0.06)  # task variance 1 of total 1 + 1
    assert result["p_value"] == pytest.approx(1 / 201) and result["trend_r2"] > 0.9


def test_a_signal_that_only_drifts_tells_nothing_about_tasks():
    rng = np.random.default_rng(1)
    n, k = 2000, 40
    tasks = rng.integers(k, size=n)
    values = 30 * np.exp(-np.arange(n) / 500) + rng.standard_normal(n)
    result = informativeness(tasks, values)
    # Without the detrending the 40 per-task means would carry the trend's sampling noise; with it,
    # R^2 is what noise gives, (k - 1) / (n - 1) = 0.0195, and the adjusted R^2 is about 0.
    assert result["r2"] == pytest.approx(39 / 1999, abs=0.01)
    assert abs(result["adjusted_r2"]) < 0.01 and result["p_value"] > 0.05


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.1])
def test_a_constant_signal_explains_nothing_not_its_rounding(value):
    """The moving mean's sums leave residuals of about 1e-17 of a constant: their task shares were noise (r2 0.0036,
    p 0.72 for 0.1 on three tasks), not the nothing that an exactly zero residual gives."""
    result = informativeness([k % 3 for k in range(200)], [value] * 200)
    assert (result["r2"], result["adjusted_r2"], result["p_value"], result["trend_r2"]) == (0.0, 0.0, 1.0, 0.0)
    # A real variation a millionth of the values' size is still measured.
    rng = np.random.default_rng(2)
    small = informativeness([k % 3 for k in range(200)], value + 1e-6 * value * rng.standard_normal(200))
    assert 0 < small["r2"] < 0.1 and small["p_value"] > 0.05


def test_too_few_reports_or_one_task_give_no_figures():
    assert informativeness([0, 1] * 4, np.arange(8.0))["r2"] is None
    assert informativeness([3] * 50, np.arange(50.0))["r2"] is None
    assert informativeness([], [])["reports"] == 0


def test_grid_cells_and_moving_mean():
    features = np.array([[-1.0, -1.0], [1.0, 1.0], [0.1, -0.9], [-0.1, 0.9], [0.9, 0.2], [-0.5, -0.5]])
    cells = grid_cells(features, 2).tolist()
    assert len(set(cells[:4])) == 4 and cells[4] == cells[1] and cells[5] == cells[0]
    assert len(set(grid_cells(np.random.default_rng(0).uniform(-1, 1, (500, 40)), 10))) == 500  # 10^40 cells
    assert moving_mean(np.array([1.0, 2.0, 3.0, 4.0]), 3).tolist() == [1.5, 2.0, 3.0, 3.5]
