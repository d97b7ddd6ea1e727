"""Per-seed metrics of the learning curves and their comparison between conditions.

Per run (one condition, one seed), from its evaluations (on the curriculum's target tasks when it has
them, else on the environment's default distribution):
- steps to threshold: the first evaluation step with success rate >= threshold. A run that never gets
  there is censored at the step budget: its mean counts the budget (so the condition's mean is a lower
  bound; its ratio to env-default's mean is one only if every env-default run reached the threshold, else
  it can be off either way), and the rank tests put it after every run that did reach it (ties among
  the censored ones).
- final success: the success rate of the last evaluation.
- AUC: the area under the success curve between the first and the last evaluation (trapezoids),
  divided by that span: the mean success rate over training, in [0, 1].
Final success and AUC are taken up to the last evaluation that every run of the grid has (the budget, in a
grid trained as one), so that runs continued past it (results/far-goal-fixed-1m) compare on the same span;
steps to threshold reads each run's whole curve.
Per condition: the mean over seeds with a 95% t confidence interval; against `env-default` and against
`random`, a two-sided Mann-Whitney U test of the per-seed values (ranks: no normality assumed, censored
runs handled as above), Holm-adjusted over the conditions compared with the same baseline on the same
metric, and Cliff's delta as the effect size.
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


def run_metrics(steps: np.ndarray, success: np.ndarray, threshold: float, budget: int,
                horizon: float = np.inf) -> RunMetrics:
    """Steps to threshold over the whole curve; final success and AUC up to ``horizon`` steps."""
    hits = np.flatnonzero(success >= threshold)
    within = steps <= max(horizon, steps[0])  # at least the first evaluation
    early_steps, early_success = steps[within], success[within]
    span = early_steps[-1] - early_steps[0]
    auc = float(np.trapezoid(early_success, early_steps) / span) if span > 0 else float(early_success[0])
    return RunMetrics(steps_to_threshold=float(steps[hits[0]]) if len(hits) else float(budget),
                      reached=bool(len(hits)), final_success=float(early_success[-1]), auc=auc)


@dataclass
class Estimate:
    mean: float
    low: float
    high: float


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


def estimate(values: np.ndarray) -> Estimate:
    return Estimate(float(np.mean(values)), *t_interval(values))


def cliffs_delta(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) - P(X < Y) over all pairs: -1 when every x is below every y, 0 for no difference."""
    x, y = x[:, None], y[None, :]  # comparisons, not differences: censored runs are inf
    return float(np.mean((x > y).astype(float) - (x < y)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), kept monotone, at most 1."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Comparison:
    p_value: float  # two-sided Mann-Whitney U, Holm-adjusted over the conditions compared with the same baseline
    p_raw: float
    cliffs_delta: float  # of this condition against the baseline


METRICS = ("steps_to_threshold", "final_success", "auc")
BASELINES = ("env-default", "random")


@dataclass
class ConditionSummary:
    condition: str
    seeds: int
    reached: int
    estimates: dict[str, Estimate]
    # {baseline: {metric: Comparison}}; a baseline absent from the grid, and a condition against itself, have none
    comparisons: dict[str, dict[str, Comparison]]
    ratio: float | None  # mean steps to threshold / env-default's


def common_horizon(curves: dict) -> float:
    """The last evaluation step that every run has reached."""
    return float(min(steps[-1] for seeds in curves.values() for steps, _, _ in seeds.values()))


def summarize(curves: dict, threshold: float, budget: int) -> list[ConditionSummary]:
    horizon = common_horizon(curves)
    per_run = {cond: [run_metrics(s, ok, threshold, budget, horizon) for s, ok, _ in seeds.values()]
               for cond, seeds in curves.items()}
    values = {cond: {m: np.array([getattr(r, m) for r in runs]) for m in METRICS} for cond, runs in per_run.items()}
    # For the rank tests a censored run is later than any run that reached the threshold, even at the budget.
    ranked = {cond: {**v, "steps_to_threshold": np.array([r.steps_to_threshold if r.reached else np.inf
                                                          for r in per_run[cond]])} for cond, v in values.items()}
    comparisons: dict[str, dict[str, dict[str, Comparison]]] = {cond: {} for cond in curves}
    for baseline in BASELINES:
        if baseline not in values:
            continue
        others = [cond for cond in curves if cond != baseline]
        for metric in METRICS:
            base = ranked[baseline][metric]
            raw = [float(stats.mannwhitneyu(ranked[c][metric], base, alternative="two-sided").pvalue) for c in others]
            for cond, p_raw, p in zip(others, raw, holm(raw)):
                delta = cliffs_delta(ranked[cond][metric], base)
                comparisons[cond].setdefault(baseline, {})[metric] = Comparison(p, p_raw, delta)
    base_steps = values.get("env-default", {}).get("steps_to_threshold")
    return [ConditionSummary(
        cond, len(runs), sum(r.reached for r in runs), {m: estimate(values[cond][m]) for m in METRICS},
        comparisons[cond],
        None if base_steps is None else float(values[cond]["steps_to_threshold"].mean() / base_steps.mean()))
        for cond, runs in per_run.items()]


def summary_records(summaries: list[ConditionSummary], threshold: float, budget: int) -> list[dict]:
    """summary.json: one record per condition; p values Holm-adjusted; None where there is no comparison."""
    records = []
    for s in summaries:
        record = {"condition": s.condition, "seeds": s.seeds, "threshold": threshold, "budget": budget,
                  "reached": s.reached, "ratio_vs_env_default": s.ratio}
        for metric in METRICS:
            e = s.estimates[metric]
            record |= {f"{metric}_mean": e.mean, f"{metric}_ci95": [e.low, e.high]}
            for baseline in BASELINES:
                c = s.comparisons.get(baseline, {}).get(metric)
                key = baseline.replace("-", "_")
                record[f"p_{metric}_vs_{key}"] = c and c.p_value
                record[f"cliffs_delta_{metric}_vs_{key}"] = c and c.cliffs_delta
        # The short names: steps to threshold is the primary metric.
        record |= {"p_vs_env_default": record["p_steps_to_threshold_vs_env_default"],
                   "p_vs_random": record["p_steps_to_threshold_vs_random"]}
        records.append(_finite(record))
    return records


def _finite(value):
    """NaN (an interval of one seed) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value


def _fmt(e: Estimate, digits: int) -> str:
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _vs(s: ConditionSummary, baseline: str, metric: str) -> str:
    c = s.comparisons.get(baseline, {}).get(metric)
    return "-" if c is None else f"{c.p_value:.3g} ({c.cliffs_delta:+.2f})"


def markdown_table(summaries: list[ConditionSummary], threshold: float, budget: int) -> str:
    pct = f"{threshold:.0%}"
    lines = [
        f"| condition | seeds | reached {pct} | steps to {pct} | x env-default | vs env-default | vs random "
        f"| AUC (mean success) | vs env-default | vs random | final success |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        e = s.estimates
        ratio = "-" if s.ratio is None else f"{s.ratio:.2f}"
        lines.append(
            f"| {s.condition} | {s.seeds} | {s.reached}/{s.seeds} | {_fmt(e['steps_to_threshold'], 0)} | {ratio} "
            f"| {_vs(s, 'env-default', 'steps_to_threshold')} | {_vs(s, 'random', 'steps_to_threshold')} "
            f"| {_fmt(e['auc'], 2)} | {_vs(s, 'env-default', 'auc')} | {_vs(s, 'random', 'auc')} "
            f"| {_fmt(e['final_success'], 2)} |")
    lines += [
        "",
        f"Mean over seeds [95% t interval]. vs X: two-sided Mann-Whitney U test of the per-seed values against "
        f"condition X, p Holm-adjusted over all conditions compared with X on that metric, and in brackets "
        f"Cliff's delta (P(this > X) - P(this < X); for steps, negative means faster). Runs that never reached "
        f"{pct} success count as the budget ({budget} steps): their true value is later, so the mean is a lower "
        f"bound, the ratio one only if every env-default run reached it (else it can be off either way), and "
        f"in the rank test they tie with each other above every run that reached it. "
        "AUC: mean evaluation success rate over training (trapezoids between the first evaluation and the last "
        "that every run has); final success: the success rate at that last common evaluation.",
    ]
    return "\n".join(lines) + "\n"


def thresholds_table(curves: dict, thresholds: list[float], budget: int) -> str:
    """Steps to each of several thresholds, in brief: a benchmark whose baseline rarely reaches the main
    threshold still compares conditions at lower ones (runs that reached, mean steps, Holm-adjusted p)."""
    head = "| condition | " + " | ".join(f"reached {t:.0%} | steps | vs env-default | vs random" for t in thresholds)
    lines = [head + " |", "|---|" + "---|---|---|---|" * len(thresholds)]
    by_threshold = [summarize(curves, t, budget) for t in thresholds]
    for row in zip(*by_threshold):
        cells = [f"{s.reached}/{s.seeds} | {s.estimates['steps_to_threshold'].mean:.0f} "
                 f"| {_vs(s, 'env-default', 'steps_to_threshold')} | {_vs(s, 'random', 'steps_to_threshold')}"
                 for s in row]
        lines.append(f"| {row[0].condition} | " + " | ".join(cells) + " |")
    lines += ["", f"As the main table: a run that never reached a threshold counts as the budget ({budget} steps) "
                  "and ranks after every run that did; p (Cliff's delta) of steps to that threshold."]
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
