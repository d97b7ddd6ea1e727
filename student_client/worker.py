"""The student worker: trains SAC on the tasks a teacher proposes and reports each episode's signals.

Per episode: propose, reset on the task (checked), act and train (one update per env step once
learning starts), report the signals of *that* episode under its own proposal id. If the teacher is
unreachable the worker trains on the environment's default tasks and keeps its reports in a durable
outbox (``outbox.json`` in the checkpoint dir) until the teacher is back (`student_client.session`).
An episode cut short by a stop signal or by the end of ``--steps`` is reported as ``stopped``.
Checkpoints (networks, optimizers, replay buffer, counters, RNG) let a killed worker resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from student_client.client import TeacherClient, TeacherError
from student_client.envs import make_env
from student_client.episode_signals import LocalSignals, agent_signals
from student_client.sac.agent import PRESETS, SAC, make_buffer, preset_for_env
from student_client.session import TeacherSession
from teacher_service.wire import RUN_FINISHED, EvaluationRequest, Proposal, Signals

log = logging.getLogger("student_client.worker")
CHECKPOINT = "checkpoint.pt"


@dataclass
class Episode:
    """What one episode measured."""

    steps: int = 0
    ret: float = 0.0
    success: bool = False
    ended: bool = False  # by the environment (terminated or truncated), not cut by a stop or the step budget


class Worker:
    """One student process; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = make_env(args.env)
        self.eval_env = make_env(args.env)
        self._seed(args.seed)  # before the networks are built: their initial weights come from torch's RNG
        config = PRESETS[args.preset or preset_for_env(args.env)]()
        overrides = {k: getattr(args, k) for k in ("learning_starts", "random_steps") if getattr(args, k) is not None}
        self.config = replace(config, **overrides)
        self.agent = SAC(self.env.obs_dim, self.env.act_dim, self.env.action_space.low, self.env.action_space.high,
                         self.config)
        self.buffer = make_buffer(self.config, args.steps, self.env.obs_dim, self.env.act_dim, args.seed)
        self.client = TeacherClient(args.teacher, args.token, timeout_s=args.timeout, attempts=3, max_backoff_s=1.0)
        self.dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        student_id = args.student_id or re.sub(r"[^A-Za-z0-9_.:@\-]", "-", f"{socket.gethostname()}-s{args.seed}")
        self.session = TeacherSession(self.client, args.curriculum, student_id,
                                      self.dir / "outbox.json" if self.dir else None, args.retry_every)
        self.step = 0
        self.episode = 0
        self.next_eval = args.eval_every
        self.next_checkpoint = args.checkpoint_every
        self.stop_requested = False
        if self.dir and (self.dir / CHECKPOINT).exists():
            self.load()
        self.writer = None
        if args.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(args.tensorboard)

    @property
    def student_id(self) -> str:
        return self.session.student_id

    # ------------------------------------------------------------ training

    def run(self) -> None:
        """Train until ``--steps`` env steps or a stop signal, then checkpoint and drain the outbox."""
        bar = tqdm(total=self.args.steps, initial=self.step, unit="step", mininterval=1.0, dynamic_ncols=True,
                   disable=self.args.no_progress)
        start_time, start_step = time.monotonic(), self.step
        try:
            while self.step < self.args.steps and not self.stop_requested:
                proposal = self.session.propose()
                episode = self.run_episode(proposal, bar)
                self.finish_episode(proposal, episode)
                rate = (self.step - start_step) / max(time.monotonic() - start_time, 1e-9)
                bar.set_postfix(ret=f"{episode.ret:.2f}", success=int(episode.success), refresh=False)
                if self.writer:
                    self.writer.add_scalar("perf/steps_per_s", rate, self.step)
                if self.dir and self.step >= self.next_checkpoint:
                    self.save()
                    self.next_checkpoint = self.step + self.args.checkpoint_every
        finally:
            bar.close()
            if self.dir:
                self.save()
            self.session.drain(self.args.drain_timeout, stop=lambda: self.stop_requested)
            if self.writer:
                self.writer.close()

    def run_episode(self, proposal: Proposal | None, bar: tqdm) -> Episode:
        options = proposal.reset_options if proposal else {}
        obs = self.env.reset(options, seed=self.args.seed if self.episode == 0 and self.step == 0 else None)
        episode = Episode()
        learning = self.config.learning_starts
        batch_size = self.config.batch_size
        while True:
            if self.step < self.config.random_steps:
                action = self.env.action_space.sample()
            else:
                action = self.agent.act(obs)
            next_obs, reward, terminated, truncated, success = self.env.step(action)
            self.buffer.add(obs, action, reward, next_obs, terminated)
            obs = next_obs
            self.step += 1
            episode.steps += 1
            episode.ret += reward
            episode.success |= success
            if self.step >= learning and self.buffer.size >= batch_size:
                self.agent.update(self.buffer.sample(batch_size))
            bar.update(1)
            if self.args.eval_every and self.step >= self.next_eval:
                self.evaluate()
                self.next_eval = self.step + self.args.eval_every
            episode.ended = terminated or truncated
            if episode.ended or self.step >= self.args.steps or self.stop_requested:
                return episode

    def finish_episode(self, proposal: Proposal | None, episode: Episode) -> None:
        """Report this episode's signals under its own proposal id and log them."""
        actor, critic = self.agent.pop_grad_stats()
        local = agent_signals(self.agent, self.buffer, episode.steps) if actor.updates else LocalSignals()
        signals = Signals(
            grad_norm_mean=actor.mean, grad_norm_episode=actor.episode,
            critic_grad_norm_mean=critic.mean, critic_grad_norm_episode=critic.episode, **local.as_dict(),
            episode_return=episode.ret, success=episode.success, env_steps=episode.steps, grad_updates=actor.updates,
            # The run's last episode says so: the dashboard shows the student finished, not active.
            extra={RUN_FINISHED: 1.0} if self.step >= self.args.steps else {},
        )
        # An episode cut by a stop signal or by the end of the run is marked: it rewards no teacher.
        outcome = "completed" if episode.ended else "stopped"
        if episode.ended:
            self.session.ended(proposal, episode.ret)
        self.session.finish(proposal, signals, outcome)
        self.episode += 1
        record = {"episode": self.episode, "step": self.step, "outcome": outcome,
                  "proposal_id": proposal.proposal_id if proposal else None,
                  **signals.model_dump(exclude={"extra"})}
        if self.dir:
            with open(self.dir / "episodes.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in record.items():
                if key not in ("episode", "step", "outcome", "proposal_id") and value is not None:
                    self.writer.add_scalar(f"episode/{key}", float(value), self.step)

    def evaluate(self) -> None:
        """Deterministic policy on the env's default start/goal distribution; posted to /evaluations."""
        returns, successes = [], []
        for i in range(self.args.eval_episodes):
            # Seeded by the step: the same student evaluates on the same starts and goals, resumed or not.
            obs = self.eval_env.reset(seed=self.args.seed * 1_000_003 + self.step if i == 0 else None)
            ret, success, done = 0.0, False, False
            while not done:
                obs, reward, terminated, truncated, succ = self.eval_env.step(self.agent.act(obs, deterministic=True))
                ret += reward
                success |= succ
                done = terminated or truncated
            returns.append(ret)
            successes.append(success)
        evaluation = EvaluationRequest(curriculum=self.args.curriculum, student_id=self.student_id,
                                       env_steps=self.step, episodes=len(returns),
                                       success_rate=float(np.mean(successes)), mean_return=float(np.mean(returns)))
        log.info("evaluation at %d steps: success %.2f, return %.2f", self.step, evaluation.success_rate,
                 evaluation.mean_return)
        if self.writer:
            self.writer.add_scalar("eval/success_rate", evaluation.success_rate, self.step)
            self.writer.add_scalar("eval/mean_return", evaluation.mean_return, self.step)
        self.session.evaluate(evaluation)

    # ------------------------------------------------------------ checkpoints

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.env.action_space.seed(seed)

    def save(self) -> None:
        """Write the checkpoint atomically."""
        state: dict[str, Any] = {
            "env_id": self.args.env, "student_id": self.student_id, "step": self.step, "episode": self.episode,
            "next_eval": self.next_eval, "last_return": self.session.last_return,
            "last_task": self.session.last_task,
            "agent": self.agent.state_dict(), "buffer": self.buffer.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "action_space": self.env.action_space.np_random.bit_generator.state},
        }
        tmp = self.dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.dir / CHECKPOINT)

    def load(self) -> None:
        state = torch.load(self.dir / CHECKPOINT, weights_only=False)
        if state["env_id"] != self.args.env:
            raise ValueError(f"checkpoint is for {state['env_id']}, not {self.args.env}")
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.step, self.episode, self.next_eval = state["step"], state["episode"], state["next_eval"]
        self.next_checkpoint = self.step + self.args.checkpoint_every
        self.session.last_return, self.session.last_task = state["last_return"], state["last_task"]
        self.session.student_id = self.args.student_id or state["student_id"]
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.env.action_space.np_random.bit_generator.state = rng["action_space"]
        # A fresh env stream, reproducible from the seed and the resume point.
        self.env.reset(seed=self.args.seed + self.step)
        log.info("resumed from %s at step %d", self.dir / CHECKPOINT, self.step)

    def request_stop(self, signum: int, frame: Any) -> None:
        log.warning("signal %d: finishing the episode, checkpointing and exiting", signum)
        self.stop_requested = True


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Says a default once: not where the help already says it, nor for options that have none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="student-worker", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--teacher", default=os.environ.get("TEACHER_URL", "http://127.0.0.1:8000"),
                   help="teacher service URL (env TEACHER_URL)")
    p.add_argument("--token", default=None, help="bearer token (default: env TEACHER_TOKEN)")
    p.add_argument("--curriculum", required=True, help="curriculum name on the teacher")
    p.add_argument("--env", required=True, help="environment id, e.g. PointMaze_UMaze-v3")
    p.add_argument("--steps", type=int, required=True, help="total env steps of the run (resumes count)")
    p.add_argument("--seed", type=int, default=0, help="seeds the networks, the env and the evaluations")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="SAC preset (default: by env)")
    p.add_argument("--learning-starts", type=int, default=None, help="override the preset's first update step")
    p.add_argument("--random-steps", type=int, default=None, help="override the preset's random-action steps")
    p.add_argument("--student-id", default=None, help="default: <hostname>-s<seed>, or the checkpoint's")
    p.add_argument("--eval-every", type=int, default=5000, help="env steps between evaluations (0: never)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint, outbox and episode log; resumes from it")
    p.add_argument("--checkpoint-every", type=int, default=10000, help="env steps between checkpoints")
    p.add_argument("--tensorboard", default=None, help="write TensorBoard scalars to this directory")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    p.add_argument("--retry-every", type=float, default=5.0, help="seconds between tries while the teacher is down")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to deliver the outbox at exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console script ``student-worker``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request in worker.log
    torch.set_num_threads(1)
    worker = Worker(args)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        worker.run()
    except TeacherError as exc:  # 4xx on propose: wrong curriculum, token, ...; retrying cannot help
        raise SystemExit(f"student-worker: {exc}") from exc


if __name__ == "__main__":
    main()
