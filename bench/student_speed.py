"""Student update speed: our SAC (probes on/off) vs Stable-Baselines3 SAC, same networks and batch.

PointMaze preset: 3x128 tanh, one critic, batch 128, alpha 0.2, on PointMaze_UMaze-v3 transitions;
one thread each. Configurations are measured in interleaved rounds (the machine is shared and noisy)
and the median rate is reported. Targets: ours >= 1.5x SB3; probe overhead <= 3%.

    .venv/bin/python bench/student_speed.py [--updates 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC as SB3SAC
from stable_baselines3.common.logger import configure

from student_client.envs import make_env
from student_client.sac.agent import SAC, PointMazePreset, make_buffer

ENV_ID = "PointMaze_UMaze-v3"


def ours(transitions: list, probes: bool) -> tuple[SAC, callable]:
    env = make_env(ENV_ID)
    config = PointMazePreset()
    agent = SAC(env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high, config, probes=probes)
    buffer = make_buffer(config, len(transitions), env.obs_dim, env.act_dim, seed=0)
    for t in transitions:
        buffer.add(*t)

    def run(n: int) -> None:
        for _ in range(n):
            agent.update(buffer.sample(config.batch_size))

    return agent, run


def sb3(transitions: list) -> callable:
    env = gym.wrappers.FlattenObservation(gym.make(ENV_ID))
    config = PointMazePreset()
    model = SB3SAC("MlpPolicy", env, learning_rate=config.lr, buffer_size=len(transitions), learning_starts=0,
                   batch_size=config.batch_size, tau=config.tau, gamma=config.gamma, ent_coef=config.alpha,
                   policy_kwargs=dict(net_arch=list(config.hidden), activation_fn=torch.nn.Tanh, n_critics=1),
                   device="cpu", seed=0)
    model.set_logger(configure(None, []))
    for obs, action, reward, next_obs, done in transitions:
        # our flat layout is (observation, achieved, desired); SB3's FlattenObservation sorts the keys
        reorder = lambda o: np.concatenate([o[4:6], o[6:8], o[:4]])  # noqa: E731
        model.replay_buffer.add(reorder(obs)[None], reorder(next_obs)[None], action[None], np.array([reward]),
                                np.array([done]), [{}])

    def run(n: int) -> None:
        model.train(gradient_steps=n, batch_size=config.batch_size)

    return run


def collect(steps: int) -> list:
    env = make_env(ENV_ID)
    env.action_space.seed(0)
    obs, out = env.reset(seed=0), []
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        out.append((obs, action, reward, next_obs, terminated))
        obs = env.reset() if terminated or truncated else next_obs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300, help="updates per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transitions", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transitions = collect(args.transitions)
    agent, ours_probes = ours(transitions, probes=True)
    _, ours_plain = ours(transitions, probes=False)
    runners = {"ours, probes on": ours_probes, "ours, probes off": ours_plain, "SB3 SAC": sb3(transitions)}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(20)  # warm-up
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(args.updates)
            rates[name].append(args.updates / (time.perf_counter() - start))

    # The probes' own cost, timed directly: steadier than the difference of two noisy rates.
    agent.update(agent_batch := make_probe_batch(agent, transitions))
    start = time.perf_counter()
    for _ in range(1000):
        agent.actor_probe.record()
        agent.critic_probe.record()
    probe_s = (time.perf_counter() - start) / 1000

    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{ENV_ID}, PointMaze preset (3x128 tanh, 1 critic, batch 128), 1 thread, "
          f"{args.rounds} rounds x {args.updates} updates, median")
    print(f"{'configuration':<20}{'updates/s':>12}{'min':>10}{'max':>10}")
    for name, r in rates.items():
        print(f"{name:<20}{median[name]:>12.1f}{min(r):>10.1f}{max(r):>10.1f}")
    sb3_rate = median["SB3 SAC"]
    print(f"ours (probes on) / SB3:  {median['ours, probes on'] / sb3_rate:.2f}x")
    print(f"ours (probes off) / SB3: {median['ours, probes off'] / sb3_rate:.2f}x")
    print(f"probe overhead from rates: {1 - median['ours, probes on'] / median['ours, probes off']:+.1%}")
    print(f"probe cost timed directly: {probe_s * 1e6:.0f} us per update = "
          f"{probe_s * median['ours, probes on']:.1%} of an update")
    del agent_batch


def make_probe_batch(agent: SAC, transitions: list):
    config = agent.config
    buffer = make_buffer(config, len(transitions), transitions[0][0].shape[0], transitions[0][1].shape[0], seed=1)
    for t in transitions:
        buffer.add(*t)
    return buffer.sample(config.batch_size)


if __name__ == "__main__":
    main()
