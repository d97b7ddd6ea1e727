"""`acl-experiment`: a grid of curriculum conditions x seeds, run against one local teacher service.

Each (condition, seed) is one student with its own curriculum (seeded with the seed), so teachers
never share students. A condition's seeds train together in `student-worker` processes of up to
--students-per-process students each (one ensemble SAC, seeds as a batch dimension; 1: a process per
student). At most `--parallel` processes run at once, here or on a Ray cluster (--launcher ray).
Evaluations (on the curriculum's target tasks with --target-farthest, else on the environment's default
starts and goals) and the teachers' proposals are read back from the service at the end and written to
CSV, then summarized (stats.py) and plotted (plots.py). `--benchmark far-goal` sets up the far-goal
maze benchmark (README "Does the gradient-norm teacher help?"); explicit flags override its settings.

Resume: a finished student leaves `runs/<name>/done`; a rerun with the same --out skips it. A student
that was stopped (Ctrl-C, SIGTERM, a kill) restarts from its checkpoint (written every
--checkpoint-every steps and on a clean stop) and its teacher from the service's database. The CSVs are
the lasting record: a run with rows in them is finished, even where `runs/` and `service/` are gone (results
committed from another machine), and its rows are kept as they are (not read from the service again). To train
a run again, delete its rows from all three CSVs and its `runs/<name>` directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from teacher_service.launch.experiment import plots, stats
from teacher_service.launch.launcher_cli import add_launcher_args, make_launcher
from teacher_service.launch.launchers import WorkerHandle
from teacher_service.launch.processes import last_episodes, service_settings, start_service, stop
from teacher_service.learning.task_spaces.maze import layout_with_goal
from teacher_service.serving.settings import http_url


@dataclass(frozen=True)
class Condition:
    algorithm: str
    reward_signal: str = "grad_norm_mean"
    params: dict = field(default_factory=dict)


CONDITIONS = {
    "env-default": Condition("env-default"),
    "random": Condition("random"),
    # The paper's teacher settings: trajectories of 5 episodes of one student, an update per trajectory.
    "gradnorm-mean": Condition("gradnorm-reinforce", "grad_norm_mean", {"batch_size": 5, "horizon": 5}),
    "gradnorm-episode": Condition("gradnorm-reinforce", "grad_norm_episode", {"batch_size": 5, "horizon": 5}),
    # The paper's teacher makes ~20 small updates in a 100-episode run and hardly moves; this one can:
    # context-free, each proposal credited with its own episode's gradient norm, a 6x larger step.
    "gradnorm-mean-fast": Condition("gradnorm-reinforce", "grad_norm_mean",
                                    {"lr": 0.03, "horizon": 1, "batch_size": 5, "use_context": False}),
    # The fixed REINFORCE with its defaults (each proposal credited with its own episode), on the paper's
    # reward and on the gradient of the episode's own transitions.
    "reinforce-mean": Condition("gradnorm-reinforce", "grad_norm_mean"),
    "reinforce-local": Condition("gradnorm-reinforce", "grad_norm_local"),
    # Short runs have few episodes: fit the mixture every 20 episodes, not 250.
    "alp-gmm": Condition("alp-gmm", "episode_return", {"fit_rate": 20}),
    "exp3": Condition("exp3", "return_progress"),
    "learnability": Condition("learnability", "success"),
    "plr": Condition("plr", "positive_value_loss"),
}
# Signals whose informativeness about the task each run's summary reports.
INFORMATIVENESS_SIGNALS = ["grad_norm_mean", "grad_norm_episode", "grad_norm_local", "critic_grad_norm_local",
                           "positive_value_loss", "episode_return", "success"]
DEFAULT_CONDITIONS = ["env-default", "random", "gradnorm-mean", "gradnorm-episode"]
# Named setups: defaults for the flags below (explicit flags win).
BENCHMARKS = {
    # Sparse reward, evaluated on the 20 start-goal pairs farthest apart (10 or 11 cells by shortest path);
    # the teachers choose among all 650 pairs. Episodes do not end on success: with SAC's fixed entropy
    # temperature an episode that ends forfeits the entropy bonus (up to alpha log 4 a step), which outweighs
    # the goal's reward of 1, and the sizing pilot (bench/far_goal_pilot.py, README) learned nothing that way.
    # Budget: in the pilot env-default had 0% on the target at 120k steps, a hand-made near-first order 10%.
    # Episodes of 600 steps (the env's own limit for Medium): with 300, students arrived ~25 steps per cell
    # (bench/far_goal_arrival.py), so the 10-11 cell target was out of reach for every condition
    # (results/far-goal-limit300: env-default and random at 0-5% after 500k steps).
    "far-goal": dict(
        env="PointMaze_Medium-v3", env_kwargs={"max_episode_steps": 600},
        target_farthest=20, steps=500_000, eval_every=10_000, eval_episodes=20, threshold=0.5,
        seeds=list(range(10)),
        conditions=["env-default", "random", "gradnorm-mean", "reinforce-mean", "reinforce-local", "learnability",
                    "plr", "alp-gmm"]),
    # The other form: one far goal, (6,5) at the end of a dead end, and the teachers choose the start
    # cell (25 of them); evaluated from the 7 starts farthest from it (10 and 11 cells). env-default students
    # start in any free cell, as the env's own reset does with the goal fixed. Budget: in the pilot
    # (bench/far_goal_pilot.py --goal-cell 6 5, results/far-goal-fixed/pilot) env-default and uniform starts
    # had 0% on the target at 150k steps, a hand-made near-first order 0% to 43% (mean 0.19).
    "far-goal-fixed": dict(
        env="PointMaze_Medium-v3", env_kwargs={"max_episode_steps": 600}, goal_cell=[6, 5],
        target_farthest=7, steps=500_000, eval_every=10_000, eval_episodes=14, threshold=0.5,
        seeds=list(range(10)),
        conditions=["env-default", "random", "gradnorm-mean", "reinforce-mean", "reinforce-local", "learnability",
                    "plr", "alp-gmm"]),
}
# Also summarized below the main threshold, for benchmarks whose baseline rarely reaches it.
LOWER_THRESHOLDS = (0.1, 0.2, 0.3)
# The result CSVs, one row per evaluation, proposal or (run, signal); each row starts with condition, seed.
RESULT_FILES = {"evaluations.csv": stats.CSV_COLUMNS, "proposals.csv": plots.PROPOSAL_COLUMNS,
                "informativeness.csv": stats.INFORMATIVENESS_COLUMNS}
DEFAULT_THRESHOLD = 0.8
# Changing these would mix incomparable runs in one output directory.
FIXED = ("env", "steps", "eval_every", "eval_episodes", "preset", "learning_starts", "random_steps", "params",
         "env_kwargs", "target_farthest", "goal_cell")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="acl-experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=None,
                   help="a named setup: its env, target, budget, threshold, seeds and conditions become the defaults")
    p.add_argument("--env", default="PointMaze_UMazeDense-v3", help="environment id (default: %(default)s)")
    p.add_argument("--env-kwargs", type=_json_object, default={}, metavar="JSON",
                   help='gym.make keyword arguments, e.g. \'{"continuing_task": false}\'')
    p.add_argument("--target-farthest", type=int, default=None, metavar="N",
                   help="evaluate on the N start-goal pairs farthest apart (maze envs; default: the env's own)")
    p.add_argument("--goal-cell", type=int, nargs=2, default=None, metavar=("ROW", "COL"),
                   help="one fixed goal (maze envs): the teachers choose the start cell, env-default students "
                        "get the goal as the env's own (a maze_map with 'g' there, added to --env-kwargs)")
    p.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS, choices=sorted(CONDITIONS),
                   metavar="CONDITION", help=f"teachers to compare, one curriculum per seed each: "
                   f"{', '.join(sorted(CONDITIONS))} (default: {' '.join(DEFAULT_CONDITIONS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="SEED",
                   help="one student per condition and seed, seeded with it (default: 0 1 2 3 4)")
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=2_000, help="env steps between evaluations (default: %(default)s)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default: %(default)s)")
    p.add_argument("--preset", default="small", help="student-worker SAC preset (default: %(default)s)")
    p.add_argument("--learning-starts", type=int, default=None, help="override the preset's first update step")
    p.add_argument("--random-steps", type=int, default=None, help="override the preset's random-action steps")
    p.add_argument("--checkpoint-every", type=int, default=5_000,
                   help="env steps between worker checkpoints (default: %(default)s)")
    p.add_argument("--params", action="append", type=_condition_params, default=[], metavar="CONDITION=JSON",
                   help='teacher parameters over the condition\'s, e.g. gradnorm-mean=\'{"batch_size": 10}\'')
    p.add_argument("--threshold", type=float, default=None,
                   help="evaluation success rate that counts as proficient (default: the one --out's experiment "
                   f"was run with, else the benchmark's, else {DEFAULT_THRESHOLD})")
    p.add_argument("--students-per-process", type=int, default=0, metavar="K",
                   help="students of one condition trained in one process (0: all its seeds; 1: a process each; "
                   "default: %(default)s)")
    p.add_argument("--parallel", type=int, default=None,
                   help="processes at a time (default: the CPUs here, or with Ray the cluster's CPUs / --worker-cpus)")
    p.add_argument("--out", type=Path, required=True, help="output directory; a rerun resumes in it")
    p.add_argument("--analyze-only", action="store_true", help="only redo the summary and plots from the CSVs")
    add_launcher_args(p)
    chosen, _ = p.parse_known_args(argv)
    benchmark = dict(BENCHMARKS.get(chosen.benchmark, {}))
    # Not a default like the others: the experiment's own threshold comes first (below).
    threshold = benchmark.pop("threshold", DEFAULT_THRESHOLD)
    p.set_defaults(**benchmark)
    args = p.parse_args(argv)
    # Checked here, before anything is written: a worker would refuse them only once the grid has started.
    if min(args.steps, args.eval_every, args.eval_episodes, args.checkpoint_every) < 1:
        p.error("--steps, --eval-every, --eval-episodes and --checkpoint-every must be at least 1")
    if min(args.seeds) < 0:
        p.error("--seeds cannot be negative")
    if args.parallel is not None and args.parallel < 1:
        p.error("--parallel must be at least 1")
    if args.students_per_process < 0:
        p.error("--students-per-process must be >= 0")
    if args.threshold is not None and not 0 < args.threshold <= 1:  # a success rate; NaN too
        p.error(f"--threshold is a success rate above 0 and at most 1, not {args.threshold}")
    args.params = dict(args.params)
    if args.goal_cell is not None:
        if "maze_map" in args.env_kwargs:
            p.error("--goal-cell sets the env's maze_map: leave maze_map out of --env-kwargs")
        try:
            args.env_kwargs = {**args.env_kwargs, "maze_map": layout_with_goal(args.env, args.goal_cell)}
        except ValueError as exc:  # not a maze, or not a free cell of it
            p.error(f"--goal-cell: {exc}")
    # One run per (condition, seed): a repeated one would run twice on one checkpoint directory.
    args.conditions, args.seeds = list(dict.fromkeys(args.conditions)), list(dict.fromkeys(args.seeds))
    if args.threshold is None:  # a rerun or --analyze-only summarizes as the experiment was run
        args.threshold = stored_config(args.out).get("threshold", threshold)
    return args


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {text} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text}")
    return value


def _condition_params(item: str) -> tuple[str, dict]:
    name, _, text = item.partition("=")
    if name not in CONDITIONS:
        raise argparse.ArgumentTypeError(f"unknown condition {name!r}")
    return name, _json_object(text)


def error_detail(response: httpx.Response) -> str:
    """The service's reason for a 4xx: its message, or the messages of a validation error's items."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text
    if not isinstance(detail, list):
        return str(detail)
    return "; ".join(f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}" if isinstance(item, dict)
                     else str(item) for item in detail)


