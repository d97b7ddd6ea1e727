"""`acl-run`: the service and student workers as local processes; Ctrl-C saves everything, a rerun continues."""

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import torch
import yaml

from teacher_service.launch import run
from tests.servers import free_port, processes_mentioning, wait_until
from tests.student_helpers import TINY, episode_log

CURRICULUM = "local"


def teacher_versions(data_dir) -> list[int]:
    with sqlite3.connect(data_dir / "teacher.db") as db:
        return [v for (v,) in db.execute("SELECT version FROM teacher_updates ORDER BY id")]


def reporting_students(data_dir) -> set[str]:
    with sqlite3.connect(data_dir / "teacher.db") as db:
        return {s for (s,) in db.execute("SELECT DISTINCT student_id FROM proposals WHERE reported_at IS NOT NULL")}


def write_curricula(tmp_path) -> None:
    spec = {"name": CURRICULUM, "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"}}
    (tmp_path / "curricula.yaml").write_text(yaml.safe_dump({"curricula": [spec]}))


def start(tmp_path, port: int, *worker_args: str, students: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "teacher_service.launch.run", "--students", str(students), "--steps", "50000",
           "--config", str(tmp_path / "curricula.yaml"), "--data-dir", str(tmp_path / "teacher-data"),
           "--port", str(port), "--", *TINY, "--eval-every", "0", *worker_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    # Started with SIGINT ignored, as a shell script's background job is: Ctrl-C must still stop it cleanly
    # (Python alone would then ignore SIGINT, and this test once ran the whole run out that way).
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    return out


def run_until(proc: subprocess.Popen, check, what: str) -> str:
    """Let acl-run work until `check()` holds, then Ctrl-C it; its output, also when it fails."""
    try:
        wait_until(lambda: proc.poll() is not None or check(), 240, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; acl-run printed:\n{interrupt(proc)}") from None
    assert proc.poll() is None, f"acl-run exited early:\n{proc.communicate()[0]}"
    return interrupt(proc)


def test_ctrl_c_saves_everything_and_a_rerun_continues(tmp_path):
    spec = {"name": CURRICULUM, "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
            "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 2, "horizon": 1}}}
    (tmp_path / "curricula.yaml").write_text(yaml.safe_dump({"curricula": [spec]}))
    data = tmp_path / "teacher-data"
    students = [data / "students" / f"{CURRICULUM}-{i}" for i in range(2)]
    port = free_port()

    out = run_until(start(tmp_path, port), lambda: all(len(episode_log(d)) >= 2 for d in students)
                    and teacher_versions(data), "two episodes per student and a teacher update")
    assert f"http://127.0.0.1:{port}" in out and str(data / "tokens.json") in out
    tokens = json.loads((data / "tokens.json").read_text())
    # What one's own trainer needs (README "Students"), ready to paste.
    assert f"export TEACHER_URL=http://127.0.0.1:{port} TEACHER_TOKEN={tokens['student_token']}" in out
    versions = teacher_versions(data)
    saved = {d: torch.load(d / "checkpoint.pt", weights_only=False)["step"] for d in students}
    episodes = {d: len(episode_log(d)) for d in students}
    for d in students:
        assert saved[d] == episode_log(d)[-1]["step"]  # the checkpoint has every logged episode

    run_until(start(tmp_path, port), lambda: all(len(episode_log(d)) >= episodes[d] + 2 for d in students)
              and len(teacher_versions(data)) > len(versions), "more episodes and teacher updates")
    assert json.loads((data / "tokens.json").read_text()) == tokens
    resumed = teacher_versions(data)
    assert resumed == list(range(1, len(resumed) + 1)) and resumed[: len(versions)] == versions  # not reset
    for d in students:
        first_new = episode_log(d)[episodes[d]]
        assert first_new["step"] == saved[d] + first_new["env_steps"]  # the step counter continues
        assert first_new["grad_updates"] == first_new["env_steps"]  # learning had started: the agent was restored
    assert reporting_students(data) == {f"{CURRICULUM}-0", f"{CURRICULUM}-1"}  # the same students, no new ids


def test_a_port_in_use_is_reported_and_nothing_starts(tmp_path, service):
    """Another teacher service already answers on the port: acl-run must not take it for its own."""
    write_curricula(tmp_path)
    proc = start(tmp_path, service.port)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # acl-run stops what it started
        raise AssertionError(f"acl-run ran on another process's port:\n{proc.communicate(timeout=180)[0]}") from None
    assert proc.returncode == 1, out
    assert f"port {service.port} is in use" in out and "--port" in out
    assert not (tmp_path / "teacher-data" / "students").exists()  # no student was started
    assert not (tmp_path / "teacher-data" / "teacher.db").exists()  # nor a service of ours


def test_ctrl_c_while_the_service_starts_stops_it(tmp_path):
    """The service runs in a session of its own: a Ctrl-C before it answers must not leave it running."""
    write_curricula(tmp_path)
    proc = start(tmp_path, free_port())
    try:
        wait_until(lambda: processes_mentioning(f"serve --data-dir {tmp_path}") or proc.poll() is not None, 60,
                   "the service's process")
        out = interrupt(proc)  # a clean stop, as a Ctrl-C later
        assert "Traceback" not in out and "Teacher service:" not in out, out  # stopped while the service started
        assert not processes_mentioning(str(tmp_path)), out
    finally:
        for pid in processes_mentioning(str(tmp_path)):  # what the test left behind, should it fail
            os.kill(pid, signal.SIGKILL)


def test_failed_students_are_counted_and_the_exit_status_says_so(tmp_path):
    write_curricula(tmp_path)
    proc = start(tmp_path, free_port(), "--no-such-option", students=1)  # the worker refuses its arguments
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "1 of 1 students failed" in out and "All students reached" not in out, out
    assert f"{CURRICULUM}-0 failed; see {tmp_path / 'teacher-data' / 'students' / f'{CURRICULUM}-0' / 'worker.log'}" in out


def test_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--students", "0"])
    assert "--students must be at least 1" in capsys.readouterr().err
    write_curricula(tmp_path)
    # An IPv6 address goes in brackets in the URL the workers (and acl-run itself) reach the service at.
    args = run.parse_args(["--config", str(tmp_path / "curricula.yaml"), "--data-dir", str(tmp_path / "data"),
                           "--service-host", "::1", "--port", "8123"])
    assert run.Run(args).url == "http://[::1]:8123"


def test_settings_it_cannot_use_are_one_clear_line(tmp_path, monkeypatch):
    """acl-run reads the service's settings itself (for its tokens and URL): a bad TEACHER_* variable, a --port out of
    range or a .env not in UTF-8 was a traceback there, where `teacher-service serve` said what was wrong."""
    write_curricula(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["--config", str(tmp_path / "curricula.yaml"), "--data-dir", str(tmp_path / "data")]
    monkeypatch.setenv("TEACHER_PROPOSAL_TTL_S", "abc")
    with pytest.raises(SystemExit, match="^acl-run: invalid settings: TEACHER_PROPOSAL_TTL_S: Input should be a valid"):
        run.Run(run.parse_args(argv))
    monkeypatch.delenv("TEACHER_PROPOSAL_TTL_S")
    with pytest.raises(SystemExit, match="^acl-run: invalid settings: --port / TEACHER_PORT: Input should be less"):
        run.Run(run.parse_args([*argv, "--port", "70000"]))
    (tmp_path / ".env").write_bytes("TEACHER_LOG_LEVEL=info\n".encode("utf-16"))
    with pytest.raises(SystemExit, match="^acl-run: cannot read .*: not UTF-8 text"):
        run.Run(run.parse_args(argv))
