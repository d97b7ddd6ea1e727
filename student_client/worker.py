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
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from student_client.client import TeacherError, TeacherUnavailableError
from student_client.ensemble_worker import EnsembleWorker
from student_client.envs import EnvArgumentsError, TaskMismatchError, family, make_env, same_tasks
from student_client.episode_signals import LocalSignals, agent_signals
from student_client.evaluation import run_episodes, target_options
from student_client.sac.agent import PRESETS, SAC, make_buffer
from student_client.sac.device import resolve_device
from student_client.training import CHECKPOINT, Episode, StudentFiles, StudentSpec, make_client, sac_config
from teacher_service.wire import CurriculumName, Proposal, StudentId

log = logging.getLogger("student_client.worker")


class Worker:
    """One student process; see the module docstring."""

    def __init__(self, args: argparse.Namespace, spec: StudentSpec) -> None:
        self.args = args
        self.seed = spec.seed
        self.env = make_env(args.env, **args.env_kwargs)
        self.eval_env = make_env(args.env, **args.env_kwargs)
        self._seed(spec.seed)  # before the networks are built: their initial weights come from torch's RNG
        self.config = sac_config(args)
        self.agent = SAC(self.env.obs_dim, self.env.act_dim, self.env.action_space.low, self.env.action_space.high,
                         self.config, device=args.device)
        self.buffer = make_buffer(self.config, args.steps, self.env.obs_dim, self.env.act_dim, spec.seed,
                                  device=args.device)
        self.files = StudentFiles(spec, make_client(args), args.retry_every)
        self.session = self.files.session
        self.dir = self.files.dir
        self.step = 0
        self.next_eval = args.eval_every
        self.next_checkpoint = args.checkpoint_every
        self.stop_requested = False
        state = self.files.saved()
        if state:
            self.load(state)

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
            # Asked once at the start (again at the next evaluation if the teacher is down); inside the try, so that an
            # unknown curriculum's 404 still saves, drains and closes.
            self.session.target()
            while self.step < self.args.steps and not self.stop_requested:
                proposal = self.session.propose()
                try:
                    episode = self.run_episode(proposal, bar)
                except TaskMismatchError:  # before any step: the proposal was never trained on
                    if proposal is not None:
                        self.session.release(proposal)
                    raise
                self.finish_episode(proposal, episode)
                rate = (self.step - start_step) / max(time.monotonic() - start_time, 1e-9)
                bar.set_postfix(ret=f"{episode.ret:.2f}", success=int(episode.success), refresh=False)
                if self.files.writer:
                    self.files.writer.add_scalar("perf/steps_per_s", rate, self.step)
                if self.dir and self.step >= self.next_checkpoint:
                    self.save()
                    self.next_checkpoint = self.step + self.args.checkpoint_every
        finally:
            bar.close()
            if self.dir:
                self.save()
            self.session.drain(self.args.drain_timeout, stop=lambda: self.stop_requested)
            self.files.close()

    def run_episode(self, proposal: Proposal | None, bar: tqdm) -> Episode:
        options = proposal.reset_options if proposal else {}
        obs = self.env.reset(options, seed=self.seed if self.files.episodes == 0 and self.step == 0 else None)
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
        grads = self.agent.pop_grad_stats()
        local = agent_signals(self.agent, self.buffer, episode.steps) if grads[0].updates else LocalSignals()
        self.files.report(proposal, episode, grads, local, self.step, self.step >= self.args.steps)

    def evaluate(self) -> None:
        """Deterministic policy on the curriculum's target tasks, or the env's default ones (`evaluation`)."""
        target = self.session.target()
        options = target_options(target, self.args.eval_episodes, self.step // self.args.eval_every)
        # Seeded by the step: the same student evaluates on the same starts and goals, resumed or not.
        ((returns, successes),) = run_episodes(
            [self.eval_env], lambda obs: self.agent.act(obs[0], deterministic=True)[None], [options],
            [self.seed * 1_000_003 + self.step])
        self.files.evaluated(self.step, returns, successes, target is not None)

    # ------------------------------------------------------------ checkpoints

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.env.action_space.seed(seed)

    def save(self) -> None:
        self.files.save(self.files.checkpoint(
            self.args.env, self.step, self.next_eval, self.agent.state_dict(), self.buffer.state_dict(),
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "action_space": self.env.action_space.np_random.bit_generator.state}))

    def load(self, state: dict) -> None:
        self.files.restore(state, self.args.env)
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.step, self.next_eval = state["step"], state["next_eval"]
        self.next_checkpoint = self.step + self.args.checkpoint_every
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.env.action_space.np_random.bit_generator.state = rng["action_space"]
        # A fresh env stream, reproducible from the seed and the resume point.
        self.env.reset(seed=self.seed + self.step)
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


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _wire_value(annotation: Any, what: str):
    """An argparse type that checks a value as the service will (a name it would refuse: a usage error, at once)."""
    adapter = TypeAdapter(annotation)

    def check(text: str) -> str:
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}: {exc.errors()[0]['msg']}") from None

    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``args.students``: one `StudentSpec` per student of the process."""
    p = argparse.ArgumentParser(prog="student-worker", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--teacher", default=os.environ.get("TEACHER_URL", "http://127.0.0.1:8000"),
                   help="teacher service URL (env TEACHER_URL)")
    p.add_argument("--token", default=None, help="bearer token (default: env TEACHER_TOKEN)")
    p.add_argument("--curriculum", required=True, nargs="+", type=_wire_value(CurriculumName, "curriculum name"),
                   help="curriculum name on the teacher: one for all students, or one per student")
    p.add_argument("--env", required=True, help="environment id, e.g. PointMaze_UMaze-v3")
    p.add_argument("--env-kwargs", type=_json_object, default={}, metavar="JSON",
                   help="gym.make keyword arguments of the training and evaluation envs, e.g. "
                        "'{\"continuing_task\": false}'")
    p.add_argument("--steps", type=int, required=True, help="total env steps of the run (resumes count)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the networks, the env and the evaluations (with --students: the first seed; "
                        "default 0)")
    many = p.add_mutually_exclusive_group()
    many.add_argument("--students", type=int, default=1, metavar="K",
                      help="K students in this process, seeds --seed .. --seed+K-1 (ensemble_worker.py)")
    many.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S", help="one student per seed")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="SAC preset (default: by env)")
    p.add_argument("--device", default="cpu", help="torch device of the networks and replay buffers: cpu, cuda")
    p.add_argument("--learning-starts", type=int, default=None, help="override the preset's first update step")
    p.add_argument("--random-steps", type=int, default=None, help="override the preset's random-action steps")
    p.add_argument("--student-id", nargs="+", default=None, type=_wire_value(StudentId, "student id"),
                   help="one per student (default: <hostname>-s<seed>, or the checkpoint's)")
    p.add_argument("--eval-every", type=int, default=5000, help="env steps between evaluations (0: never)")
    p.add_argument("--eval-episodes", type=int, default=10,
                   help="episodes per evaluation, on the curriculum's target tasks if it names them")
    p.add_argument("--checkpoint-dir", nargs="+", default=None,
                   help="checkpoint, outbox and episode log, resumed from: one per student, or one DIR "
                        "(several students: DIR/s<seed> each)")
    p.add_argument("--checkpoint-every", type=int, default=10000, help="env steps between checkpoints")
    p.add_argument("--tensorboard", default=None,
                   help="write TensorBoard scalars to this directory (several students: DIR/s<seed> each)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="HTTP timeout in seconds: a teacher that does not answer holds a call for 3 of them")
    p.add_argument("--retry-every", type=float, default=5.0, help="seconds between tries while the teacher is down")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to deliver the outbox at exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if min(args.students, args.eval_episodes, args.steps, args.checkpoint_every) < 1 or args.eval_every < 0:
        p.error("--students, --eval-episodes, --steps and --checkpoint-every must be at least 1, --eval-every 0 "
                "or more")
    if min(args.timeout, args.retry_every) <= 0 or args.drain_timeout < 0:
        p.error("--timeout and --retry-every must be above 0, --drain-timeout 0 or more")
    try:
        family(args.env)
    except ValueError as exc:
        p.error(f"--env: {exc}")
    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: a name torch does not know
        p.error(f"--device: {exc}")
    if args.seeds and args.seed is not None:
        p.error("--seed and --seeds: give the seeds once, with --seeds")
    first = args.seed or 0
    seeds = args.seeds or list(range(first, first + args.students))
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds must differ: {seeds}")
    if not all(0 <= seed < 2**32 for seed in seeds):  # what numpy and the environments take
        p.error(f"seeds must be 0 to {2**32 - 1}: {seeds}")
    k = len(seeds)

    def per_student(name: str, values: list[str] | None, subdirs: bool = False) -> list[Any]:
        """One value per student: K given, or one for all (``subdirs``: DIR -> DIR/s<seed> each)."""
        if values is None or len(values) == k:
            return values or [None] * k
        if len(values) == 1:
            return [f"{values[0]}/s{seed}" if subdirs else values[0] for seed in seeds]
        p.error(f"--{name}: {len(values)} values for {k} students")

    curricula = per_student("curriculum", args.curriculum)
    ids = per_student("student-id", args.student_id)
    if args.student_id and len(set(ids)) != k:
        p.error(f"--student-id must differ: {ids}")
    dirs = per_student("checkpoint-dir", args.checkpoint_dir, True)
    if args.checkpoint_dir and len({Path(d).resolve() for d in dirs}) != k:  # they would overwrite each other's files
        p.error(f"--checkpoint-dir must differ: {dirs}")
    boards = per_student("tensorboard", args.tensorboard and [args.tensorboard], True)
    args.students = [StudentSpec(seed, curricula[i], ids[i], Path(dirs[i]) if dirs[i] else None, boards[i])
                     for i, seed in enumerate(seeds)]
    return args


def check_environment(args: argparse.Namespace) -> None:
    """Exit unless each curriculum that is a preset has tasks of ``--env`` (envs.same_tasks: the README's
    PointMaze_UMazeDense-v3 student of a PointMaze_UMaze-v3 curriculum is one): a UMaze curriculum's cells, read in
    another maze, trained the student on tasks no one proposed (and rewarded the teacher for them) until one fell on a
    wall. Not checked while the teacher does not answer: the worker then trains on env-default tasks, as in any
    outage."""
    with make_client(args) as client:
        for curriculum in sorted({student.curriculum for student in args.students}):
            try:
                info = client.once().get_curriculum(curriculum)
            except TeacherUnavailableError:
                return
            env_id = getattr(info.task_space, "env_id", None)
            if env_id is not None and not same_tasks(env_id, args.env):
                raise SystemExit(f"student-worker: curriculum {curriculum!r} proposes tasks of {env_id}, not of --env "
                                 f"{args.env}")


def main(argv: list[str] | None = None) -> None:
    """Console script ``student-worker``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request in worker.log
    torch.set_num_threads(1)
    try:
        check_environment(args)
        worker = Worker(args, args.students[0]) if len(args.students) == 1 else EnsembleWorker(args, args.students)
    except TeacherError as exc:  # an unknown curriculum, a wrong token
        raise SystemExit(f"student-worker: {exc}") from exc
    except EnvArgumentsError as exc:
        raise SystemExit(f"student-worker: --env-kwargs: {exc}") from exc
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        worker.run()
    except TeacherError as exc:  # 4xx on propose: wrong curriculum, token, ...; retrying cannot help
        raise SystemExit(f"student-worker: {exc}") from exc
    except TaskMismatchError as exc:  # a curriculum of another environment, not checked at the start (teacher down)
        raise SystemExit(f"student-worker: a proposal does not fit --env {args.env}: {exc}") from exc
    finally:
        # The run is over (finished and saved, stopped, or failed): a stop request has nothing left to stop.
        # Ignored, so that one arriving while the interpreter shuts down (where Python's handler no longer
        # runs) does not turn a finished run's exit 0 into -15.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
