"""Learning curves (mean and 95% t band over seeds) and what the teachers proposed over training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats as sps

from teacher_service.learning.task_spaces.maze import maze_map, shortest_paths

PROPOSAL_COLUMNS = ("condition", "seed", "step", "task_values")


def band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows (seeds) and its 95% t interval, per column."""
    mean = rows.mean(axis=0)
    if len(rows) < 2:
        return mean, mean, mean
    half = sps.t.ppf(0.975, len(rows) - 1) * sps.sem(rows, axis=0)
    return mean, mean - half, mean + half


def _aligned(seeds: dict, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation steps that every seed has, and the seeds' values there (seeds x steps)."""
    common = sorted(set.intersection(*(set(run[0].tolist()) for run in seeds.values())))
    rows = [[dict(zip(run[0].tolist(), run[column].tolist()))[s] for s in common] for run in seeds.values()]
    return np.array(common), np.array(rows)


def _plot_curves(ax, curves: dict, column: int, ylabel: str) -> None:
    for condition, seeds in curves.items():
        steps, rows = _aligned(seeds, column)
        mean, low, high = band(rows)
        (line,) = ax.plot(steps, mean, label=f"{condition} (n={len(rows)})")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def learning_curves(curves: dict, path: Path, threshold: float,
                    on: str = "the environment's default starts and goals") -> None:
    fig, (ax_success, ax_return) = plt.subplots(1, 2, figsize=(12, 4.5))
    _plot_curves(ax_success, curves, 1, "evaluation success rate")
    ax_success.axhline(threshold, color="grey", linestyle=":", label=f"{threshold:.0%}")
    ax_success.set_ylim(-0.02, 1.02)
    _plot_curves(ax_return, curves, 2, "evaluation mean return")
    ax_success.legend(fontsize=8)
    fig.suptitle(f"Evaluation on {on} (mean, 95% t band over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- what the teachers proposed


def task_distance(env_id: str, values: list[float]) -> tuple[float, str]:
    """How far the task's start is from its goal, and the axis label that says in what."""
    if env_id.startswith(("PointMaze_", "AntMaze_")):
        reset_row, reset_col, goal_row, goal_col = map(int, values)
        return shortest_paths(env_id)[(reset_row, reset_col)][(goal_row, goal_col)], "start to goal (maze cells, shortest path)"
    if env_id.startswith("AdroitHandRelocate"):
        ball_x, ball_y, target_x, target_y, target_z = values
        return float(np.linalg.norm([target_x - ball_x, target_y - ball_y, target_z])), "ball to target (m, ball at z=0)"
    raise ValueError(f"no task distance for {env_id}")


def read_proposals(path: Path, env_id: str) -> tuple[dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], str]:
    """{condition: {seed: (steps, distances)}} and the distance's axis label."""
    rows: dict[str, dict[int, list[tuple[int, float]]]] = {}
    label = ""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            distance, label = task_distance(env_id, json.loads(row["task_values"]))
            rows.setdefault(row["condition"], {}).setdefault(int(row["seed"]), []).append((int(row["step"]), distance))
    return {cond: {seed: tuple(np.array(col) for col in zip(*points)) for seed, points in seeds.items()}
            for cond, seeds in rows.items()}, label


def teacher_proposals(curves: dict, proposals_csv: Path, env_id: str, path: Path, bins: int = 10) -> None:
    """Learning curves next to the mean start-to-goal distance of each teacher's proposals over training."""
    proposals, label = read_proposals(proposals_csv, env_id)
    budget = max(int(run[0].max()) for seeds in curves.values() for run in seeds.values())
    edges = np.linspace(0, budget, bins + 1)
    fig, (ax_curves, ax_tasks) = plt.subplots(1, 2, figsize=(12, 4.5))
    _plot_curves(ax_curves, curves, 1, "evaluation success rate")
    ax_curves.legend(fontsize=8)
    colors = {cond: line.get_color() for cond, line in zip(curves, ax_curves.get_lines())}
    for condition, seeds in proposals.items():
        # Per seed the mean distance of the proposals in each stretch of training; then mean and band over seeds.
        rows = np.array([[d[(s > lo) & (s <= hi)].mean() if ((s > lo) & (s <= hi)).any() else np.nan
                          for lo, hi in zip(edges[:-1], edges[1:])] for s, d in seeds.values()])
        keep = ~np.isnan(rows).any(axis=0)
        mean, low, high = band(rows[:, keep])
        centers = ((edges[:-1] + edges[1:]) / 2)[keep]
        (line,) = ax_tasks.plot(centers, mean, marker="o", color=colors.get(condition), label=condition)
        ax_tasks.fill_between(centers, low, high, color=line.get_color(), alpha=0.2)
    ax_tasks.set_xlabel("env steps")
    ax_tasks.set_ylabel(f"proposed tasks: {label}")
    ax_tasks.grid(alpha=0.3)
    if proposals:
        ax_tasks.legend(fontsize=8)
    fig.suptitle("What the teachers proposed (right; mean per tenth of training, 95% t band over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def proposal_heatmaps(proposals_csv: Path, env_id: str, budget: int, path: Path, stretches: int = 3) -> None:
    """Per teacher (rows) and third of training (columns), pooled over seeds: the share of proposals
    starting in each maze cell (colour) and ending in it (red dots, area by share)."""
    layout = np.array(maze_map(env_id))
    counts: dict[str, np.ndarray] = {}  # condition -> (stretch, start/goal, row, col)
    with open(proposals_csv, newline="") as f:
        for row in csv.DictReader(f):
            reset_row, reset_col, goal_row, goal_col = map(int, json.loads(row["task_values"]))
            grid = counts.setdefault(row["condition"], np.zeros((stretches, 2, *layout.shape)))
            stretch = min(int(row["step"]) * stretches // budget, stretches - 1)
            grid[stretch, 0, reset_row, reset_col] += 1
            grid[stretch, 1, goal_row, goal_col] += 1
    rows = max(len(counts), 1)
    fig, axes = plt.subplots(rows, stretches, figsize=(3 * stretches, 3 * rows), squeeze=False)
    walls = np.ma.masked_where(layout == 0, layout)
    edges = np.linspace(0, budget, stretches + 1)
    for i, (condition, grid) in enumerate(counts.items()):
        for j in range(stretches):
            ax = axes[i, j]
            total = max(grid[j, 0].sum(), 1)
            image = ax.imshow(np.ma.masked_where(layout == 1, grid[j, 0] / total), cmap="Blues", vmin=0)
            ax.imshow(walls, cmap="Greys", vmin=0, vmax=1)
            goal_rows, goal_cols = np.nonzero(grid[j, 1])
            ax.scatter(goal_cols, goal_rows, s=600 * grid[j, 1][goal_rows, goal_cols] / total, color="red", alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{condition}: steps {edges[j]:.0f}-{edges[j + 1]:.0f}\n{int(grid[j, 0].sum())} proposals",
                         fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    if not counts:
        axes[0, 0].set_axis_off()
    fig.suptitle("Where each teacher put the start (blue: share of proposals) and the goal (red: area by share)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
