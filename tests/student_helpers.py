"""Helpers for the student end-to-end tests: curricula, worker processes, the service's stored reports."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch
from teacher_service.wire import CurriculumCreate, PresetTaskSpace, TeacherSpec

from student_client import TeacherClient
from tests.servers import wait_until

REPO = Path(__file__).resolve().parents[1]
# Tiny budgets: PointMaze episodes are 300 steps; learning starts inside the first episode.
TINY = ["--preset", "small", "--learning-starts", "250", "--random-steps", "100", "--no-progress"]


def create_curriculum(service, name: str, env_id: str = "PointMaze_UMaze-v3",
                      algorithm: str = "gradnorm-reinforce") -> None:
    with TeacherClient(service.url, service.admin_token) as client:
        client.create_curriculum(CurriculumCreate(name=name, task_space=PresetTaskSpace(env_id=env_id),
                                                  teacher=TeacherSpec(algorithm=algorithm)))


def start_worker(service, workdir: Path, curriculum: str, steps: int, seed: int, *extra: str,
                 env_id: str = "PointMaze_UMaze-v3") -> subprocess.Popen:
    """`student-worker` as a process, with its checkpoint dir (and log file) in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "student_client.worker", "--teacher", service.url, "--curriculum", curriculum,
           "--env", env_id, "--steps", str(steps), "--seed", str(seed), "--student-id", f"student-{seed}",
           "--checkpoint-dir", str(workdir), *TINY, *extra]
    env = {**os.environ, "TEACHER_TOKEN": service.student_token, "OMP_NUM_THREADS": "1"}
    log = open(workdir / "worker.log", "a")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_exit(proc: subprocess.Popen, workdir: Path, timeout: float = 300) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, (workdir / "worker.log").read_text()[-4000:]


def wait_inside_second_episode(workdir: Path) -> None:
    """Until the worker in ``workdir`` (started with ``--checkpoint-every 50``) has checkpointed step 350: inside
    its second 300-step episode, by its progress rather than a sleep, which at some speeds ended exactly where an
    episode did (or before the next one began), so that no episode was cut."""
    def step() -> int:
        try:  # absent between the worker's two renames (checkpoint.pt to .prev, the new one into place)
            return torch.load(workdir / "checkpoint.pt", mmap=True, weights_only=False)["step"]
        except (OSError, RuntimeError):  # torch says "unable to open file" with a RuntimeError
            return 0

    wait_until(lambda: step() >= 350, 120, "step 350")


def episode_log(workdir: Path) -> list[dict]:
    """The worker's own record of its episodes."""
    path = workdir / "episodes.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sqlite_path(database_url: str) -> str:
    return database_url.removeprefix("sqlite:///")


def stored_proposals(service, curriculum: str) -> dict[str, dict]:
    """proposal_id -> {student_id, signals, reported_at} from the service's database."""
    with sqlite3.connect(_sqlite_path(service.database_url)) as db:
        rows = db.execute(
            "SELECT p.proposal_id, p.student_id, p.signals, p.reported_at FROM proposals p "
            "JOIN curricula c ON c.id = p.curriculum_id WHERE c.name = ?", (curriculum,)).fetchall()
    return {pid: {"student_id": sid, "signals": json.loads(sig) if sig else None, "reported_at": at}
            for pid, sid, sig, at in rows}


def stored_evaluations(service, curriculum: str) -> list[tuple]:
    with sqlite3.connect(_sqlite_path(service.database_url)) as db:
        return db.execute(
            "SELECT e.student_id, e.env_steps, e.episodes, e.success_rate, e.mean_return FROM evaluations e "
            "JOIN curricula c ON c.id = e.curriculum_id WHERE c.name = ?", (curriculum,)).fetchall()
