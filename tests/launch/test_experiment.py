"""acl-experiment: a miniature grid end to end, and the summary statistics against hand-computed values."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from teacher_service.launch.experiment import runner, stats


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(stats.CSV_COLUMNS)
        writer.writerows(rows)


def test_run_metrics_by_hand():
    steps = np.array([100, 200, 300, 400])
    success = np.array([0.0, 0.5, 0.9, 1.0])
    m = stats.run_metrics(steps, success, threshold=0.8, budget=400)
    assert m.steps_to_threshold == 300 and m.reached
    assert m.final_success == 1.0
    # Trapezoids: (0+0.5)/2*100 + (0.5+0.9)/2*100 + (0.9+1)/2*100 = 25 + 70 + 95 = 190, over a span of 300.
    assert m.auc == pytest.approx(190 / 300)
    never = stats.run_metrics(steps, np.array([0.1, 0.2, 0.3, 0.7]), threshold=0.8, budget=400)
    assert never.steps_to_threshold == 400 and not never.reached


def test_summary_by_hand(tmp_path):
    # Baseline reaches 80% at 300 or 400 (or never: counts as the budget, 400); the teacher at 100 or 200.
    rows = []
    base = {0: [0.0, 0.2, 0.8, 0.9], 1: [0.0, 0.1, 0.5, 0.8], 2: [0.0, 0.1, 0.2, 0.3]}
    fast = {0: [0.8, 0.9, 1.0, 1.0], 1: [0.5, 0.8, 0.9, 1.0], 2: [0.9, 1.0, 1.0, 1.0]}
    for condition, runs in (("env-default", base), ("teacher", fast)):
        for seed, success in runs.items():
            rows += [[condition, seed, step, s, 10 * s] for step, s in zip((100, 200, 300, 400), success)]
    write_csv(tmp_path / "e.csv", rows)
    curves = stats.read_curves(tmp_path / "e.csv")
    summary = {s.condition: s for s in stats.summarize(curves, threshold=0.8, budget=400)}

    b, t = summary["env-default"], summary["teacher"]
    assert (b.reached, t.reached) == (2, 3)
    # Steps to 80%: baseline 300, 400, 400 (censored) -> mean 366.67; teacher 100, 200, 100 -> mean 133.33.
    assert b.estimates["steps_to_threshold"].mean == pytest.approx(1100 / 3)
    assert t.estimates["steps_to_threshold"].mean == pytest.approx(400 / 3)
    assert t.ratio == pytest.approx(400 / 1100)
    # 95% t interval of [100, 200, 100]: mean 133.33, sd 57.735, sem 33.333, t(0.975, 2) = 4.3027.
    est = t.estimates["steps_to_threshold"]
    assert (est.low, est.high) == pytest.approx((133.333 - 143.42, 133.333 + 143.42), abs=0.01)
    # Final success: teacher [1, 1, 1] has no spread; its interval is the point itself.
    assert (t.estimates["final_success"].mean, t.estimates["final_success"].low) == (1.0, 1.0)
    # Mann-Whitney, fully separated groups of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1.
    assert t.estimates["auc"].p_value == pytest.approx(0.1)
    assert b.estimates["auc"].p_value is None

    table = stats.markdown_table(list(summary.values()), 0.8, 400)
    assert "| teacher | 3 | 3/3 | 133 [-10, 277] | 0.36 |" in table


def test_miniature_grid_end_to_end(tmp_path):
    out = tmp_path / "exp"
    argv = ["--env", "PointMaze_UMazeDense-v3", "--conditions", "env-default", "gradnorm-mean", "--seeds", "0", "1",
            "--steps", "300", "--eval-every", "150", "--eval-episodes", "1", "--learning-starts", "100",
            "--random-steps", "100", "--params", 'gradnorm-mean={"batch_size": 2, "horizon": 1}',
            "--parallel", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        runner.main(argv)
    assert exit_info.value.code == 0

    with open(out / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["condition"], r["seed"], r["step"]) for r in rows} == {
        (c, s, step) for c in ("env-default", "gradnorm-mean") for s in ("0", "1") for step in ("150", "300")}
    with open(out / "proposals.csv") as f:
        proposals = list(csv.DictReader(f))
    assert proposals and {r["condition"] for r in proposals} == {"gradnorm-mean"}  # env-default proposes no task
    assert "| gradnorm-mean | 2 | " in (out / "summary.md").read_text()
    with open(out / "informativeness.csv") as f:
        figures = list(csv.DictReader(f))
    # One row per run and signal; runs this short have too few episodes for figures (README: at least 10).
    assert {(r["condition"], r["seed"], r["signal"]) for r in figures} == {
        (c, s, signal) for c in ("env-default", "gradnorm-mean") for s in ("0", "1") for signal in runner.INFORMATIVENESS_SIGNALS}
    assert "## How informative is each signal about the task?" in (out / "summary.md").read_text()
    for png in ("learning_curves.png", "teacher_proposals.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # A rerun skips the finished runs and gives the same evaluations.
    before = (out / "evaluations.csv").read_text()
    with pytest.raises(SystemExit):
        runner.main(argv)
    assert (out / "evaluations.csv").read_text() == before

    # A fresh run of the same seed from scratch gives the same numbers.
    again = tmp_path / "again"
    with pytest.raises(SystemExit):
        runner.main([*argv[:3], "env-default", "--seeds", "1", *argv[8:-1], str(again)])
    first = [line for line in before.splitlines() if line.startswith("env-default,1,")]
    assert first and (again / "evaluations.csv").read_text().splitlines()[1:] == first


def test_teacher_proposals_reproducible(tmp_path):
    def proposals(out):
        argv = ["--env", "PointMaze_UMazeDense-v3", "--conditions", "gradnorm-mean", "--seeds", "0", "--steps", "600",
                "--eval-every", "600", "--eval-episodes", "1", "--learning-starts", "100", "--random-steps", "100",
                "--out", str(out)]
        with pytest.raises(SystemExit):
            runner.main(argv)
        return (out / "proposals.csv").read_text()

    assert proposals(tmp_path / "a") == proposals(tmp_path / "b")


def test_informativeness_table_averages_over_runs(tmp_path):
    path = tmp_path / "informativeness.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(stats.INFORMATIVENESS_COLUMNS)
        writer.writerows([["a", 0, "success", 50, 4, 0.3, 0.25, 0.01], ["a", 1, "success", 50, 4, 0.1, 0.05, 0.2],
                          ["env-default", 0, "success", 0, 0, "", "", ""]])
    assert "| success | 2 | 0.200 | 0.150 | 1/2 |" in stats.informativeness_table(path)
