"""What the single-student worker (``worker.py``) and the ensemble worker (``ensemble_worker.py``) share:
a student's identity and files, an episode's measures, its report and log, evaluations, checkpoint files."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from student_client.client import TeacherClient
from student_client.episode_signals import LocalSignals
from student_client.evaluation import evaluation_request
from student_client.probes import GradStats
from student_client.sac.agent import PRESETS, SACConfig, preset_for_env
from student_client.session import TeacherSession, reportable
from teacher_service.wire import MAX_MAGNITUDE, RUN_FINISHED, Proposal, Signals

log = logging.getLogger("student_client.worker")
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def sac_config(args: argparse.Namespace) -> SACConfig:
    """The preset (by env unless named) with the command line's overrides."""
    config = PRESETS[args.preset or preset_for_env(args.env)]()
    overrides = {k: getattr(args, k) for k in ("learning_starts", "random_steps") if getattr(args, k) is not None}
    return replace(config, **overrides)


def make_client(args: argparse.Namespace) -> TeacherClient:
    """One client for the process's students."""
    try:
        return TeacherClient(args.teacher, args.token, timeout_s=args.timeout, attempts=3, max_backoff_s=1.0)
    except ValueError as exc:  # a URL or token that can never work: the reason, not a traceback
        raise SystemExit(f"student-worker: {exc}") from None


@dataclass(frozen=True)
class StudentSpec:
    """One student of a worker process; ``student_id`` None: the checkpoint's, else <hostname>-s<seed>."""

    seed: int
    curriculum: str
    student_id: str | None = None
    checkpoint_dir: Path | None = None
    tensorboard: str | None = None

    def default_id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.:@\-]", "-", f"{socket.gethostname()}-s{self.seed}")


@dataclass
class Episode:
    """What one episode measured."""

    steps: int = 0
    ret: float = 0.0
    success: bool = False
    ended: bool = False  # by the environment (terminated or truncated), not cut by a stop or the step budget


class StudentFiles:
    """A student's session with its teacher (outbox in its checkpoint dir), episode log and TensorBoard scalars."""

    def __init__(self, spec: StudentSpec, client: TeacherClient, retry_every: float) -> None:
        self.spec = spec
        self.dir = spec.checkpoint_dir
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.session = TeacherSession(client, spec.curriculum, spec.student_id or spec.default_id(),
                                      self.dir / "outbox.json" if self.dir else None, retry_every)
        self.episodes = 0  # episodes finished, resumes included
        self.writer = None
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(spec.tensorboard)

    def report(self, proposal: Proposal | None, episode: Episode, grads: tuple[GradStats, GradStats],
               local: LocalSignals, step: int, run_finished: bool, deliver: bool = True) -> None:
        """Report an episode's signals under its own proposal id (``deliver=False``: queue it) and log them."""
        actor, critic = grads
        signals = reportable(
            Signals, self.session.student_id, grad_norm_mean=actor.mean, grad_norm_episode=actor.episode,
            critic_grad_norm_mean=critic.mean, critic_grad_norm_episode=critic.episode, **local.as_dict(),
            episode_return=episode.ret, success=episode.success, env_steps=episode.steps, grad_updates=actor.updates,
            # The run's last episode says so: the dashboard shows the student finished, not active.
            extra={RUN_FINISHED: 1.0} if run_finished else {},
        )
        # An episode cut by a stop signal or by the end of the run is marked: it rewards no teacher.
        outcome = "completed" if episode.ended else "stopped"
        if episode.ended:
            self.session.ended(proposal, episode.ret)
        self.session.finish(proposal, signals, outcome, deliver=deliver)
        self.episodes += 1
        record = {"episode": self.episodes, "step": step, "outcome": outcome,
                  "proposal_id": proposal.proposal_id if proposal else None,
                  **signals.model_dump(exclude={"extra"})}
        if self.dir:
            with open(self.dir / "episodes.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in record.items():
                if key not in ("episode", "step", "outcome", "proposal_id") and value is not None:
                    self.writer.add_scalar(f"episode/{key}", float(value), step)

    def evaluated(self, step: int, returns: list[float], successes: list[bool], on_target: bool) -> None:
        """Post (through the outbox) and log an evaluation; one whose mean return cannot be sent (a diverged policy's:
        NaN, infinite, beyond the schema's magnitude; the wire requires it) is logged and skipped, not fatal to the run."""
        mean_return = float(np.mean(returns))
        if not (math.isfinite(mean_return) and abs(mean_return) <= MAX_MAGNITUDE):
            log.warning("%s: evaluation at %d steps not posted: its mean return %r cannot be sent (success rate %.2f)",
                        self.session.student_id, step, mean_return, float(np.mean(successes)))
            return
        evaluation = evaluation_request(self.session, step, returns, successes, on_target)
        log.info("%s: evaluation at %d steps%s: success %.2f, return %.2f", self.session.student_id, step,
                 " on the target" if on_target else "", evaluation.success_rate, evaluation.mean_return)
        if self.writer:
            self.writer.add_scalar("eval/success_rate", evaluation.success_rate, step)
            self.writer.add_scalar("eval/mean_return", evaluation.mean_return, step)
        self.session.evaluate(evaluation)

    def checkpoint(self, env_id: str, step: int, next_eval: int, agent: dict, buffer: dict, rng: dict) -> dict:
        """The checkpoint of this student (the same for a single student and an ensemble's member)."""
        return {"env_id": env_id, "student_id": self.session.student_id, "step": step, "episode": self.episodes,
                "next_eval": next_eval, "last_return": self.session.last_return,
                "last_task": self.session.last_task, "agent": agent, "buffer": buffer, "rng": rng}

    def save(self, state: dict, keep_previous: bool = False) -> None:
        """Write the checkpoint atomically; ``keep_previous``: the one it replaces becomes PREVIOUS (an
        ensemble member's: a kill while the members are written one by one leaves a step they all have)."""
        tmp = self.dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        if keep_previous and (self.dir / CHECKPOINT).exists():
            os.replace(self.dir / CHECKPOINT, self.dir / PREVIOUS)
        os.replace(tmp, self.dir / CHECKPOINT)

    def saved_all(self) -> list[dict]:
        """The saved checkpoints, newest first: CHECKPOINT, PREVIOUS (either may be missing)."""
        return [torch.load(path, weights_only=False) for path in self._saved_paths()]

    def saved(self) -> dict | None:
        """The newest saved checkpoint, or None."""
        paths = self._saved_paths()
        return torch.load(paths[0], weights_only=False) if paths else None

    def _saved_paths(self) -> list[Path]:
        paths = [self.dir / name for name in (CHECKPOINT, PREVIOUS)] if self.dir else []
        return [path for path in paths if path.exists()]

    def roll_back(self) -> None:
        """PREVIOUS becomes the checkpoint: resumed from it, the newer one is of a run that will not be."""
        os.replace(self.dir / PREVIOUS, self.dir / CHECKPOINT)

    def restore(self, state: dict, env_id: str) -> None:
        """The counters and teacher context of a saved checkpoint (the caller restores networks and buffers)."""
        if state["env_id"] != env_id:
            raise ValueError(f"checkpoint is for {state['env_id']}, not {env_id}")
        self.episodes = state["episode"]
        self.session.last_return, self.session.last_task = state["last_return"], state["last_task"]
        self.session.student_id = self.spec.student_id or state["student_id"]

    def close(self) -> None:
        if self.writer:
            self.writer.close()
