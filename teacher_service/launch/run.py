"""`acl-run` (`make run`): the teacher service on SQLite and a few student workers, as processes here.

Ctrl-C stops the students first (each ends its episode, reports it and checkpoints), then the service.
Running it again continues: the same data dir, the same student ids, the workers resume from their
checkpoints and the teachers from the database.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from teacher_service.launch.launcher_cli import add_launcher_args, make_launcher
from teacher_service.launch.launchers import WorkerHandle
from teacher_service.launch.processes import last_episodes, service_settings, start_service, stop
from teacher_service.serving.curricula_file import CurriculaFileError, load_curricula
from teacher_service.serving.settings import http_url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="acl-run",
        description="Run the teacher service (SQLite in --data-dir) and student workers on this machine. "
        "Ctrl-C stops everything with all state saved; run it again to continue.",
        epilog="Arguments after `--` go to every student-worker, e.g. `acl-run -- --eval-every 0` "
        "(see `student-worker --help`).",
    )
    p.add_argument("--students", type=int, default=2, help="number of student workers (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100_000, help="env steps per student, in total over all runs (default: %(default)s)")
    p.add_argument("--config", type=Path, default=Path("curricula.yaml"), help="curricula to create at start-up (default: %(default)s)")
    p.add_argument("--curriculum", default=None, help="curriculum the students learn on (default: the first in --config)")
    p.add_argument("--env", default=None, help="environment id (default: the curriculum's preset environment)")
    p.add_argument("--data-dir", type=Path, default=Path("teacher-data"), help="database, tokens, students' checkpoints (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="service port (default: %(default)s)")
    add_launcher_args(p)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    args.worker_args = argv[split + 1 :]
    if args.students < 1:
        p.error("--students must be at least 1")
    return args


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        try:
            specs = {spec.name: spec for spec in load_curricula(args.config)}
        except CurriculaFileError as exc:
            raise SystemExit(f"acl-run: {exc}") from None
        self.curriculum = args.curriculum or next(iter(specs), None)
        if self.curriculum not in specs:
            raise SystemExit(f"acl-run: no curriculum {self.curriculum!r} in {args.config}; it has: {', '.join(specs)}")
        self.env_id = args.env or getattr(specs[self.curriculum].task_space, "env_id", None)
        if self.env_id is None:
            raise SystemExit(f"acl-run: curriculum {self.curriculum!r} has no preset environment; give --env")
        self.args = args
        self.data_dir = args.data_dir.resolve()
        # The same tokens the service will use: from settings (.env, TEACHER_*) or generated into the data dir.
        self.settings, self.tokens = service_settings(
            "acl-run", ("data_dir", "port"), data_dir=self.data_dir, port=args.port,
            curricula_file=args.config.resolve(), **({"host": args.service_host} if args.service_host else {}))
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        self.url = http_url(host, self.settings.port)
        self.student_ids = [f"{self.curriculum}-{i}" for i in range(args.students)]
        self.service: subprocess.Popen | None = None
        self.students_dir = (args.shared_dir or args.data_dir).resolve() / "students"
        self.launcher = make_launcher(args, "acl-run", self.url)
        self.workers: list[WorkerHandle] = []

    def student_dir(self, student_id: str) -> Path:
        return self.students_dir / student_id

    def start_service(self) -> None:
        self.service = start_service(
            ["--data-dir", str(self.data_dir), "--host", self.settings.host, "--port", str(self.settings.port),
             "--curricula-file", str(self.settings.curricula_file)],
            self.url, self.data_dir / "service.log", "acl-run",
        )

    def start_workers(self) -> None:
        env = {"OMP_NUM_THREADS": "1"}
        if self.tokens.student:
            env["TEACHER_TOKEN"] = self.tokens.student
        for seed, student_id in enumerate(self.student_ids):
            workdir = self.student_dir(student_id)
            workdir.mkdir(parents=True, exist_ok=True)
            cmd = ["--teacher", self.url,
                   "--curriculum", self.curriculum, "--env", self.env_id, "--steps", str(self.args.steps),
                   "--seed", str(seed), "--student-id", student_id, "--checkpoint-dir", str(workdir),
                   "--no-progress", *self.args.worker_args]
            self.workers.append(self.launcher.start(cmd, workdir, env))

    def announce(self, console: Console) -> None:
        try:
            dashboard = httpx.get(f"{self.url}/", timeout=5).status_code == 200
        except httpx.HTTPError:
            dashboard = False
        if self.tokens.insecure:
            tokens = "none, the service runs with TEACHER_INSECURE"
        elif self.tokens.path:
            tokens = f"{self.tokens.path} (owner-only; 'Authorization: Bearer <token>')"
        else:
            tokens = "TEACHER_ADMIN_TOKEN and TEACHER_STUDENT_TOKEN from the environment or .env"
        lines = [
            f"Teacher service: [bold]{self.url}[/]  API docs: /docs  (log: {self.data_dir / 'service.log'})",
            *([f"Dashboard: [bold]{self.tokens.dashboard_url(self.url)}[/]"] if dashboard else []),
            f"Tokens: {tokens}",
            # What a trainer of one's own needs (README "Students"), to paste into another shell.
            f"Your own trainer: export TEACHER_URL={self.url}"
            + (f" TEACHER_TOKEN={self.tokens.student}" if self.tokens.student else ""),
            f"Students: {len(self.student_ids)} x {self.env_id} on curriculum {self.curriculum!r}, "
            f"{self.args.steps} steps each; checkpoints and logs in {self.students_dir}",
            "Ctrl-C stops everything with all state saved; run the same command again to continue.",
        ]
        if self.env_id.startswith("AdroitHand"):  # said here once; the processes do not print it
            lines.append("Note: gymnasium-robotics 1.2.1+ changed Adroit v1's dense reward without a version bump.")
        console.print("\n".join(lines), soft_wrap=True)  # soft: long URLs and paths stay whole

    def table(self) -> Table:
        try:
            info = httpx.get(f"{self.url}/curricula/{self.curriculum}", timeout=2,
                             headers={"Authorization": f"Bearer {self.tokens.student or ''}"}).json()
            teacher = f"teacher version {info['teacher_version']}"
        except (httpx.HTTPError, ValueError, KeyError):
            teacher = "service not answering"
        # Borderless with short headers: fits 80 columns without cutting a cell.
        table = Table(title=f"{self.curriculum}: {teacher}; {self.args.steps} steps per student; return and success "
                      "over the last 20 episodes, grad norm of the last", title_justify="left", box=None,
                      pad_edge=False, header_style="bold underline")
        for column in ("student", "state", "steps", "episodes", "return", "success", "grad norm"):
            table.add_column(column, justify="left" if column in ("student", "state") else "right", no_wrap=True)
        for student_id, proc in zip(self.student_ids, self.workers):
            count, recent = last_episodes(self.student_dir(student_id) / "episodes.jsonl")
            code = proc.poll()
            state = "running" if code is None else "done" if code == 0 else f"failed ({code})"  # see worker.log
            last = recent[-1] if recent else {}
            grad = last.get("grad_norm_mean")
            table.add_row(
                student_id, state, str(last.get("step", 0)), str(count),
                f"{sum(r['episode_return'] for r in recent) / len(recent):.2f}" if recent else "-",
                f"{sum(bool(r['success']) for r in recent) / len(recent):.0%}" if recent else "-",
                f"{grad:.3g}" if grad is not None else "-",
            )
        return table

    def failed(self) -> list[str]:
        """The students whose worker has exited with an error (not stopped by us)."""
        return [sid for sid, proc in zip(self.student_ids, self.workers) if proc.poll() not in (None, 0, -signal.SIGINT)]

    def run(self) -> int:
        # Not a terminal (a pipe, a log): wide lines instead of rich's 80-column default.
        console = Console(width=None if sys.stdout.isatty() else 160)
        try:
            self.start_service()  # in the try: a Ctrl-C while it starts stops it too
            self.start_workers()
            self.announce(console)
            with Live(self.table(), console=console, auto_refresh=False) as live:
                while any(proc.poll() is None for proc in self.workers):
                    time.sleep(1)
                    live.update(self.table(), refresh=True)
            if not console.is_terminal:
                console.line()  # Live ends its last line without a newline when it does not redraw
            failed = len(self.failed())
            if failed:  # named below, each with its log
                console.print(f"{failed} of {len(self.workers)} students failed; the others reached "
                              f"{self.args.steps} steps (or stopped).")
            else:
                console.print(f"All students reached {self.args.steps} steps (or stopped); "
                              "give a larger --steps to continue.")
        except KeyboardInterrupt:
            console.print("Stopping: students end their episode, report it and checkpoint...")
        finally:
            # Stop in order, and do not let a second Ctrl-C leave processes behind; then restore the
            # handlers, since an ignored signal is inherited by every process started afterwards.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self.launcher.stop(self.workers, timeout=120)
                stop([self.service] if self.service else [], timeout=30)
                self.launcher.close()
            finally:
                signal.signal(signal.SIGINT, previous[0])
                signal.signal(signal.SIGTERM, previous[1])
        console.print(f"Stopped; all state is saved in {self.data_dir}")
        failed = self.failed()
        for student_id in failed:
            console.print(f"{student_id} failed; see {self.student_dir(student_id) / 'worker.log'}")
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request, should logging be configured

    def terminate(signum, frame):
        raise KeyboardInterrupt  # SIGTERM (e.g. from a supervisor) stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    # Python turns SIGINT into KeyboardInterrupt only if it was not ignored at start, and a shell script's
    # background jobs start with it ignored: Ctrl-C (or a supervisor's SIGINT) must stop us cleanly anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(Run(args).run())


if __name__ == "__main__":
    main()