def run_name(condition: str, seed: int) -> str:
    return f"{condition}-s{seed}"


def resume_step(run_dir: Path) -> int:
    """The step a student resumes from: its newest checkpoint's (student_client.training), 0 without one."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # the previous one alone: killed while replacing it
        if (run_dir / name).exists():
            import torch  # only to resume: the rest of acl-experiment does without it

            # mmap: the step without reading the replay buffer
            return torch.load(run_dir / name, mmap=True, weights_only=False, map_location="cpu")["step"]
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Experiment:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out.resolve()
        self.service_dir = self.out / "service"
        self.settings, self.tokens = service_settings("acl-experiment", data_dir=self.service_dir, port=free_port(),
                                                      host=args.service_host or "127.0.0.1")
        self.url = http_url(self.settings.host, self.settings.port)
        self.runs_dir = (args.shared_dir or args.out).resolve() / "runs"
        self.launcher = make_launcher(args, "acl-experiment", self.url)
        self.parallel = args.parallel or self.launcher.capacity()
        self.service: subprocess.Popen | None = None
        self.workers: list[WorkerHandle] = []
        self.runs = [(c, s) for c in args.conditions for s in args.seeds]  # grid order, for the outputs
        self.earlier = collected_rows(self.out)
        self.read = {}  # rows of the runs finished in this sitting, read from the service once

    # ------------------------------------------------------------ service

    def headers(self, admin: bool = False) -> dict[str, str]:
        token = self.tokens.admin if admin else self.tokens.student
        return {"Authorization": f"Bearer {token}"} if token else {}

    def start_service(self) -> None:
        self.service = start_service(
            ["--data-dir", str(self.service_dir), "--host", self.settings.host, "--port", str(self.settings.port)],
            self.url, self.service_dir / "service.log", "acl-experiment", {**os.environ, "TEACHER_LOG_LEVEL": "warning"},
        )

    def create_curricula(self) -> None:
        registered = httpx.get(f"{self.url}/teachers", headers=self.headers(), timeout=30).json()
        for condition, seed in self.runs:
            if (condition, seed) in self.earlier:
                continue  # finished: nothing will train or read it
            spec = CONDITIONS[condition]
            if spec.algorithm not in registered:
                raise SystemExit(f"acl-experiment: teacher {spec.algorithm!r} ({condition}) is not registered "
                                 f"in this service; it has {', '.join(registered)}")
            task_space = {"kind": "preset", "env_id": self.args.env}
            if self.args.goal_cell is not None:
                task_space["goal_cell"] = self.args.goal_cell
            body = {"name": run_name(condition, seed), "task_space": task_space,
                    "teacher": {"algorithm": spec.algorithm,
                                "params": {**spec.params, **self.args.params.get(condition, {})}},
                    "reward_signal": spec.reward_signal, "seed": seed}
            if self.args.target_farthest is not None:
                body["target"] = {"farthest": self.args.target_farthest}
            r = httpx.post(f"{self.url}/curricula", json=body, headers=self.headers(admin=True), timeout=60)
            if r.status_code == 409:  # a resumed experiment: it must be the same curriculum
                have = httpx.get(f"{self.url}/curricula/{body['name']}", headers=self.headers(), timeout=30).json()
                if (any(have[k] != body[k] for k in ("teacher", "reward_signal", "seed"))
                        or have["task_space"].get("goal_cell") != self.args.goal_cell
                        or (have.get("target") or {}).get("farthest") != self.args.target_farthest):
                    raise SystemExit(f"acl-experiment: curriculum {body['name']} exists with another teacher, "
                                     "goal cell or target; use another --out")
            elif r.is_client_error:  # e.g. more target pairs than the task space has: say why, not a traceback
                raise SystemExit(f"acl-experiment: the service refused curriculum {body['name']}: {error_detail(r)}")
            else:
                r.raise_for_status()

    # ------------------------------------------------------------ workers

    def run_dir(self, condition: str, seed: int) -> Path:
        return self.runs_dir / run_name(condition, seed)

    def groups(self, pending: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
        """The students each process trains: a condition's pending seeds that resume from the same step (the
        students of a process train in lockstep), --students-per-process at a time."""
        k = self.args.students_per_process
        groups = []
        for condition in self.args.conditions:
            by_step: dict[int, list[tuple[str, int]]] = {}
            for run in pending:
                if run[0] == condition:
                    by_step.setdefault(resume_step(self.run_dir(*run)), []).append(run)
            for members in by_step.values():
                size = k or len(members)
                groups += [members[i:i + size] for i in range(0, len(members), size)]
        # Seed by seed (first seeds first), so that a partial grid already compares every condition.
        return sorted(groups, key=lambda group: self.args.seeds.index(group[0][1]))

    def start_worker(self, group: list[tuple[str, int]]) -> WorkerHandle:
        """One student-worker process for these (condition, seed) students; its log is in the first one's dir."""
        for run in group:
            self.run_dir(*run).mkdir(parents=True, exist_ok=True)
        a = self.args
        names = [run_name(*run) for run in group]
        if len(group) == 1:
            members = ["--seed", str(group[0][1]), "--curriculum", names[0], "--student-id", names[0],
                       "--checkpoint-dir", str(self.run_dir(*group[0]))]
        else:
            members = ["--seeds", *(str(seed) for _, seed in group), "--curriculum", *names, "--student-id", *names,
                       "--checkpoint-dir", *(str(self.run_dir(*run)) for run in group)]
        cmd = ["--teacher", self.url, *members,
               "--env", a.env, "--steps", str(a.steps), "--preset", a.preset,
               "--eval-every", str(a.eval_every), "--eval-episodes", str(a.eval_episodes),
               "--checkpoint-every", str(a.checkpoint_every), "--no-progress"]
        if a.env_kwargs:
            cmd += ["--env-kwargs", json.dumps(a.env_kwargs)]
        for flag in ("learning_starts", "random_steps"):
            if getattr(a, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
        env = {"OMP_NUM_THREADS": "1"}
        if self.tokens.student:
            env["TEACHER_TOKEN"] = self.tokens.student
        proc = self.launcher.start(cmd, self.run_dir(*group[0]), env)
        self.workers.append(proc)
        return proc

    def steps_done(self, condition: str, seed: int) -> int:
        _, recent = last_episodes(self.run_dir(condition, seed) / "episodes.jsonl", n=1)
        return recent[-1]["step"] if recent else 0

    def run_all(self, console: Console) -> list[str]:
        """Train every unfinished student; the names of those that failed."""
        pending = [run for run in self.runs if not self.finished(*run) and run not in self.earlier]
        if len(pending) < len(self.runs):
            console.print(f"Resuming: {len(self.runs) - len(pending)} of {len(self.runs)} students already done")
        queue = deque(self.groups(pending))
        running: dict[WorkerHandle, tuple[list[tuple[str, int]], object]] = {}
        failed = []
        steps = self.args.steps
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            total = progress.add_task("all students (steps)", total=len(self.runs) * steps,
                                      completed=(len(self.runs) - len(pending)) * steps)
            while queue or running:
                while queue and len(running) < self.parallel:
                    group = queue.popleft()
                    label = run_name(*group[0]) + (f" +{len(group) - 1}" if len(group) > 1 else "")
                    task = progress.add_task(label, total=len(group) * steps,
                                             completed=sum(self.steps_done(*run) for run in group))
                    running[self.start_worker(group)] = (group, task)
                time.sleep(1)
                for proc, (group, task) in list(running.items()):
                    progress.update(task, completed=sum(self.steps_done(*run) for run in group))
                    if proc.poll() is None:
                        continue
                    del running[proc]
                    progress.remove_task(task)
                    for run in group:
                        if proc.returncode == 0 and self.steps_done(*run) >= steps:
                            (self.run_dir(*run) / "done").touch()
                        else:
                            failed.append(run_name(*run))
                    if proc.returncode != 0:
                        console.print(f"[red]{', '.join(run_name(*run) for run in group)} failed "
                                      f"({proc.returncode}); see {self.run_dir(*group[0]) / 'worker.log'}")
                    else:  # results as runs finish, not only when the whole grid has (grids span sittings)
                        self.collect()
                        analyze(self.out, self.args.threshold, console)
                done = (len(self.runs) - len(pending) + sum(self.finished(*r) for r in pending)) * steps
                progress.update(total, completed=done + sum(self.steps_done(*r) for g, _ in running.values()
                                                            for r in g))
        return failed

    # ------------------------------------------------------------ read back

    def pages(self, name: str, what: str) -> list[dict]:
        items, after = [], None
        while True:
            params = {"limit": 10_000, **({"after": after} if after is not None else {})}
            r = httpx.get(f"{self.url}/curricula/{name}/{what}", params=params, headers=self.headers(), timeout=60)
            r.raise_for_status()
            page = r.json()
            items += page["items"]
            after = page["next_after"]
            if after is None:
                return items

    def finished(self, condition: str, seed: int) -> bool:
        return (self.run_dir(condition, seed) / "done").exists()

    def collect(self) -> None:
        """Write the result CSVs: the rows of the runs collected in an earlier sitting as they were, in their
        order, then those of the runs finished since, read back from the service, in grid order. Each file
        is replaced whole (written beside it, then renamed), so a stop while writing loses nothing."""
        new = [run for run in self.runs if run not in self.earlier and self.finished(*run)]
        for run in new:
            if run not in self.read:
                self.read[run] = self.read_back(*run)
        rows = [*self.earlier.values(), *(self.read[run] for run in new)]
        for name, columns in RESULT_FILES.items():
            partial = self.out / f"{name}.partial"
            with open(partial, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                for run_rows in rows:
                    writer.writerows(run_rows.get(name, []))
            os.replace(partial, self.out / name)

    def read_back(self, condition: str, seed: int) -> dict[str, list[list]]:
        """One finished run's rows of each result CSV, from the service."""
        name = run_name(condition, seed)
        # A run resumed from a checkpoint evaluates some steps again: keep the last of each step. With a
        # target, a student evaluates on it only (evaluations while the service was down, on the env's
        # default tasks, are left out).
        on_target = self.args.target_farthest is not None
        by_step = {e["env_steps"]: e for e in self.pages(name, "evaluations") if e.get("on_target", False) == on_target}
        evaluations = [[condition, seed, step, by_step[step]["success_rate"], by_step[step]["mean_return"]]
                       for step in sorted(by_step)]
        proposals, step = [], 0
        for item in self.pages(name, "history"):
            if item["signals"] is None:  # proposed but never reported (a killed episode)
                continue
            step += item["signals"]["env_steps"] or 0
            if item["task_values"] is not None:
                proposals.append([condition, seed, step, json.dumps(item["task_values"])])
        r = httpx.get(f"{self.url}/curricula/{name}/informativeness", params={"signal": INFORMATIVENESS_SIGNALS},
                      headers=self.headers(), timeout=120)
        r.raise_for_status()
        informativeness = [[condition, seed, signal, figures["reports"], figures["tasks"],
                            *("" if figures[k] is None else figures[k] for k in ("r2", "adjusted_r2", "p_value"))]
                           for signal, figures in r.json()["signals"].items()]
        return {"evaluations.csv": evaluations, "proposals.csv": proposals, "informativeness.csv": informativeness}

    # ------------------------------------------------------------ all of it

    def check_config(self) -> None:
        """Refuse an output directory that holds an experiment with other settings."""
        stored = stored_config(self.out)
        if stored:
            # Files written before a key existed hold its default.
            stored = {"env_kwargs": {}, "target_farthest": None, "goal_cell": None, **stored}
            changed = [k for k in FIXED if stored.get(k) != self.config()[k]]
            if changed:
                raise SystemExit(f"acl-experiment: {self.out} holds an experiment with other {', '.join(changed)}; "
                                 "use another --out")

    def config(self) -> dict:
        # The threshold too (not fixed: any can be asked for), for a rerun and --analyze-only to summarize at it.
        return {k: v for k, v in vars(self.args).items() if k in FIXED or k == "threshold"}

    def run(self) -> int:
        console = Console()
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_config()
        failed = []
        try:
            self.start_service()  # in the try: a Ctrl-C while it starts stops it too
            self.create_curricula()
            # Written once the service has accepted every curriculum: a refused setting can be fixed and rerun.
            (self.out / "experiment.json").write_text(json.dumps(self.config(), indent=2) + "\n")
            per_process = self.args.students_per_process or len(self.args.seeds)
            console.print(f"{len(self.runs)} students ({len(self.args.conditions)} conditions x "
                          f"{len(self.args.seeds)} seeds) of {self.args.steps} steps on {self.args.env}, up to "
                          f"{per_process} a process, {self.parallel} processes at a time ({self.args.launcher}); "
                          f"service {self.url}, output {self.out}")
            failed = self.run_all(console)
            self.collect()  # again: runs finished in an earlier sitting are collected even if none ran now
        except KeyboardInterrupt:
            console.print("Stopped; run the same command again to continue.")
            return 130
        finally:
            # Students first (each ends its episode, reports it and checkpoints), then the service.
            # Ctrl-C is ignored meanwhile, then restored: an ignored SIGINT would be inherited by every
            # process started later from this one (main() also runs in-process, in the tests).
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self.launcher.stop(self.workers, timeout=120)
                stop([self.service] if self.service else [], timeout=30)
                self.launcher.close()
            finally:
                signal.signal(signal.SIGINT, previous)
        analyze(self.out, self.args.threshold, console)
        return 1 if failed else 0


def stored_config(out: Path) -> dict:
    """The settings in out/experiment.json, {} without one."""
    path = out / "experiment.json"
    return json.loads(path.read_text()) if path.exists() else {}


def collected_rows(out: Path) -> dict[tuple[str, int], dict[str, list[list[str]]]]:
    """{(condition, seed): {csv name: rows}} of the runs already in the result CSVs in `out`, in file order."""
    runs: dict[tuple[str, int], dict[str, list[list[str]]]] = {}
    for name, columns in RESULT_FILES.items():
        if not (out / name).exists():
            continue
        with open(out / name, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is not None and tuple(header) != tuple(columns):
                raise SystemExit(f"acl-experiment: {out / name} has the columns {', '.join(header)}, this version "
                                 f"writes {', '.join(columns)}; use another --out")
            for row in reader:
                if row:
                    runs.setdefault((row[0], int(row[1])), {}).setdefault(name, []).append(row)
    return runs


def analyze(out: Path, threshold: float, console: Console) -> None:
    """summary.md, summary.json and the plots from the CSVs, for the config in experiment.json."""
    config = json.loads((out / "experiment.json").read_text())
    curves = stats.read_curves(out / "evaluations.csv")
    if not curves:
        console.print("No finished run has evaluations yet; nothing to summarize.")
        return
    summaries = stats.summarize(curves, threshold, config["steps"])
    seeds = sorted({seed for runs in curves.values() for seed in runs})
    goal = config.get("goal_cell")
    kwargs = {k: v for k, v in config.get("env_kwargs", {}).items() if not (goal and k == "maze_map")}
    env = config["env"] + (f" {json.dumps(kwargs)}" if kwargs else "") + (f", goal fixed at {tuple(goal)}" if goal else "")
    on = (f"the {config['target_farthest']} start cells farthest from the goal" if goal and config.get("target_farthest")
          else f"the {config['target_farthest']} start-goal pairs farthest apart" if config.get("target_farthest")
          else "the environment's default starts and goals")
    header = (f"# {env}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {config['steps']} env steps "
              f"per run, evaluation on {on} every {config['eval_every']} steps ({config['eval_episodes']} episodes), "
              f"SAC preset {config['preset']}\n\n")
    horizon = stats.common_horizon(curves)
    if horizon < config["steps"]:  # runs continued past others (results/far-goal-fixed-1m), or one cut short
        header += (f"AUC and final success are taken up to step {horizon:.0f}, the last evaluation every run has; "
                   "steps to threshold over each run's whole curve.\n\n")
    text = header + stats.markdown_table(summaries, threshold, config["steps"])
    lower = [t for t in LOWER_THRESHOLDS if t < threshold]
    if lower:
        text += f"\n## Lower thresholds\n\n{stats.thresholds_table(curves, lower, config['steps'])}"
    if (out / "informativeness.csv").exists():
        text += "\n## How informative is each signal about the task?\n\n"
        text += stats.informativeness_table(out / "informativeness.csv")
    (out / "summary.md").write_text(text)
    records = stats.summary_records(summaries, threshold, config["steps"])
    (out / "summary.json").write_text(json.dumps(records, indent=2) + "\n")
    console.print(text)
    plots.learning_curves(curves, out / "learning_curves.png", threshold, on)
    plots.teacher_proposals(curves, out / "proposals.csv", config["env"], out / "teacher_proposals.png")
    written = ["summary.md", "summary.json", "learning_curves.png", "teacher_proposals.png"]
    if config["env"].startswith(("PointMaze_", "AntMaze_")):
        plots.proposal_heatmaps(out / "proposals.csv", config["env"], config["steps"], out / "proposal_heatmaps.png")
        written.append("proposal_heatmaps.png")
    console.print(f"Wrote {out / 'evaluations.csv'}, {', '.join(written)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.analyze_only:
        if not (args.out / "experiment.json").exists():
            raise SystemExit(f"acl-experiment: {args.out} holds no experiment (no experiment.json) to analyze")
        analyze(args.out, args.threshold, Console())
        return
    experiment = Experiment(args)

    def terminate(signum, frame):
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored (see launch/run.py)
    sys.exit(experiment.run())


if __name__ == "__main__":
    main()
