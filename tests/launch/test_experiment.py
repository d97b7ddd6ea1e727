"""acl-experiment: a miniature grid end to end, and the summary statistics against hand-computed values."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rich.console import Console

from teacher_service.launch.experiment import plots, runner, stats
from tests.servers import processes_mentioning, wait_until
from tests.student_helpers import REPO


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
    # Baseline reaches 80% at 300 or 400 (or never: censored at the budget, 400); the teacher at 100 or 200.
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
    # Mann-Whitney, fully separated groups of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1; one comparison,
    # so Holm leaves it; every teacher AUC above every baseline AUC: Cliff's delta +1.
    auc = t.comparisons["env-default"]["auc"]
    assert (auc.p_value, auc.p_raw, auc.cliffs_delta) == (pytest.approx(0.1), pytest.approx(0.1), 1.0)
    assert b.comparisons == {} and "random" not in t.comparisons  # no random condition in this grid

    # Steps: ties among the teacher's seeds, so scipy uses the normal approximation: p = 0.0765.
    table = stats.markdown_table(list(summary.values()), 0.8, 400)
    assert "| teacher | 3 | 3/3 | 133 [-10, 277] | 0.36 | 0.0765 (-1.00) | - |" in table


def test_censored_runs_rank_after_a_run_that_reached_at_the_budget():
    steps = np.array([100, 200])
    reached_last = stats.run_metrics(steps, np.array([0.0, 0.9]), threshold=0.8, budget=200)
    never = stats.run_metrics(steps, np.array([0.0, 0.1]), threshold=0.8, budget=200)
    assert reached_last.steps_to_threshold == never.steps_to_threshold == 200  # the same value in the means
    rows = [["env-default", seed, step, s, 0] for seed in range(4) for step, s in zip((100, 200), (0.0, 0.1))]
    rows += [["late", seed, step, s, 0] for seed in range(4) for step, s in zip((100, 200), (0.0, 0.9))]
    curves = {cond: {seed: (np.array([100, 200]), np.array([0.0, 0.1 if cond == "env-default" else 0.9]),
                            np.zeros(2)) for seed in range(4)} for cond in ("env-default", "late")}
    late = {s.condition: s for s in stats.summarize(curves, 0.8, 200)}["late"]
    assert late.ratio == 1.0
    assert late.comparisons["env-default"]["steps_to_threshold"].cliffs_delta == -1.0  # but earlier in the ranks


def test_a_run_continued_past_the_budget_keeps_its_crossing_but_compares_auc_and_final_on_the_common_span():
    short = (np.array([100, 200]), np.array([0.0, 0.2]), np.zeros(2))
    continued = (np.array([100, 200, 300, 400]), np.array([0.0, 0.2, 0.6, 1.0]), np.zeros(4))
    curves = {"env-default": {0: short, 1: continued}}
    by_hand = stats.run_metrics(*continued[:2], threshold=0.5, budget=400, horizon=200)
    assert (by_hand.steps_to_threshold, by_hand.reached) == (300, True)  # found after the horizon
    assert (by_hand.final_success, by_hand.auc) == (0.2, pytest.approx(0.1))  # as if it had stopped at 200
    s = stats.summarize(curves, 0.5, 400)[0]
    assert s.reached == 1 and s.estimates["steps_to_threshold"].mean == (400 + 300) / 2  # the short one censored
    assert s.estimates["final_success"].mean == pytest.approx(0.2)
    assert s.estimates["auc"].mean == pytest.approx(0.1)
    # A run that starts after another has ended still has its first evaluation.
    late = stats.run_metrics(np.array([300, 400]), np.array([0.4, 0.6]), threshold=0.5, budget=400, horizon=200)
    assert (late.final_success, late.auc, late.steps_to_threshold) == (0.4, 0.4, 400)


def test_mann_whitney_holm_and_cliffs_delta_against_scipy():
    rng = np.random.default_rng(3)
    steps = np.arange(1, 11) * 1000
    shifts = {"env-default": 0.0, "random": 0.1, "good": 0.5, "same": 0.0}
    curves = {cond: {seed: (steps, np.clip(steps / 10_000 + shift + rng.normal(0, 0.15, 10), 0, 1), np.zeros(10))
                     for seed in range(10)} for cond, shift in shifts.items()}
    summary = {s.condition: s for s in stats.summarize(curves, 0.6, 10_000)}
    auc = {c: np.array([stats.run_metrics(s, ok, 0.6, 10_000).auc for s, ok, _ in curves[c].values()]) for c in curves}
    for baseline in ("env-default", "random"):
        others = [c for c in shifts if c != baseline]
        raw = [stats_mw(auc[c], auc[baseline]) for c in others]
        # Holm by hand: sort, multiply the k-th smallest by (m - k + 1), keep monotone, cap at 1.
        order = np.argsort(raw)
        expected, running = {}, 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
            expected[others[i]] = running
        for c in others:
            got = summary[c].comparisons[baseline]["auc"]
            assert got.p_raw == pytest.approx(raw[others.index(c)])
            assert got.p_value == pytest.approx(expected[c])
            pairs = [np.sign(x - y) for x in auc[c] for y in auc[baseline]]
            assert got.cliffs_delta == pytest.approx(np.mean(pairs))
    assert summary["good"].comparisons["env-default"]["auc"].p_value < 0.01
    assert summary["same"].comparisons["env-default"]["auc"].p_value > 0.05


def stats_mw(x, y):
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)


def test_holm_known_values():
    # m = 4: 0.01*4 = 0.04; 0.03*3 = 0.09; 0.04*2 = 0.08 -> 0.09 (monotone); 0.5*1 = 0.5.
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_analyze_writes_summary_json_and_heatmaps(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps(
        {"env": "PointMaze_Medium-v3", "steps": 400, "eval_every": 100, "eval_episodes": 4, "preset": "small",
         "env_kwargs": {"continuing_task": False}, "target_farthest": 4}))
    rows = [[c, seed, step, min(1.0, step / (200 if c == "learnability" else 400) * (0.9 + 0.1 * seed)), 0]
            for c in ("env-default", "random", "learnability") for seed in range(3) for step in (100, 200, 300, 400)]
    write_csv(tmp_path / "evaluations.csv", rows)
    with open(tmp_path / "proposals.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(plots.PROPOSAL_COLUMNS)
        for c in ("random", "learnability"):
            for seed in range(3):
                writer.writerows([c, seed, step, json.dumps([1, 1, 6, 6])] for step in (50, 150, 350))
    runner.analyze(tmp_path, 0.5, Console(quiet=True))

    records = json.loads((tmp_path / "summary.json").read_text())
    assert [r["condition"] for r in records] == ["env-default", "random", "learnability"]
    for r in records:
        assert {"condition", "seeds", "steps_to_threshold_mean", "ratio_vs_env_default", "p_vs_env_default",
                "p_vs_random", "auc_mean"} <= set(r)
        assert r["seeds"] == 3
    by = {r["condition"]: r for r in records}
    # learnability reaches 50% at step 100 or 200, the others at 200; ratio and p follow from that.
    assert by["env-default"]["p_vs_env_default"] is None and by["random"]["p_vs_random"] is None
    assert by["learnability"]["ratio_vs_env_default"] == pytest.approx(
        by["learnability"]["steps_to_threshold_mean"] / by["env-default"]["steps_to_threshold_mean"])
    assert by["learnability"]["ratio_vs_env_default"] < 1
    assert 0 <= by["learnability"]["p_vs_env_default"] <= 1
    summary = (tmp_path / "summary.md").read_text()
    assert "the 4 start-goal pairs farthest apart" in summary and '{"continuing_task": false}' in summary
    # Below the main threshold, steps to 10%, 20% and 30% (reached, mean steps) by hand: at 30% env-default's
    # seeds get there at step 200 (0.225, 0.25, 0.275 at step 100), learnability's at 100.
    lower = summary.split("## Lower thresholds")[1]
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lower.splitlines()
             if line.startswith("| ") and "---" not in line and "condition" not in line}
    assert [cells["env-default"][i] for i in (0, 1, 4, 5, 8, 9)] == ["3/3", "100", "3/3", "100", "3/3", "200"]
    assert [cells["learnability"][i] for i in (0, 1, 4, 5, 8, 9)] == ["3/3", "100", "3/3", "100", "3/3", "100"]
    for png in ("learning_curves.png", "teacher_proposals.png", "proposal_heatmaps.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_benchmark_sets_defaults_and_flags_override(tmp_path, capsys):
    args = runner.parse_args(["--benchmark", "far-goal", "--steps", "1000", "--out", str(tmp_path)])
    assert (args.env, args.target_farthest, args.steps) == ("PointMaze_Medium-v3", 20, 1000)
    assert args.env_kwargs == {"max_episode_steps": 600} and len(args.seeds) >= 10
    assert {"env-default", "random", "gradnorm-mean", "reinforce-mean", "reinforce-local", "learnability", "plr",
            "alp-gmm"} <= set(args.conditions)
    with pytest.raises(SystemExit):
        runner.parse_args(["--env-kwargs", "[1]", "--out", str(tmp_path)])

    fixed = runner.parse_args(["--benchmark", "far-goal-fixed", "--out", str(tmp_path)])
    assert (fixed.env, fixed.goal_cell, fixed.target_farthest) == ("PointMaze_Medium-v3", [6, 5], 7)
    # The env's own goal is the teachers' goal: the maze_map given to every student has 'g' there and only there.
    layout = fixed.env_kwargs["maze_map"]
    assert fixed.env_kwargs["max_episode_steps"] == 600 and layout[6][5] == "g"
    assert sum(row.count("g") for row in layout) == 1
    umaze = ["--env", "PointMaze_UMaze-v3"]
    for bad, reason in (([*umaze, "--goal-cell", "0", "0"], "goal_cell [0, 0] is not a free cell"),
                        (["--env", "AdroitHandRelocate-v1", "--goal-cell", "1", "1"], "registers no maze_map"),
                        ([*umaze, "--goal-cell", "1", "1", "--env-kwargs", '{"maze_map": [[1]]}'],
                         "leave maze_map out of --env-kwargs")):
        with pytest.raises(SystemExit):
            runner.parse_args([*bad, "--out", str(tmp_path)])
        assert reason in capsys.readouterr().err


def test_a_curriculum_the_service_refuses_stops_the_grid_with_its_reason(tmp_path):
    # UMaze has 6 starts for the goal (3, 1): asking for 10 is refused by the service (422), said in one line.
    argv = ["--env", "PointMaze_UMaze-v3", "--goal-cell", "3", "1", "--target-farthest", "10",
            "--conditions", "env-default", "--seeds", "0", "--steps", "200", "--out", str(tmp_path / "exp")]
    with pytest.raises(SystemExit) as exit_info:
        runner.main(argv)
    assert "refused curriculum env-default-s0: body.target: target: farthest: 10 pairs asked, the task space has 6" \
        in str(exit_info.value.code)
    assert not (tmp_path / "exp" / "runs").exists()  # no student was started
    # Nor is the setting kept: the same --out takes the corrected command.
    assert not (tmp_path / "exp" / "experiment.json").exists()


def test_groups_of_a_condition(tmp_path):
    args = runner.parse_args(["--conditions", "env-default", "random", "--seeds", "0", "1", "2",
                              "--students-per-process", "2", "--out", str(tmp_path)])
    experiment = SimpleNamespace(args=args, run_dir=lambda condition, seed: tmp_path / runner.run_name(condition, seed))
    pending = [("env-default", 0), ("env-default", 2), ("random", 0), ("random", 1), ("random", 2)]
    # At most 2 students a process, never two conditions in one; groups with the first seeds first.
    assert runner.Experiment.groups(experiment, pending) == [
        [("env-default", 0), ("env-default", 2)], [("random", 0), ("random", 1)], [("random", 2)]]
    args.students_per_process = 0  # all of a condition's pending seeds
    assert runner.Experiment.groups(experiment, pending) == [pending[:2], pending[2:]]
    assert runner.Experiment.groups(experiment, pending[2:]) == [pending[2:]]  # a condition with none pending
    # Resumed: the students of a process train in lockstep, so only those at the same step share one
    # (e.g. after a rerun with more seeds, or killed while writing the checkpoints: the previous one alone).
    for (condition, seed), step, name in ((("random", 0), 300, "checkpoint.pt"),
                                          (("random", 2), 300, "checkpoint.prev.pt"),
                                          (("env-default", 2), 150, "checkpoint.pt")):
        experiment.run_dir(condition, seed).mkdir()
        torch.save({"step": step}, experiment.run_dir(condition, seed) / name)
    assert runner.Experiment.groups(experiment, pending) == [
        [("env-default", 0)], [("random", 0), ("random", 2)], [("random", 1)], [("env-default", 2)]]


def test_miniature_grid_end_to_end(tmp_path, capsys):
    """2 conditions x 2 seeds on a sparse maze with one fixed goal and a target (the 2 starts farthest from
    it): each condition's seeds in one process."""
    out = tmp_path / "exp"
    argv = ["--env", "PointMaze_UMaze-v3", "--env-kwargs", '{"continuing_task": false}', "--target-farthest", "2",
            "--goal-cell", "3", "1",
            "--conditions", "env-default", "gradnorm-mean", "--seeds", "0", "1",
            "--steps", "300", "--eval-every", "150", "--eval-episodes", "2", "--learning-starts", "100",
            "--random-steps", "100", "--params", 'gradnorm-mean={"batch_size": 2, "horizon": 1}',
            "--parallel", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        runner.main(argv)
    assert exit_info.value.code == 0
    # Summarized as each process finished (a grid spans sittings), and once more at the end.
    assert capsys.readouterr().out.count("Wrote ") == 3

    runs = out / "runs"
    for c in ("env-default", "gradnorm-mean"):
        # One process per condition, logging in its first student's directory; each student its own files.
        assert (runs / f"{c}-s0" / "worker.log").exists() and not (runs / f"{c}-s1" / "worker.log").exists()
        for s in (0, 1):
            assert {"checkpoint.pt", "episodes.jsonl", "done"} <= {p.name for p in (runs / f"{c}-s{s}").iterdir()}
    with open(out / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    # Only evaluations on the target are collected: every student evaluated on it at each step.
    assert {(r["condition"], r["seed"], r["step"]) for r in rows} == {
        (c, s, step) for c in ("env-default", "gradnorm-mean") for s in ("0", "1") for step in ("150", "300")}
    with open(out / "proposals.csv") as f:
        proposals = list(csv.DictReader(f))
    assert proposals and {r["condition"] for r in proposals} == {"gradnorm-mean"}  # env-default proposes no task
    assert {tuple(json.loads(r["task_values"])[2:]) for r in proposals} == {(3, 1)}  # the teacher chose starts only
    summary = (out / "summary.md").read_text()
    assert "| gradnorm-mean | 2 | " in summary and "goal fixed at (3, 1)" in summary
    assert json.loads((out / "experiment.json").read_text())["threshold"] == 0.8  # for --analyze-only
    assert "the 2 start cells farthest from the goal" in summary
    assert [r["condition"] for r in json.loads((out / "summary.json").read_text())] == ["env-default", "gradnorm-mean"]
    with open(out / "informativeness.csv") as f:
        figures = list(csv.DictReader(f))
    # One row per run and signal; runs this short have too few episodes for figures (README: at least 10).
    assert {(r["condition"], r["seed"], r["signal"]) for r in figures} == {
        (c, s, signal) for c in ("env-default", "gradnorm-mean") for s in ("0", "1") for signal in runner.INFORMATIVENESS_SIGNALS}
    assert "## How informative is each signal about the task?" in summary
    for png in ("learning_curves.png", "teacher_proposals.png", "proposal_heatmaps.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # A rerun with one more seed trains only the new students and keeps the finished ones' rows.
    rows_before = runner.collected_rows(out)
    logs = {c: (runs / f"{c}-s0" / "worker.log").read_text() for c in ("env-default", "gradnorm-mean")}
    more_seeds = argv[:argv.index("--seeds")] + ["--seeds", "0", "1", "2"] + argv[argv.index("--steps"):]
    with pytest.raises(SystemExit) as exit_info:
        runner.main(more_seeds)
    assert exit_info.value.code == 0
    assert {c: (runs / f"{c}-s0" / "worker.log").read_text() for c in logs} == logs  # no process for them
    rows_after = runner.collected_rows(out)
    assert {run: rows_after[run] for run in rows_before} == rows_before
    assert {(c, s, step) for c, s, step, *_ in (row for run in rows_after.values() for row in run["evaluations.csv"])
            if s == "2"} == {(c, "2", step) for c in ("env-default", "gradnorm-mean") for step in ("150", "300")}

    # The CSVs are the record: with the service's database gone (runs/ kept), then on a fresh checkout of
    # committed results (runs/ gone too, as on another machine), then resumed with only some conditions,
    # nothing is trained or read again and the files stay as they were, row for row.
    texts = {name: (out / name).read_text() for name in runner.RESULT_FILES}
    shutil.rmtree(out / "service")
    with pytest.raises(SystemExit) as exit_info:
        runner.main(more_seeds)
    assert exit_info.value.code == 0
    assert {name: (out / name).read_text() for name in runner.RESULT_FILES} == texts
    shutil.rmtree(runs)
    with pytest.raises(SystemExit) as exit_info:
        runner.main(more_seeds)
    assert exit_info.value.code == 0
    assert not runs.exists()
    assert {name: (out / name).read_text() for name in runner.RESULT_FILES} == texts
    with pytest.raises(SystemExit) as exit_info:
        runner.main(more_seeds[:more_seeds.index("--conditions") + 1] + ["gradnorm-mean"]
                    + more_seeds[more_seeds.index("--seeds"):])
    assert exit_info.value.code == 0
    assert {name: (out / name).read_text() for name in runner.RESULT_FILES} == texts
    assert "| env-default | 3 | " in (out / "summary.md").read_text()
    assert not list(out.glob("*.partial"))


def test_result_csvs_of_another_version_are_refused(tmp_path):
    write_csv(tmp_path / "evaluations.csv", [["random", 0, 100, 0.5, 1.0]])
    assert runner.collected_rows(tmp_path) == {("random", 0): {"evaluations.csv": [["random", "0", "100", "0.5", "1.0"]]}}
    with open(tmp_path / "proposals.csv", "w") as f:
        f.write("condition,seed,task_values\n")
    with pytest.raises(SystemExit, match="proposals.csv has the columns condition, seed, task_values"):
        runner.collected_rows(tmp_path)


def test_teacher_proposals_reproducible(tmp_path):
    def proposals(out):
        argv = ["--env", "PointMaze_UMazeDense-v3", "--conditions", "gradnorm-mean", "--seeds", "0", "--steps", "600",
                "--eval-every", "600", "--eval-episodes", "1", "--learning-starts", "100", "--random-steps", "100",
                "--out", str(out)]
        with pytest.raises(SystemExit):
            runner.main(argv)
        # The student's side too: its evaluations (after ~500 updates) repeat to the last digit.
        return (out / "proposals.csv").read_text(), (out / "evaluations.csv").read_text()

    assert proposals(tmp_path / "a") == proposals(tmp_path / "b")


def test_informativeness_table_averages_over_runs(tmp_path):
    path = tmp_path / "informativeness.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(stats.INFORMATIVENESS_COLUMNS)
        writer.writerows([["a", 0, "success", 50, 4, 0.3, 0.25, 0.01], ["a", 1, "success", 50, 4, 0.1, 0.05, 0.2],
                          ["env-default", 0, "success", 0, 0, "", "", ""]])
    assert "| success | 2 | 0.200 | 0.150 | 1/2 |" in stats.informativeness_table(path)


@pytest.mark.parametrize("bad, reason", [
    (["--params", "gradnorm-mean=notjson"], "argument --params: not JSON: notjson"),
    (["--params", "gradnorm-mean=[1,2]"], "argument --params: not a JSON object: [1,2]"),
    (["--params", "nope={}"], "argument --params: unknown condition 'nope'"),
    (["--steps", "0"], "must be at least 1"),
    (["--eval-every", "0"], "must be at least 1"),
    (["--checkpoint-every", "-5"], "must be at least 1"),
    (["--seeds", "0", "-1"], "--seeds cannot be negative"),
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--parallel", "-1"], "--parallel must be at least 1"),
    (["--threshold", "80"], "--threshold is a success rate above 0 and at most 1, not 80.0"),
    (["--threshold", "0"], "--threshold is a success rate above 0 and at most 1"),
    (["--threshold", "nan"], "--threshold is a success rate above 0 and at most 1"),
])
def test_bad_arguments_are_usage_errors_before_anything_is_written(tmp_path, capsys, bad, reason):
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*bad, "--out", str(tmp_path / "exp")])
    assert exit_info.value.code == 2 and reason in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_analyze_only_summarizes_at_the_experiments_threshold(tmp_path, capsys):
    with pytest.raises(SystemExit, match=f"acl-experiment: {tmp_path / 'none'} holds no experiment"):
        runner.main(["--analyze-only", "--out", str(tmp_path / "none")])
    config = {"env": "PointMaze_UMaze-v3", "steps": 200, "eval_every": 100, "eval_episodes": 2, "preset": "small"}
    (tmp_path / "experiment.json").write_text(json.dumps(config))

    def threshold(*flags):
        return runner.parse_args(["--analyze-only", *flags, "--out", str(tmp_path)]).threshold

    assert threshold() == 0.8 and threshold("--benchmark", "far-goal") == 0.5  # older files: the default, as before
    (tmp_path / "experiment.json").write_text(json.dumps({**config, "threshold": 0.3}))
    assert threshold() == threshold("--benchmark", "far-goal") == 0.3 and threshold("--threshold", "0.6") == 0.6
    write_csv(tmp_path / "evaluations.csv", [["env-default", 0, 100, 0.0, 0.0], ["env-default", 0, 200, 0.4, 1.0]])
    (tmp_path / "proposals.csv").write_text(",".join(plots.PROPOSAL_COLUMNS) + "\n")
    runner.main(["--analyze-only", "--out", str(tmp_path)])
    assert "| env-default | 1 | 1/1 | 200 " in (tmp_path / "summary.md").read_text()  # 40% counts at 30%


def test_ctrl_c_while_the_service_starts_stops_it(tmp_path):
    out = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    proc = subprocess.Popen([sys.executable, "-m", "teacher_service.launch.experiment.runner", "--conditions",
                             "env-default", "--seeds", "0", "--steps", "200", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: processes_mentioning(f"serve --data-dir {out}") or proc.poll() is not None, 60,
                   "the service's process")
        proc.send_signal(signal.SIGINT)
        printed, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in printed, printed
        assert not processes_mentioning(str(tmp_path)), printed
        assert not (out / "experiment.json").exists()  # stopped before any curriculum was created
    finally:
        for pid in processes_mentioning(str(tmp_path)):  # what the test left behind, should it fail
            os.kill(pid, signal.SIGKILL)


def test_help_says_each_default_once(tmp_path, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and ") (default:" not in text
    for described in ("--env ENV environment id", "--conditions CONDITION [CONDITION ...] teachers to compare",
                      "--seeds SEED [SEED ...] one student per condition and seed"):
        assert described in text
    # The URL of a service on an IPv6 address has it in brackets.
    args = runner.parse_args(["--service-host", "::1", "--out", str(tmp_path)])
    assert runner.Experiment(args).url.startswith("http://[::1]:")


@pytest.mark.parametrize("experiment", sorted(path.parent.name for path in (REPO / "results").glob("*/experiment.json")))
def test_the_committed_summaries_are_what_the_analysis_makes_of_the_committed_csvs(tmp_path, capsys, experiment):
    """The committed summaries had drifted from the analysis (an older legend sentence; PointMaze's an older table,
    whose unadjusted p-values the README quoted): `--analyze-only` on each committed experiment writes its
    summary.md again, word for word."""
    out = shutil.copytree(REPO / "results" / experiment, tmp_path / experiment)
    runner.main(["--analyze-only", "--out", str(out)])
    assert (out / "summary.md").read_text() == (REPO / "results" / experiment / "summary.md").read_text()
