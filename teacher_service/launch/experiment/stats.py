"""Per-seed metrics of the learning curves and their comparison between conditions.

Per run (one condition, one seed), from its evaluations on the environment's default distribution:
- steps to threshold: the first evaluation step with success rate >= threshold; a run that never gets
  there counts as the step budget (so its true value is *at least* that: the mean is a lower bound).
- final success: the success rate of the last evaluation.
- AUC: the area under the success curve between the first and the last evaluation (trapezoids),
  divided by that span: the mean success rate over training, in [0, 1].
Per condition: the mean over seeds with a 95% t confidence interval, and a two-sided Mann-Whitney U
test of the per-seed values against the baseline condition (ranks, so censored runs tied at the
budget are handled without assuming normality).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

CSV_COLUMNS = ("condition", "seed", "step", "success_rate", "mean_return")


def read_curves(path: Path) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """{condition: {seed: (steps, success_rates, mean_returns)}} sorted by step, conditions in file order."""
    rows: dict[str, dict[int, list[tuple[int, float, float]]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            points = rows.setdefault(row["condition"], {}).setdefault(int(row["seed"]), [])
            points.append((int(row["step"]), float(row["success_rate"]), float(row["mean_return"])))
    return {cond: {seed: tuple(np.array(col) for col in zip(*sorted(points))) for seed, points in seeds.items()}
            for cond, seeds in rows.items()}


@dataclass
class RunMetrics:
    steps_to_threshold: float
    reached: bool
    final_success: float
    auc: float


def run_metrics(steps: np.ndarray, success: np.ndarray, threshold: float, budget: int) -> RunMetrics:
    hits = np.flatnonzero(success >= threshold)
    span = steps[-1] - steps[0]
    auc = float(np.trapezoid(success, steps) / span) if span > 0 else float(success[0])
    return RunMetrics(steps_to_threshold=float(steps[hits[0]]) if len(hits) else float(budget),
                      reached=bool(len(hits)), final_success=float(success[-1]), auc=auc)


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    p_value: float | None  # against the baseline; None for the baseline itself


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean +- t * standard error; (mean, mean) when the values do not vary, NaN for one value."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return float("nan"), float("nan")
    sem = stats.sem(values)
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def compare(values: np.ndarray, baseline: np.ndarray | None) -> Estimate:
    low, high = t_interval(values)
    p = None
    if baseline is not None:
        p = float(stats.mannwhitneyu(values, baseline, alternative="two-sided").pvalue)
    return Estimate(float(np.mean(values)), low, high, p)


METRICS = ("steps_to_threshold", "final_success", "auc")


@dataclass
class ConditionSummary:
    condition: str
    seeds: int
    reached: int
    estimates: dict[str, Estimate]
    ratio: float | None  # mean steps to threshold / the baseline's


def summarize(curves: dict, threshold: float, budget: int, baseline: str = "env-default") -> list[ConditionSummary]:
    per_run = {cond: [run_metrics(s, ok, threshold, budget) for s, ok, _ in seeds.values()]
               for cond, seeds in curves.items()}
    base = per_run.get(baseline)
    summaries = []
    for cond, runs in per_run.items():
        estimates = {}
        for metric in METRICS:
            values = np.array([getattr(r, metric) for r in runs])
            reference = None if cond == baseline or base is None else np.array([getattr(r, metric) for r in base])
            estimates[metric] = compare(values, reference)
        ratio = None
        if base is not None:
            ratio = estimates["steps_to_threshold"].mean / np.mean([r.steps_to_threshold for r in base])
        summaries.append(ConditionSummary(cond, len(runs), sum(r.reached for r in runs), estimates, ratio))
    return summaries


def _fmt(e: Estimate, digits: int) -> str:
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _p(e: Estimate) -> str:
    return "-" if e.p_value is None else f"{e.p_value:.3f}"


def markdown_table(summaries: list[ConditionSummary], threshold: float, budget: int,
                   baseline: str = "env-default") -> str:
    pct = f"{threshold:.0%}"
    lines = [
        f"| condition | seeds | reached {pct} | steps to {pct} | x {baseline} | p | final success | p "
        f"| AUC (mean success) | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        e = s.estimates
        ratio = "-" if s.ratio is None else f"{s.ratio:.2f}"
        lines.append(
            f"| {s.condition} | {s.seeds} | {s.reached}/{s.seeds} | {_fmt(e['steps_to_threshold'], 0)} | {ratio} "
            f"| {_p(e['steps_to_threshold'])} | {_fmt(e['final_success'], 2)} | {_p(e['final_success'])} "
            f"| {_fmt(e['auc'], 2)} | {_p(e['auc'])} |")
    lines += [
        "",
        f"Mean over seeds [95% t interval]; p: two-sided Mann-Whitney U test of the per-seed values against "
        f"`{baseline}`. Runs that never reached {pct} success count as the budget ({budget} steps), so their "
        f"condition's steps-to-{pct} is a lower bound. AUC: mean evaluation success rate over training "
        "(trapezoids between the first and the last evaluation).",
    ]
    return "\n".join(lines) + "\n"


INFORMATIVENESS_COLUMNS = ("condition", "seed", "signal", "episodes", "tasks", "r2", "adjusted_r2", "p_value")


def informativeness_table(path: Path) -> str:
    """Per signal over the runs that have figures (GET /curricula/{name}/informativeness of each run):
    mean R^2 and adjusted R^2 of per-task means on detrended values, and how many runs had p < 0.05."""
    by_signal: dict[str, list[dict]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["r2"]:
                by_signal.setdefault(row["signal"], []).append(row)
    lines = ["| signal | runs | mean R^2 | mean adjusted R^2 | runs with p < 0.05 |", "|---|---|---|---|---|"]
    for signal, rows in by_signal.items():
        r2 = np.mean([float(r["r2"]) for r in rows])
        adjusted = np.mean([float(r["adjusted_r2"]) for r in rows])
        significant = sum(float(r["p_value"]) < 0.05 for r in rows)
        lines.append(f"| {signal} | {len(rows)} | {r2:.3f} | {adjusted:.3f} | {significant}/{len(rows)} |")
    lines += [
        "",
        "Share of each signal's variance explained by the proposed task once its trend over training is removed "
        "(README \"How informative is a reward?\"); runs without tasks (env-default) or with too few reports have none.",
    ]
    return "\n".join(lines) + "\n"
