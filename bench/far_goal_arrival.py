"""How far can a far-goal student get within its episode limit? Training success and arrival step by
the shortest-path distance (maze cells) between the proposed start and goal cells.

Reads the SQLite database of an `acl-experiment` grid (``OUT/service/teacher.db``): every reported
proposal of the conditions asked for, after each student's first ``--skip`` episodes. Sparse PointMaze
pays 1 per step within 0.45 of the goal and the episode runs on to its limit, so a successful episode
arrived at step ``limit - return`` at the latest (earlier if it left the goal again).

    .venv/bin/python bench/far_goal_arrival.py results/far-goal-limit300 --conditions random --skip 600
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

from teacher_service.learning.task_spaces.maze import shortest_paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the grid's output directory")
    p.add_argument("--conditions", nargs="+", default=["random"], help="conditions whose proposals to read")
    p.add_argument("--skip", type=int, default=600, help="each student's first episodes left out (still learning)")
    args = p.parse_args()
    config = json.loads((args.out / "experiment.json").read_text())
    limit = config["env_kwargs"].get("max_episode_steps")
    if limit is None:
        raise SystemExit("the grid's env_kwargs name no max_episode_steps")
    paths = shortest_paths(config["env"])
    db = sqlite3.connect(f"file:{args.out / 'service' / 'teacher.db'}?mode=ro", uri=True)
    by_distance: dict[int, list[tuple[bool, float]]] = defaultdict(list)
    for condition in args.conditions:
        seen: dict[str, int] = defaultdict(int)
        rows = db.execute("SELECT c.name, p.reset_options, p.signals FROM proposals p JOIN curricula c "
                          "ON c.id = p.curriculum_id WHERE c.name LIKE ? AND p.signals IS NOT NULL ORDER BY p.seq",
                          (f"{condition}-s%",))
        for name, options, signals in rows:
            seen[name] += 1
            options, signals = json.loads(options), json.loads(signals)
            if seen[name] <= args.skip or "reset_cell" not in options:
                continue
            distance = paths[tuple(options["reset_cell"])][tuple(options["goal_cell"])]
            by_distance[distance].append((bool(signals["success"]), limit - signals["episode_return"]))
    print(f"{', '.join(args.conditions)} in {args.out} (episode limit {limit}), episodes after each student's "
          f"first {args.skip}")
    print("cells  episodes  success  arrival median  arrival p90")
    for distance in sorted(by_distance):
        episodes = by_distance[distance]
        arrivals = [steps for ok, steps in episodes if ok]
        median, p90 = (f"{np.median(arrivals):14.0f}", f"{np.percentile(arrivals, 90):12.0f}") if arrivals else (
            f"{'-':>14}", f"{'-':>12}")
        print(f"{distance:5d}  {len(episodes):8d}  {np.mean([ok for ok, _ in episodes]):7.2f}  {median}  {p90}")


if __name__ == "__main__":
    main()
