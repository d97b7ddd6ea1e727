"""Cost of the episode-local signals next to the training of the episode they describe.

The worker's loop on PointMaze_UMaze-v3 with the paper's PointMaze preset (3x128 tanh, one critic,
batch 128), one thread: after a warm-up of random transitions, each round trains one real episode
(act, env step, one SAC update per step) and then computes that episode's local signals
(``student_client.episode_signals.agent_signals``). Prints each round's two times and the median
and range of their ratio. Target: at most 2% of the episode's training time.

    .venv/bin/python bench/local_signals.py [--episodes 10] [--warmup 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from student_client.envs import make_env
from student_client.episode_signals import agent_signals
from student_client.sac.agent import SAC, PointMazePreset, make_buffer

ENV_ID = "PointMaze_UMaze-v3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=10, help="measured episodes")
    parser.add_argument("--warmup", type=int, default=2000, help="random transitions in the buffer first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    env = make_env(ENV_ID)
    env.action_space.seed(0)
    config = PointMazePreset()
    agent = SAC(env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high, config)
    buffer = make_buffer(config, args.warmup + 1000 * args.episodes, env.obs_dim, env.act_dim, seed=0)
    obs = env.reset({}, seed=0)
    for _ in range(args.warmup):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = env.reset({}) if terminated or truncated else next_obs

    ratios = []
    print(f"{'episode':>7} {'steps':>5} {'training s':>10} {'signals ms':>10} {'ratio %':>7}")
    for episode in range(args.episodes):
        obs, steps, done = env.reset({}), 0, False
        start = time.perf_counter()
        while not done:  # the worker's loop: act, step, store, update
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated)
            agent.update(buffer.sample(config.batch_size))
            obs, steps, done = next_obs, steps + 1, terminated or truncated
        training = time.perf_counter() - start
        start = time.perf_counter()
        agent_signals(agent, buffer, steps)
        signals = time.perf_counter() - start
        agent.pop_grad_stats()
        ratios.append(signals / training)
        print(f"{episode:>7} {steps:>5} {training:>10.2f} {signals * 1e3:>10.1f} {100 * ratios[-1]:>7.2f}")
    print(f"local signals / episode training time: median {100 * statistics.median(ratios):.2f}%, "
          f"range {100 * min(ratios):.2f}-{100 * max(ratios):.2f}% over {len(ratios)} episodes (target <= 2%)")


if __name__ == "__main__":
    main()
