"""`acl-experiment`: a grid of curriculum conditions x seeds, run against one local teacher service.

Each (condition, seed) gets its own curriculum (seeded with the seed) and one `student-worker`
process (seeded with the seed), so teachers never share students. At most `--parallel` workers run
at once, here or on a Ray cluster (--launcher ray). Evaluations (the worker's own, on the environment's default starts and goals) and the
teachers' proposals are read back from the service at the end and written to CSV, then summarized
(stats.py) and plotted (plots.py).

Resume: a finished run leaves `runs/<name>/done`; a rerun with the same --out skips it. A run that
was stopped (Ctrl-C, SIGTERM, a kill) restarts from its worker checkpoint (written every
--checkpoint-every steps and on a clean stop) and its teacher from the service's database.
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
from teacher_service.launch.processes import last_episodes, start_service, stop
from teacher_service.serving.infra.auth import load_tokens
from teacher_service.serving.settings import Settings


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
# Changing these would mix incomparable runs in one output directory.
FIXED = ("env", "steps", "eval_every", "eval_episodes", "preset", "learning_starts", "random_steps", "params")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="acl-experiment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="PointMaze_UMazeDense-v3")
    p.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS, choices=sorted(CONDITIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    p.add_argument("--eval-every", type=int, default=2_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--preset", default="small", help="student-worker SAC preset")
    p.add_argument("--learning-starts", type=int, default=None, help="override the preset's first update step")
    p.add_argument("--random-steps", type=int, default=None, help="override the preset's random-action steps")
    p.add_argument("--checkpoint-every", type=int, default=5_000, help="env steps between worker checkpoints")
    p.add_argument("--params", action="append", default=[], metavar="CONDITION=JSON",
                   help='teacher parameters over the condition\'s, e.g. gradnorm-mean=\'{"batch_size": 10}\'')
    p.add_argument("--threshold", type=float, default=0.8, help="evaluation success rate that counts as proficient")
    p.add_argument("--parallel", type=int, default=None,
                   help="workers at a time (default: the CPUs here, or with Ray the cluster's CPUs / --worker-cpus)")
    p.add_argument("--out", type=Path, required=True, help="output directory; a rerun resumes in it")
    p.add_argument("--analyze-only", action="store_true", help="only redo the summary and plots from the CSVs")
    add_launcher_args(p)
    args = p.parse_args(argv)
    args.params = dict(_parse_params(item) for item in args.params)
    # One run per (condition, seed): a repeated one would run twice on one checkpoint directory.
    args.conditions, args.seeds = list(dict.fromkeys(args.conditions)), list(dict.fromkeys(args.seeds))
    return args


def _parse_params(item: str) -> tuple[str, dict]:
    name, _, text = item.partition("=")
    if name not in CONDITIONS:
        raise SystemExit(f"acl-experiment: --params for unknown condition {name!r}")
    return name, json.loads(text)


def run_name(condition: str, seed: int) -> str:
    return f"{condition}-s{seed}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Experiment:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out.resolve()
        self.service_dir = self.out / "service"
        self.settings = Settings(data_dir=self.service_dir, port=free_port(), host=args.service_host or "127.0.0.1")
        self.url = f"http://{self.settings.host}:{self.settings.port}"
        self.runs_dir = (args.shared_dir or args.out).resolve() / "runs"
        self.launcher = make_launcher(args, "acl-experiment", self.url)
        self.parallel = args.parallel or self.launcher.capacity()
        self.tokens = load_tokens(self.settings)
        self.service: subprocess.Popen | None = None
        self.workers: list[WorkerHandle] = []
        self.runs = [(c, s) for c in args.conditions for s in args.seeds]  # grid order, for the outputs

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
            spec = CONDITIONS[condition]
            if spec.algorithm not in registered:
                raise SystemExit(f"acl-experiment: teacher {spec.algorithm!r} ({condition}) is not registered "
                                 f"in this service; it has {', '.join(registered)}")
            body = {"name": run_name(condition, seed),
                    "task_space": {"kind": "preset", "env_id": self.args.env},
                    "teacher": {"algorithm": spec.algorithm,
                                "params": {**spec.params, **self.args.params.get(condition, {})}},
                    "reward_signal": spec.reward_signal, "seed": seed}
            r = httpx.post(f"{self.url}/curricula", json=body, headers=self.headers(admin=True), timeout=60)
            if r.status_code == 409:  # a resumed experiment: it must be the same curriculum
                have = httpx.get(f"{self.url}/curricula/{body['name']}", headers=self.headers(), timeout=30).json()
                if any(have[k] != body[k] for k in ("teacher", "reward_signal", "seed")):
                    raise SystemExit(f"acl-experiment: curriculum {body['name']} exists with another teacher; "
                                     "use another --out")
            else:
                r.raise_for_status()

    # ------------------------------------------------------------ workers

    def run_dir(self, condition: str, seed: int) -> Path:
        return self.runs_dir / run_name(condition, seed)

    def start_worker(self, condition: str, seed: int) -> WorkerHandle:
        workdir = self.run_dir(condition, seed)
        workdir.mkdir(parents=True, exist_ok=True)
        a = self.args
        cmd = ["--teacher", self.url,
               "--curriculum", run_name(condition, seed), "--student-id", run_name(condition, seed),
               "--env", a.env, "--steps", str(a.steps), "--seed", str(seed), "--preset", a.preset,
               "--eval-every", str(a.eval_every), "--eval-episodes", str(a.eval_episodes),
               "--checkpoint-dir", str(workdir), "--checkpoint-every", str(a.checkpoint_every), "--no-progress"]
        for flag in ("learning_starts", "random_steps"):
            if getattr(a, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
        env = {"OMP_NUM_THREADS": "1"}
        if self.tokens.student:
            env["TEACHER_TOKEN"] = self.tokens.student
        proc = self.launcher.start(cmd, workdir, env)
        self.workers.append(proc)
        return proc

    def steps_done(self, condition: str, seed: int) -> int:
        _, recent = last_episodes(self.run_dir(condition, seed) / "episodes.jsonl", n=1)
        return recent[-1]["step"] if recent else 0

    def run_all(self, console: Console) -> list[str]:
        """Run every unfinished (condition, seed); the names of the runs that failed."""
        # Seed by seed, so that a partial run already compares every condition.
        pending = deque(sorted((run for run in self.runs if not (self.run_dir(*run) / "done").exists()),
                               key=lambda run: self.args.seeds.index(run[1])))
        if len(pending) < len(self.runs):
            console.print(f"Resuming: {len(self.runs) - len(pending)} of {len(self.runs)} runs already done")
        running: dict[tuple[str, int], tuple[WorkerHandle, int]] = {}
        failed = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            total = progress.add_task("all runs (steps)", total=len(self.runs) * self.args.steps,
                                      completed=(len(self.runs) - len(pending)) * self.args.steps)
            while pending or running:
                while pending and len(running) < self.parallel:
                    run = pending.popleft()
                    task = progress.add_task(run_name(*run), total=self.args.steps, completed=self.steps_done(*run))
                    running[run] = (self.start_worker(*run), task)
                time.sleep(1)
                for run, (proc, task) in list(running.items()):
                    progress.update(task, completed=self.steps_done(*run))
                    if proc.poll() is None:
                        continue
                    del running[run]
                    progress.remove_task(task)
                    if proc.returncode == 0 and self.steps_done(*run) >= self.args.steps:
                        (self.run_dir(*run) / "done").touch()
                    else:
                        failed.append(run_name(*run))
                        console.print(f"[red]{run_name(*run)} failed ({proc.returncode}); "
                                      f"see {self.run_dir(*run) / 'worker.log'}")
                done = sum((self.run_dir(*r) / "done").exists() for r in self.runs) * self.args.steps
                progress.update(total, completed=done + sum(self.steps_done(*r) for r in running))
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

    def collect(self) -> None:
        """Write evaluations.csv and proposals.csv for the finished runs, in grid order."""
        done = [run for run in self.runs if (self.run_dir(*run) / "done").exists()]
        with open(self.out / "evaluations.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(stats.CSV_COLUMNS)
            for condition, seed in done:
                # A run resumed from a checkpoint evaluates some steps again: keep the last of each step.
                by_step = {e["env_steps"]: e for e in self.pages(run_name(condition, seed), "evaluations")}
                for step in sorted(by_step):
                    writer.writerow([condition, seed, step, by_step[step]["success_rate"],
                                     by_step[step]["mean_return"]])
        with open(self.out / "proposals.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(plots.PROPOSAL_COLUMNS)
            for condition, seed in done:
                step = 0
                for item in self.pages(run_name(condition, seed), "history"):
                    if item["signals"] is None:  # proposed but never reported (a killed episode)
                        continue
                    step += item["signals"]["env_steps"] or 0
                    if item["task_values"] is not None:
                        writer.writerow([condition, seed, step, json.dumps(item["task_values"])])
        with open(self.out / "informativeness.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(stats.INFORMATIVENESS_COLUMNS)
            for condition, seed in done:
                r = httpx.get(f"{self.url}/curricula/{run_name(condition, seed)}/informativeness",
                              params={"signal": INFORMATIVENESS_SIGNALS}, headers=self.headers(), timeout=120)
                r.raise_for_status()
                for signal, figures in r.json()["signals"].items():
                    writer.writerow([condition, seed, signal, figures["reports"], figures["tasks"],
                                     *("" if figures[k] is None else figures[k] for k in ("r2", "adjusted_r2", "p_value"))])

    # ------------------------------------------------------------ all of it

    def check_config(self) -> None:
        path = self.out / "experiment.json"
        config = {k: v for k, v in vars(self.args).items() if k in FIXED}
        if path.exists():
            stored = json.loads(path.read_text())
            changed = [k for k in FIXED if stored.get(k) != config[k]]
            if changed:
                raise SystemExit(f"acl-experiment: {self.out} holds an experiment with other {', '.join(changed)}; "
                                 "use another --out")
        else:
            path.write_text(json.dumps(config, indent=2) + "\n")

    def run(self) -> int:
        console = Console()
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_config()
        self.start_service()
        failed = []
        try:
            self.create_curricula()
            console.print(f"{len(self.runs)} runs ({len(self.args.conditions)} conditions x "
                          f"{len(self.args.seeds)} seeds) of {self.args.steps} steps on {self.args.env}, "
                          f"{self.parallel} at a time ({self.args.launcher}); service {self.url}, output {self.out}")
            failed = self.run_all(console)
            self.collect()
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
                stop([self.service], timeout=30)
                self.launcher.close()
            finally:
                signal.signal(signal.SIGINT, previous)
        analyze(self.out, self.args.threshold, console)
        return 1 if failed else 0


def analyze(out: Path, threshold: float, console: Console) -> None:
    """summary.md and the plots from evaluations.csv and proposals.csv, for the config in experiment.json."""
    config = json.loads((out / "experiment.json").read_text())
    curves = stats.read_curves(out / "evaluations.csv")
    if not curves:
        console.print("No finished run has evaluations yet; nothing to summarize.")
        return
    summaries = stats.summarize(curves, threshold, config["steps"])
    seeds = sorted({seed for runs in curves.values() for seed in runs})
    header = (f"# {config['env']}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {config['steps']} env steps "
              f"per run, evaluation every {config['eval_every']} steps ({config['eval_episodes']} episodes), "
              f"SAC preset {config['preset']}\n\n")
    text = header + stats.markdown_table(summaries, threshold, config["steps"])
    if (out / "informativeness.csv").exists():
        text += "\n## How informative is each signal about the task?\n\n"
        text += stats.informativeness_table(out / "informativeness.csv")
    (out / "summary.md").write_text(text)
    console.print(text)
    plots.learning_curves(curves, out / "learning_curves.png", threshold)
    plots.teacher_proposals(curves, out / "proposals.csv", config["env"], out / "teacher_proposals.png")
    console.print(f"Wrote {out / 'evaluations.csv'}, summary.md, learning_curves.png, teacher_proposals.png")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.analyze_only:
        analyze(args.out, args.threshold, Console())
        return
    experiment = Experiment(args)

    def terminate(signum, frame):
        raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    sys.exit(experiment.run())


if __name__ == "__main__":
    main()
