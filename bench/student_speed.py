"""Student speed: our SAC against Stable-Baselines3's, and K students in one process (ensemble SAC).

On PointMaze_UMaze-v3, one thread per process. Rates are per CPU-second of the measuring process
(``time.process_time``), i.e. per core: on a shared machine, time spent waiting for a core does not
count, while contention for caches still does.

1. Updates/s of one student, ours (probes on and off) against SB3's SAC with the same networks and
   batch (the paper's PointMaze preset: 3x128 tanh, one critic, batch 128, alpha 0.2), on the same
   transitions; interleaved rounds (the machine is shared and noisy), medians. Ratios are the
   median (and range) of per-round ratios: two configurations measured side by side share the
   load of their moment, so these are steadier than ratios of medians.
2. Training env steps/s per core with the environment stepping included: one student per process
   (the single SAC) against K = 1, 4, 8, 16 students in one process (EnsembleSAC, K envs, one
   update of all K per step), for the `small` preset (2x64, batch 64: what acl-experiment runs) and
   the PointMaze preset, in interleaved rounds; resident memory per student from a fresh process per
   configuration; replay buffers sized to the run. ``--device cuda`` trains these students on a GPU
   (their rates stay per CPU-second of the process that drives them; RSS is host memory only).

Targets (issue #14): ours >= 1.5x SB3; K=8 in one process >= 4x the env steps per core of one
student per process. The last line is for tools; its K=8 figure is the first preset's.

    .venv/bin/python bench/student_speed.py [--updates 200] [--rounds 9] [--compile] [--steps 100]
        [--train-rounds 6] [--presets small pointmaze] [--members 1 4 8 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from student_client.envs import make_env, step_all
from student_client.sac.agent import PRESETS, SAC, PointMazePreset, make_buffer
from student_client.sac.ensemble import EnsembleSAC

ENV_ID = "PointMaze_UMaze-v3"
MEMBERS = (1, 4, 8, 16)


def ratios(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios of two configurations measured in the same rounds."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


# ---------------------------------------------------------------- part 1: updates/s against SB3


def ours(transitions: list, probes: bool, compile: bool = False) -> tuple[SAC, callable]:
    env = make_env(ENV_ID)
    config = PointMazePreset(compile=compile)
    agent = SAC(env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high, config, probes=probes)
    buffer = make_buffer(config, len(transitions), env.obs_dim, env.act_dim, seed=0)
    for t in transitions:
        buffer.add(*t)

    def run(n: int) -> None:
        for _ in range(n):
            agent.update(buffer.sample(config.batch_size))

    return agent, run


def sb3(transitions: list) -> callable:
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.logger import configure

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


def updates_vs_sb3(args: argparse.Namespace) -> float:
    """Print the single-student table; return ours (probes on) / SB3."""
    torch.manual_seed(0)
    transitions = collect(args.transitions)
    agent, ours_probes = ours(transitions, probes=True)
    _, ours_plain = ours(transitions, probes=False)
    runners = {"ours, probes on": ours_probes, "ours, probes off": ours_plain, "SB3 SAC": sb3(transitions)}
    if args.compile:
        start = time.perf_counter()
        _, runners["ours, compiled"] = ours(transitions, probes=True, compile=True)
        runners["ours, compiled"](3)
        print(f"torch.compile of the update: {time.perf_counter() - start:.0f} s (wall clock)")
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(20)  # warm-up
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.process_time()
            run(args.updates)
            rates[name].append(args.updates / (time.process_time() - start))

    # The probes' own cost, timed directly: steadier than the difference of two noisy rates.
    start = time.process_time()
    for _ in range(1000):
        agent.actor_probe.record()
        agent.critic_probe.record()
    probe_s = (time.process_time() - start) / 1000

    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{ENV_ID}, PointMaze preset (3x128 tanh, 1 critic, batch 128), 1 thread, "
          f"{args.rounds} rounds x {args.updates} updates, median")
    print(f"{'configuration':<20}{'updates/s':>12}{'min':>10}{'max':>10}")
    for name, r in rates.items():
        print(f"{name:<20}{median[name]:>12.1f}{min(r):>10.1f}{max(r):>10.1f}")
    for name in runners:
        if name != "SB3 SAC":
            ratio, low, high = ratios(rates[name], rates["SB3 SAC"])
            print(f"{name + ' / SB3:':<26}{ratio:.2f}x (rounds {low:.2f}x to {high:.2f}x)")
    print(f"probe cost timed directly: {probe_s * 1e6:.0f} us per update = "
          f"{probe_s * median['ours, probes on']:.1%} of an update")
    return ratios(rates["ours, probes on"], rates["SB3 SAC"])[0]


# ---------------------------------------------------------------- part 2: training, K students per process


class Training:
    """``members`` students (None: the single SAC) training on PointMaze as the worker does: act, step the
    envs, store, one update (of all members) per step. ``run(n)`` continues where the last call stopped."""

    def __init__(self, preset: str, members: int | None, capacity: int, device: str = "cpu") -> None:
        self.config = config = PRESETS[preset]()
        self.members = members
        seeds = list(range(members or 1))
        self.envs = [make_env(ENV_ID) for _ in seeds]
        env = self.envs[0]
        args = (env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high, config)
        self.agent = SAC(*args, device=device) if members is None else EnsembleSAC(*args, seeds=seeds, device=device)
        self.buffer = make_buffer(config, capacity, env.obs_dim, env.act_dim, seed=seeds if members else 0,
                                  device=device)
        for e, seed in zip(self.envs, seeds):
            e.action_space.seed(seed)
        self.obs = np.stack([e.reset(seed=seed) for e, seed in zip(self.envs, seeds)])
        self.warmup = config.batch_size + 20  # random actions until a batch is there, then a few updates
        self.step = 0

    def run(self, steps: int) -> None:
        envs, agent, buffer, batch_size = self.envs, self.agent, self.buffer, self.config.batch_size
        for _ in range(steps):
            if self.step < batch_size:
                actions = np.stack([e.action_space.sample() for e in envs]).astype(np.float32)
            else:
                actions = agent.act(self.obs) if self.members else agent.act(self.obs[0])[None]
            next_obs, rewards, terminated, truncated, _ = step_all(envs, actions)
            if self.members:
                buffer.add(self.obs, actions, rewards, next_obs, terminated)
            else:
                buffer.add(self.obs[0], actions[0], float(rewards[0]), next_obs[0], bool(terminated[0]))
            for i in np.flatnonzero(terminated | truncated):
                next_obs[i] = envs[i].reset()
            self.obs = next_obs
            self.step += 1
            if buffer.size >= batch_size:
                agent.update(buffer.sample(batch_size))


def resident_memory(preset: str, members: int | None, capacity: int, device: str) -> dict:
    """Run in a fresh process: its resident memory once training runs, and the buffer's size."""
    torch.set_num_threads(1)
    training = Training(preset, members, capacity, device)
    training.run(training.warmup + 10)
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    rows = training.buffer.rows
    return {"rss_mb": rss_kb / 1024, "buffer_mb": rows.numel() * rows.element_size() / 2**20}


