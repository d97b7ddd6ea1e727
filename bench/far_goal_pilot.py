"""Sizing pilot for the far-goal benchmark (issue #15): how many env steps does `env-default` need on the
farthest start-goal pairs of a sparse maze, and does an ordering of tasks leave room to be faster?

No teacher service: K students train in one process (one ensemble SAC, seeds as a batch dimension),
each with a fixed task rule, and all are evaluated on the same target (the N farthest pairs by shortest
path, one episode each, success = the goal reached at some step) every --eval-every steps. Rules:
`env-default` (the env's own random start and goal), `random` (uniform over start-goal pairs),
`near-first` (a hand-made curriculum: pairs at most d cells apart, d growing from 1 to the maze's
diameter over the first --ramp share of the budget). Episodes run to the step limit unless
--end-on-success; --auto-alpha tunes SAC's temperature instead of the preset's fixed one. With --goal-cell
the goal is fixed there (the env's maze_map gets a 'g', as acl-experiment --goal-cell does), the rules choose
start cells only and the target is the N starts farthest from it.

    nice -n 5 .venv/bin/python bench/far_goal_pilot.py --steps 150000 --seeds 0 1 2 --out /tmp/pilot.csv
    nice -n 5 .venv/bin/python bench/far_goal_pilot.py --max-episode-steps 600 --goal-cell 6 5 --target 7 ...
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace

import numpy as np
import torch

from student_client.envs import make_env
from student_client.sac.agent import PRESETS, make_buffer
from student_client.sac.ensemble import EnsembleSAC
from teacher_service.learning.task_spaces.maze import layout_with_goal, shortest_paths

RULES = ("env-default", "random", "near-first")


def all_pairs(env_id: str, goal: tuple[int, int] | None) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    """(start, goal, shortest path) of every pair of distinct cells, or of every start for a fixed goal."""
    table = shortest_paths(env_id)
    return [(s, g, d) for s in table for g, d in table[s].items() if s != g and goal in (None, g)]


def farthest_pairs(pairs: list, n: int) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="PointMaze_Medium-v3")
    p.add_argument("--max-episode-steps", type=int, default=300)
    p.add_argument("--end-on-success", action="store_true", help="continuing_task=False: success ends the episode")
    p.add_argument("--auto-alpha", action="store_true", help="tune SAC's temperature instead of the preset's")
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60_000)
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--target", type=int, default=20, help="the N farthest pairs")
    p.add_argument("--goal-cell", type=int, nargs=2, default=None, metavar=("ROW", "COL"), help="one fixed goal")
    p.add_argument("--ramp", type=float, default=0.5)
    p.add_argument("--preset", default="small")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)

    members = [(rule, seed) for rule in a.rules for seed in a.seeds]
    k = len(members)
    kwargs = {"continuing_task": not a.end_on_success, "max_episode_steps": a.max_episode_steps}
    goal = tuple(a.goal_cell) if a.goal_cell else None
    if goal:
        kwargs["maze_map"] = layout_with_goal(a.env, goal)
    envs = [make_env(a.env, **kwargs) for _ in members]
    eval_envs = [make_env(a.env, **kwargs) for _ in members]
    config = PRESETS[a.preset]()
    config = replace(config, buffer_size=a.steps, **({"alpha": None} if a.auto_alpha else {}))
    env0 = envs[0]
    seeds = [1000 * i + s for i, (_, s) in enumerate(members)]
    agent = EnsembleSAC(env0.obs_dim, env0.act_dim, env0.action_space.low, env0.action_space.high, config, seeds,
                        probes=False)
    buffer = make_buffer(config, a.steps, env0.obs_dim, env0.act_dim, seeds)
    rngs = [np.random.default_rng(s) for s in seeds]
    pairs = all_pairs(a.env, goal)
    if a.target > len(pairs):
        p.error(f"--target {a.target}: there are {len(pairs)} {'starts' if goal else 'pairs'}")
    diameter = max(d for _, _, d in pairs)
    target = farthest_pairs(pairs, a.target)

    def task(i: int, step: int) -> dict | None:
        rule = members[i][0]
        if rule == "env-default":
            return None
        if rule == "random":
            s, g, _ = pairs[rngs[i].integers(len(pairs))]
        else:
            reach = 1 + (diameter - 1) * min(1.0, step / (a.ramp * a.steps))
            near = [pr for pr in pairs if pr[2] <= reach]
            s, g, _ = near[rngs[i].integers(len(near))]
        return {"reset_cell": list(s), "goal_cell": list(g)}

    def evaluate() -> np.ndarray:
        wins = np.zeros(k)
        for s, g, _ in target:
            obs = np.stack([e.reset({"reset_cell": list(s), "goal_cell": list(g)}) for e in eval_envs])
            live = np.ones(k, bool)
            while live.any():
                actions = agent.act(obs, deterministic=True)
                for i in np.flatnonzero(live):
                    obs[i], _, term, trunc, ok = eval_envs[i].step(actions[i])
                    wins[i] += ok
                    live[i] = not (term or trunc or ok)
        return wins / len(target)

    obs = np.stack([e.reset(task(i, 0), seed=seeds[i]) for i, e in enumerate(envs)])
    for i, e in enumerate(envs):
        e.action_space.seed(seeds[i])
    episodes = np.zeros(k, int)
    successes = np.zeros(k, int)
    reached = np.zeros(k, bool)  # the goal reached at some step of the current episode
    t0 = time.monotonic()
    with open(a.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rule", "seed", "step", "target_success", "episodes", "train_success_share", "elapsed_s"])
        for step in range(1, a.steps + 1):
            if step <= config.random_steps:
                actions = np.stack([e.action_space.sample() for e in envs])
            else:
                actions = agent.act(obs)
            out = [e.step(actions[i]) for i, e in enumerate(envs)]
            next_obs = np.stack([o[0] for o in out])
            buffer.add(obs, actions, np.array([o[1] for o in out], np.float32), next_obs,
                       np.array([o[2] for o in out], np.float32))
            obs = next_obs
            reached |= np.array([o[4] for o in out])
            for i, (_, _, term, trunc, _) in enumerate(out):
                if term or trunc:
                    episodes[i] += 1
                    successes[i] += reached[i]
                    reached[i] = False
                    obs[i] = envs[i].reset(task(i, step))
            if step >= config.learning_starts:
                agent.update(buffer.sample(config.batch_size))
            if step % a.eval_every == 0:
                wins = evaluate()
                for i, (rule, seed) in enumerate(members):
                    row = [rule, seed, step, wins[i], episodes[i], successes[i] / max(episodes[i], 1),
                           round(time.monotonic() - t0)]
                    writer.writerow(row)
                f.flush()
                means = {r: np.mean([w for (rr, _), w in zip(members, wins) if rr == r]) for r in a.rules}
                print(step, round(time.monotonic() - t0), {r: round(float(v), 2) for r, v in means.items()},
                      flush=True)


if __name__ == "__main__":
    main()
