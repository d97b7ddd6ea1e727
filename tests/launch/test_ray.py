"""The Ray launcher on a real Ray cluster that the tests start on this machine (`ray start --head`, 2 CPUs).

A tiny acl-experiment grid gives the same results through Ray as with local processes; a worker killed
mid-run (the student process, then the Ray task's process) is rerun by Ray and resumes from its checkpoint;
acl-run's Ctrl-C stops a worker on Ray as cleanly as a local one.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from tests.servers import REPO, free_port, wait_until
from tests.student_helpers import TINY, create_curriculum, episode_log
from tests.test_architecture import imports_of, project_modules

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed: pip install -e '.[ray]'")
# One condition that proposes tasks (so proposals.csv has rows), two seeds; 300 steps is one PointMaze episode.
GRID = ["--env", "PointMaze_UMazeDense-v3", "--conditions", "random", "--eval-episodes", "1",
        "--learning-starts", "250", "--random-steps", "100"]
# Ray swaps 127.0.0.1 for the machine's own address unless told that this is a one-machine cluster
# (the switch it uses on macOS and Windows); some of its servers bind every interface, so a token too.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_only_the_ray_launcher_imports_ray():
    users = sorted(name for name, path in project_modules().items()
                   if any(target.split(".")[0] == "ray" for target in imports_of(name, path)))
    assert users == ["teacher_service.launch.ray_launcher"]


@needs_ray
def test_a_run_dir_the_node_does_not_see_is_a_clear_error(tmp_path):
    from teacher_service.launch.ray_launcher import run_worker  # the task's body, here without a cluster

    with pytest.raises(FileNotFoundError, match="--shared-dir must be storage that every node mounts"):
        run_worker(["--help"], str(tmp_path / "elsewhere"), {})
    assert not (tmp_path / "elsewhere").exists()  # nothing started, nothing created


@needs_ray
def test_the_stop_file_stops_the_tasks_worker_cleanly_without_a_cancel(tmp_path, service):
    """The launcher's stop file alone (no ray.cancel, whose KeyboardInterrupt was once lost) stops the worker as
    Ctrl-C does locally: it ends its episode, reports it and checkpoints; the task says it was stopped."""
    from teacher_service.launch.ray_launcher import STOP_FILE, run_worker  # the task's body, here without a cluster

    create_curriculum(service, "stopfile", algorithm="random")
    args = ["--teacher", service.url, "--curriculum", "stopfile", "--env", "PointMaze_UMaze-v3", "--student-id", "s0",
            "--steps", "50000", "--checkpoint-dir", str(tmp_path), *TINY, "--eval-every", "0"]
    with ThreadPoolExecutor(1) as pool:
        task = pool.submit(run_worker, args, str(tmp_path), {"TEACHER_TOKEN": service.student_token})
        try:
            wait_until(lambda: task.done() or len(episode_log(tmp_path)) >= 1, 300, "a first episode")
            assert not task.done(), (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            (tmp_path / STOP_FILE).touch()  # also if the test failed: the pool waits for the task
        assert task.result(timeout=200) == -signal.SIGINT
    assert checkpoint_step(tmp_path) == episode_log(tmp_path)[-1]["step"] > 0  # ended its episode, then saved
    assert "signal 15" in (tmp_path / "worker.log").read_text()
    assert run_worker(args, str(tmp_path), {}) == -signal.SIGINT  # a task that starts after the stop: no worker
    assert checkpoint_step(tmp_path) == episode_log(tmp_path)[-1]["step"]


def test_a_worker_that_does_not_stop_in_time_is_killed_and_its_task_says_so(tmp_path, monkeypatch):
    """A worker that does not stop within STOP_TIMEOUT is killed, and the task (and, for a cancelled task, the file
    that RayWorker.poll reads) says so, so that acl-run reports it failed instead of stopped."""
    from teacher_service.launch import ray_launcher  # the task's body, here without a cluster

    monkeypatch.setattr(ray_launcher, "STOP_TIMEOUT", 1)
    # The fault injected: a hung worker that ignores its stop (no student-worker is meant to).
    hung = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('started', flush=True); time.sleep(300)"
    monkeypatch.setattr(ray_launcher, "worker_command", lambda _: [sys.executable, "-c", hung])
    log = tmp_path / "worker.log"
    with ThreadPoolExecutor(1) as pool:
        task = pool.submit(ray_launcher.run_worker, [], str(tmp_path), {})
        try:
            wait_until(lambda: log.exists() and "started" in log.read_text(), 60, "the worker started")
        finally:
            (tmp_path / ray_launcher.STOP_FILE).touch()
        assert task.result(timeout=60) == -signal.SIGKILL
    assert ray_launcher.stop_result(tmp_path) == -signal.SIGKILL
    assert "did not stop within 1 s of the stop: killed" in log.read_text()
    (tmp_path / ray_launcher.STOP_RESULT).unlink()
    assert ray_launcher.stop_result(tmp_path) == -signal.SIGINT  # a cancelled task that had started no worker


@pytest.fixture(scope="module")
def ray_address():
    """A one-node cluster on loopback ports, in a temporary directory, stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    log = temp / "head.log"
    ray = str(Path(sys.executable).with_name("ray"))
    with open(log, "w") as out:
        head = subprocess.Popen(
            [ray, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--include-dashboard", "false",
             "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
             "--temp-dir", str(temp)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=ray_env())
    try:
        wait_until(lambda: head.poll() is not None or "Ray runtime started" in log.read_text(), 180, "ray head")
        assert head.poll() is None, log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: stops every process it started
        head.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def ray_env() -> dict[str, str]:
    """This environment without the user's Ray and service settings, with the test cluster's token."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("TEACHER_", "RAY_"))}, **AUTH}


def experiment(out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "teacher_service.launch.experiment.runner", *GRID, *args, "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@needs_ray
def test_grid_on_ray_gives_the_local_launchers_results(tmp_path, ray_address):
    grid = ["--seeds", "0", "1", "--steps", "300", "--eval-every", "150"]
    on_ray = experiment(tmp_path / "ray", *grid, "--launcher", "ray", "--ray-address", ray_address,
                        "--shared-dir", str(tmp_path / "shared"))
    local = experiment(tmp_path / "local", *grid)  # at the same time: the grids are small, the CPUs few
    assert "(ray)" in finish(on_ray)
    finish(local)

    evaluations = rows(tmp_path / "ray" / "evaluations.csv")
    assert {(r["condition"], r["seed"], r["step"]) for r in evaluations} == {
        ("random", s, step) for s in ("0", "1") for step in ("150", "300")}
    # Seeded workers, one thread each: the same numbers, wherever they ran.
    for name in ("evaluations.csv", "proposals.csv", "summary.md"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert rows(tmp_path / "ray" / "proposals.csv")
    # The run directories went to the shared dir, not under --out.
    assert sorted(p.name for p in (tmp_path / "shared" / "runs").iterdir()) == ["random-s0", "random-s1"]
    assert all((tmp_path / "shared" / "runs" / name / "done").exists() for name in ("random-s0", "random-s1"))
    assert not (tmp_path / "ray" / "runs").exists()


def student_pid(run_dir: Path) -> int | None:
    """The `student-worker` process whose checkpoint dir is run_dir."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"student_client.worker" in cmdline and str(run_dir).encode() in cmdline:
            return int(entry.name)
    return None


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def checkpoint_step(run_dir: Path) -> int:
    path = run_dir / "checkpoint.pt"
    return torch.load(path, weights_only=False)["step"] if path.exists() else 0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rerun_of(killed: int, run_dir: Path, proc: subprocess.Popen) -> int:
    """The pid of the student that Ray started in place of the killed one, as first seen (a later look
    may miss it: a process's cmdline reads empty while it execs, and the rerun may have finished)."""
    seen = []

    def rerun_started() -> bool:
        pid = student_pid(run_dir)
        if pid not in (None, killed):
            seen.append(pid)
        return bool(seen) or proc.poll() is not None

    wait_until(rerun_started, 120, "a rerun")
    if not seen:
        try:
            output = proc.communicate(timeout=60)[0][-3000:]
        except subprocess.TimeoutExpired:  # a process it started still holds its output
            output = "(its output did not end)"
        log = run_dir / "worker.log"
        pytest.fail(f"the experiment ended without a rerun:\n{output}\nworker.log:\n"
                    f"{log.read_text()[-3000:] if log.exists() else '(none)'}")
    return seen[0]


@needs_ray
@pytest.mark.skipif(sys.platform != "linux", reason="finds processes through /proc")
def test_a_killed_worker_is_rerun_by_ray_and_resumes(tmp_path, ray_address):
    run_dir = tmp_path / "out" / "runs" / "random-s0"
    proc = experiment(tmp_path / "out", "--seeds", "0", "--steps", "600", "--eval-every", "300",
                      "--checkpoint-every", "300", "--launcher", "ray", "--ray-address", ray_address)
    try:
        # 1. The student process dies (kill -9 after its first checkpoint): Ray reruns the task.
        wait_until(lambda: proc.poll() is not None or checkpoint_step(run_dir) >= 300, 300, "the first checkpoint")
        first = student_pid(run_dir)
        assert first and checkpoint_step(run_dir) < 600, "the run ended before the kill"
        os.kill(first, signal.SIGKILL)

        # 2. The rerun's Ray task process dies (its node's OOM killer, say): its student dies with it
        # instead of living on beside the next rerun, and Ray reruns the task once more.
        second = rerun_of(first, run_dir, proc)
        os.kill(parent_pid(second), signal.SIGKILL)
        wait_until(lambda: not alive(second), 30, "the orphaned student's end")
        rerun_of(second, run_dir, proc)
        finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    log = (run_dir / "worker.log").read_text()
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed from" in line]
    assert resumed and set(resumed) == {300}, log[-3000:]  # each rerun from the checkpoint at 300
    assert [e["step"] for e in episode_log(run_dir)][-2:] == [300, 600]
    assert (run_dir / "done").exists()
    assert {r["step"] for r in rows(tmp_path / "out" / "evaluations.csv")} == {"300", "600"}


@needs_ray
def test_acl_run_on_ray_stops_its_workers_cleanly(tmp_path, ray_address):
    """Ctrl-C: the launcher stops the task (stop file, cancel), whose worker ends its episode, reports it and
    checkpoints, as locally."""
    spec = {"name": "onray", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
            "teacher": {"algorithm": "random"}}
    (tmp_path / "curricula.yaml").write_text(yaml.safe_dump({"curricula": [spec]}))
    student = tmp_path / "shared" / "students" / "onray-0"
    cmd = [sys.executable, "-m", "teacher_service.launch.run", "--students", "1", "--steps", "50000",
           "--config", str(tmp_path / "curricula.yaml"), "--data-dir", str(tmp_path / "data"),
           "--port", str(free_port()), "--launcher", "ray", "--ray-address", ray_address,
           "--shared-dir", str(tmp_path / "shared"), "--", *TINY, "--eval-every", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_until(lambda: proc.poll() is not None or len(episode_log(student)) >= 1, 300, "a first episode")
        assert proc.poll() is None, proc.communicate()[0][-5000:]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-5000:]
    assert str(student.parent) in out
    assert checkpoint_step(student) == episode_log(student)[-1]["step"] > 0  # ended its episode, then saved
    assert "signal 15" in (student / "worker.log").read_text()  # stopped by the launcher, not killed