def training_per_core(args: argparse.Namespace, preset: str) -> float:
    """Print the K-students table; return K=8's env steps/s over one student per process.

    The rates come from one process that runs every configuration in turn, ``--steps`` steps at a
    time for ``--train-rounds`` rounds: under a changing load, interleaving keeps the ratios fair. A
    configuration's rate does not depend on what else lives in the process; its memory does, so
    resident memory is measured in a fresh process per configuration.
    """
    configs: list[int | None] = [None, *args.members]
    capacity = PRESETS[preset]().batch_size + 20 + args.train_rounds * args.steps
    trainings = {m: Training(preset, m, capacity, args.device) for m in configs}
    for training in trainings.values():
        training.run(training.warmup)
    rates: dict[int | None, list[float]] = {m: [] for m in configs}
    for _ in range(args.train_rounds):
        for members, training in trainings.items():
            start = time.process_time()
            training.run(args.steps)
            rates[members].append((members or 1) * args.steps / (time.process_time() - start))
    memory = {}
    for members in configs:
        cmd = [sys.executable, __file__, "--child", str(members or 0), "--preset", preset, "--steps", str(capacity),
               "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        memory[members] = json.loads(out.strip().splitlines()[-1])
    config = PRESETS[preset]()
    print(f"\nTraining on {ENV_ID}, preset {preset} ({'x'.join(map(str, config.hidden))} {config.activation}, "
          f"batch {config.batch_size}), on {args.device}, one update per env step, env stepping included, 1 thread, "
          f"{args.train_rounds} interleaved rounds of {args.steps} steps, median")
    print(f"{'configuration':<26}{'env steps/s':>12}{'min':>9}{'max':>9}{'vs single (rounds)':>26}"
          f"{'RSS/student':>13}{'buffer/student':>16}")
    for members in configs:
        k, (ratio, low, high) = members or 1, ratios(rates[members], rates[None])
        name = "single SAC, 1 per process" if members is None else f"ensemble K={members}, 1 process"
        print(f"{name:<26}{statistics.median(rates[members]):>12.0f}{min(rates[members]):>9.0f}"
              f"{max(rates[members]):>9.0f}{f'{ratio:.2f}x ({low:.2f}x to {high:.2f}x)':>26}"
              f"{memory[members]['rss_mb'] / k:>10.0f} MB{memory[members]['buffer_mb'] / k:>13.2f} MB")
    return ratios(rates[8], rates[None])[0] if 8 in rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200, help="updates per configuration and round (part 1)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of part 1")
    parser.add_argument("--transitions", type=int, default=5000)
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compiled update (part 1)")
    parser.add_argument("--steps", type=int, default=100, help="env steps per configuration and round (part 2)")
    parser.add_argument("--train-rounds", type=int, default=6, help="rounds of part 2")
    parser.add_argument("--members", type=int, nargs="+", default=list(MEMBERS), help="K values of part 2")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["small", "pointmaze"],
                        help="SAC presets of part 2")
    parser.add_argument("--device", default="cpu", help="where part 2's students train, e.g. cuda")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # part 2's worker process
    parser.add_argument("--preset", default="small", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(resident_memory(args.preset, args.child or None, args.steps, args.device)))
        return
    torch.set_num_threads(1)
    vs_sb3 = updates_vs_sb3(args)
    k8 = [training_per_core(args, preset) for preset in args.presets][0]
    print(f"students: ensemble_k8_vs_single={k8:.2f}x single_vs_sb3={vs_sb3:.2f}x")


if __name__ == "__main__":
    main()
