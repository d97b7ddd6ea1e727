"""Load on one service process, in three parts.

1. Saturation: wrk keeps 256 connections busy with propose-then-report loops, next to an empty
   endpoint on the same server stack, in the same run: requests/s, p50 and p99, errors, the ratio.
   Each server first gets a few seconds of the same load, not measured (imports, first teacher calls).
   A closed loop at saturation has latency = connections / throughput, for the empty endpoint too.
2. Students at their own pace: 256 simulated students, each proposing, "training" for a random
   episode time (5 s on average: a 300-step episode of a CPU student at 60 steps/s) and reporting,
   as real students do: latency and errors at a realistic request rate. They start once the teacher has
   applied the updates that part 1 numbered: under saturation the updates lag (the line "teacher under
   saturation" says by how much), and a catch-up would otherwise run during part 2.
3. Vectorized learners: loops of `POST /propose/batch` then `POST /report/batch` with 64 items each
   (one env each), on SQLite and then on a PostgreSQL server the bench starts (tests/servers.py): student
   episodes/s. Their curriculum updates its teacher every 640 episodes (128 trajectories of 5), a batch
   size for a learner that finishes thousands of episodes a second. And where the CPU went, per episode: the
   service process (its threads share one GIL, so it cannot use much more than one core: 1e6 / its us per
   episode bounds its episodes/s), its update worker, the PostgreSQL server's processes, and this client.
4. What one update of part 1's teacher costs, in process (CPU): the update itself and writing its checkpoint, which
   the update worker does (serving/update_worker.py), and loading that into the spare teacher, which the service
   process does (serving/updater.py).

The last line is for tools: `service: single_ratio=0.NN errors=N batch64_episodes_per_s=NNNNN` (SQLite).
Needs wrk (`apt-get install wrk`) and, for part 3 on PostgreSQL, initdb/pg_ctl (skipped with a note if absent).

    python bench/service_load.py [--connections 256] [--seconds 20] [--episode-s 5] [--batch-loops 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.servers: the PostgreSQL server the tests use
TOKEN = "bench-token"
SIGNALS = {"grad_norm_mean": 1.5, "grad_norm_episode": 0.7, "episode_return": 12.5, "env_steps": 300}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen) -> None:
    for _ in range(300):
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def bench_counts(url: str) -> tuple[float, float]:
    """The bench curriculum's reports and applied teacher updates so far, from /metrics (which, unlike the
    curriculum's own route, does not wait for the updater)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def value(name: str) -> float:
        found = re.search(rf'^{name}{{curriculum="bench"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("teacher_reports_total"), value("teacher_updates_total")


def teacher_caught_up(url: str, timeout_s: float = 600) -> float:
    """Seconds until the teacher applies no more updates (none in a second) once the load has stopped."""
    start = time.monotonic()
    last = bench_counts(url)[1]
    while time.monotonic() - start < timeout_s:
        time.sleep(1)
        now = bench_counts(url)[1]
        if now == last:
            break
        last = now
    return time.monotonic() - start


def wrk(url: str, script: str, connections: int, seconds: int, *args: str) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(HERE / script), url, "--", TOKEN, *args],
        capture_output=True, text=True, check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
        # Which: refused answers (503 when shedding load) or wrk's own timeouts (2 s) and socket errors.
        "error_kinds": f"non-2xx {non_2xx.group(1) if non_2xx else 0}, "
                       f"socket {socket_errors.group(0) if socket_errors else 'none'}",
    }


async def paced_students(url: str, students: int, seconds: float, episode_s: float) -> dict:
    """Each student: propose, wait an episode (uniform 0.5x to 1.5x episode_s), report, repeat."""
    latencies: list[float] = []
    errors = 0
    signals = SIGNALS
    deadline = time.monotonic() + seconds

    async def timed(client: httpx.AsyncClient, path: str, body: dict) -> dict | None:
        nonlocal errors
        start = time.perf_counter()
        try:
            response = await client.post(path, json=body)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPError:
            errors += 1
            return None
        finally:
            latencies.append(time.perf_counter() - start)

    async def student(client: httpx.AsyncClient, k: int) -> None:
        rng = random.Random(k)
        await asyncio.sleep(rng.uniform(0, episode_s))  # students do not start in lockstep
        while time.monotonic() < deadline:
            proposal = await timed(client, "/propose", {"curriculum": "bench", "student_id": f"paced-{k}"})
            await asyncio.sleep(rng.uniform(0.5, 1.5) * episode_s)
            if proposal is not None:
                await timed(client, "/report", {"proposal_id": proposal["proposal_id"], "student_id": f"paced-{k}",
                                                "signals": signals})

    limits = httpx.Limits(max_connections=students)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
                                 limits=limits) as client:
        started = time.monotonic()
        await asyncio.gather(*(student(client, k) for k in range(students)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": 1e3 * latencies[len(latencies) // 2],
        "p99": 1e3 * latencies[int(len(latencies) * 0.99)],
        "errors": errors,
    }


def children(pid: int) -> list[int]:
    """A process's living children, whichever of its threads started them (from /proc: Linux)."""
    found = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            found += [int(child) for child in (thread / "children").read_text().split()]
    return found


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """CPU time (user + system) of a process, and with `tree` of its living descendants too."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return own + (sum(cpu_seconds(child, tree) for child in children(pid)) if tree else 0.0)
    except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
        return 0.0


def cpu_per_episode(pids: dict[str, tuple[int, bool]], run: Callable[[], dict]) -> dict:
    """`run()`'s result with the CPU of each of `pids` (name: pid, whether with its descendants) and of this process,
    in us per episode and in cores."""
    before = {name: cpu_seconds(*pid) for name, pid in pids.items()}
    ours, started = time.process_time(), time.monotonic()
    result = run()
    wall, ours = time.monotonic() - started, time.process_time() - ours
    used = {name: cpu_seconds(*pid) - before[name] for name, pid in pids.items()} | {"client (this bench)": ours}
    episodes = max(result["episodes"], 1)
    return result | {"cpu": {name: (1e6 * seconds / episodes, seconds / wall) for name, seconds in used.items()}}


async def batch_learners(url: str, loops: int, size: int, seconds: float) -> dict:
    """`loops` learners, each with `size` envs: propose a batch, report it, repeat. Episodes/s and errors."""
    episodes, errors, latencies = 0, 0, []
    deadline = time.monotonic() + seconds

    async def learner(client: httpx.AsyncClient, k: int) -> None:
        nonlocal episodes, errors
        students = [f"vec{k}-{i}" for i in range(size)]
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                proposed = (await client.post("/propose/batch", json={"items": [
                    {"curriculum": "vector", "student_id": s} for s in students]})).raise_for_status().json()
                items = [{"proposal_id": r["proposal"]["proposal_id"], "student_id": r["proposal"]["student_id"],
                          "signals": SIGNALS} for r in proposed["results"] if r["proposal"]]
                reported = (await client.post("/report/batch", json={"items": items})).raise_for_status().json()
            except httpx.HTTPError:
                errors += size
                continue
            latencies.append(time.perf_counter() - start)
            ok = sum(1 for r in reported["results"] if r["ack"])
            episodes += ok
            errors += size - ok

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                                 limits=httpx.Limits(max_connections=loops)) as client:
        started = time.monotonic()
        await asyncio.gather(*(learner(client, k) for k in range(loops)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {"episodes": episodes, "episodes_per_s": episodes / elapsed, "errors": errors,
            "p50": 1e3 * latencies[len(latencies) // 2] if latencies else float("nan")}


def teacher_update_cost(rounds: int = 200) -> dict:
    """CPU us of what one update of the saturated part's teacher (`gradnorm-reinforce`, its defaults) costs, in
    process: the update on a batch of 10 episodes and writing its checkpoint (the update worker's work), loading it
    into the spare teacher (the service process's). Medians of `rounds`."""
    import torch

    from teacher_service import wire
    from teacher_service.learning.task_spaces import build_task_space
    from teacher_service.learning.teachers import Context, Experience, build_teacher

    torch.set_num_threads(1)  # as the service runs
    spec = wire.CurriculumCreate.model_validate({"name": "cost", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
                                                 "teacher": {"algorithm": "gradnorm-reinforce"}})
    space = build_task_space(spec.task_space)
    teacher, spare = (build_teacher(spec.teacher.algorithm, space, spec.teacher.params, seed) for seed in (0, 1))
    rng = random.Random(0)

    def batch() -> list[Experience]:
        decisions = teacher.propose_many([Context()] * teacher.batch_size)
        return [Experience(seq=k, student_id=f"s{k}", trajectory=k, task_index=d.task_index, task_values=None,
                           teacher_input=d.teacher_input, reward=rng.random()) for k, d in enumerate(decisions)]

    def timed(step) -> tuple[float, object]:
        start = time.process_time()
        result = step()
        return time.process_time() - start, result

    times: dict[str, list[float]] = {"update": [], "checkpoint": [], "load": []}
    for _ in range(rounds):
        episodes = batch()
        times["update"].append(timed(lambda: teacher.update(episodes))[0])
        seconds, blob = timed(teacher.state_bytes)
        times["checkpoint"].append(seconds)
        times["load"].append(timed(lambda: spare.load_state_bytes(blob))[0])
    return {name: 1e6 * statistics.median(t) for name, t in times.items()} | {"bytes": len(blob)}


VECTOR_CURRICULUM = {"name": "vector", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
                     "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 640, "horizon": 5}}}


def start_service(env: dict, database_url: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**env, **({"TEACHER_DATABASE_URL": database_url} if database_url else {})}
    process = subprocess.Popen([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_up(f"{url}/healthz", process)
    return process, url


def batch_run(env: dict, args: argparse.Namespace, database_url: str | None = None, server_pid: int | None = None) -> dict:
    """Part 3 on a fresh service process (on `database_url`, else SQLite in its data dir); `server_pid`: the
    PostgreSQL server's, whose processes' CPU is counted too."""
    process, url = start_service(env, database_url)
    try:
        httpx.post(f"{url}/curricula", json=VECTOR_CURRICULUM,
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).raise_for_status()
        asyncio.run(batch_learners(url, args.batch_loops, 64, args.warmup))  # the update worker starts here
        pids = {"service process": (process.pid, False)}
        pids |= {"update worker": (child, False) for child in children(process.pid)  # not multiprocessing's tracker
                 if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}
        pids |= {"PostgreSQL server": (server_pid, True)} if server_pid else {}  # the server and its backends
        return cpu_per_episode(pids, lambda: asyncio.run(batch_learners(url, args.batch_loops, 64, args.seconds)))
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=256, help="concurrent simulated students")
    parser.add_argument("--seconds", type=int, default=20, help="duration of each measurement")
    parser.add_argument("--episode-s", type=float, default=5.0, help="mean episode time of a paced student")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each measurement")
    parser.add_argument("--batch-loops", type=int, default=8, help="concurrent vectorized learners (64 envs each)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    data = Path(tempfile.mkdtemp(prefix="service-load-"))
    empty_port = free_port()
    env = {**os.environ, "TEACHER_ADMIN_TOKEN": TOKEN, "TEACHER_STUDENT_TOKEN": "student-" + TOKEN,
           "TEACHER_DATA_DIR": str(data), "TEACHER_LOG_LEVEL": "warning"}
    env.pop("TEACHER_DATABASE_URL", None)
    empty = subprocess.Popen([sys.executable, str(HERE / "empty_app.py"), str(empty_port)], env=env)
    service, service_url = start_service(env)
    empty_url = f"http://127.0.0.1:{empty_port}"
    try:
        wait_up(f"{empty_url}/docs", empty)
        curriculum = {"name": "bench", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
                      "teacher": {"algorithm": "gradnorm-reinforce"}}
        httpx.post(f"{service_url}/curricula", json=curriculum, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).raise_for_status()

        print(f"{args.connections} connections, {args.seconds} s each, one service process, SQLite (WAL)")
        wrk(f"{empty_url}/empty", "empty.lua", args.connections, args.warmup)
        empty_stats = wrk(f"{empty_url}/empty", "empty.lua", args.connections, args.seconds)
        wrk(service_url, "propose_report.lua", args.connections, args.warmup, "bench")
        time.sleep(2)  # let the service drain what the warm-up left in flight
        reports_before, updates_before = bench_counts(service_url)
        loop_stats = wrk(service_url, "propose_report.lua", args.connections, args.seconds, "bench")
        reports_after, updates_after = bench_counts(service_url)
        time.sleep(2)  # let the service drain what wrk left in flight
        catch_up_s = teacher_caught_up(service_url)
        caught_up = bench_counts(service_url)[1]
        paced_stats = asyncio.run(paced_students(service_url, args.connections, args.seconds, args.episode_s))
        teacher = httpx.get(f"{service_url}/curricula/bench", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    finally:
        service.terminate()
        empty.terminate()
        service.wait()
        empty.wait()

    batch = {"SQLite": batch_run(env, args)}
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        from tests.servers import PostgresServer

        postgres = PostgresServer().start()
        try:
            server_pid = int((postgres.dir / "data" / "postmaster.pid").read_text().split()[0])
            batch["PostgreSQL"] = batch_run(env, args, postgres.create_database("bench"), server_pid)
        finally:
            postgres.stop()
    else:
        print("PostgreSQL (initdb, pg_ctl) not found: batches measured on SQLite only")
    shutil.rmtree(data, ignore_errors=True)

    print(f"{'load':<40}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'errors':>9}")
    rows = (
        ("saturated: empty POST (reference)", empty_stats),
        ("saturated: /propose + /report loops", loop_stats),
        (f"{args.connections} students, {args.episode_s:g} s episodes", paced_stats),
    )
    for name, s in rows:
        print(f"{name:<40}{s['rps']:>8.0f}{s['p50']:>10.1f}{s['p99']:>10.1f}{s['errors']:>9}")
    for backend, s in batch.items():
        print(f"{args.batch_loops} learners x 64 envs, batch verbs, {backend}: {s['episodes_per_s']:,.0f} episodes/s "
              f"(a propose and a report each), p50 {s['p50']:.1f} ms per propose+report pair, errors {s['errors']}")
        print("  CPU per episode: " + ", ".join(f"{name} {us:.0f} us ({cores:.2f} core)"
                                                for name, (us, cores) in s["cpu"].items()))
    cost = teacher_update_cost()
    print(f"one teacher update (gradnorm-reinforce defaults, 10 episodes), CPU in process: update {cost['update']:.0f} us "
          f"and checkpoint write {cost['checkpoint']:.0f} us ({cost['bytes'] / 1024:.0f} KiB) in the update worker, load "
          f"into the spare teacher {cost['load']:.0f} us in the service")
    print(f"teacher under saturation (part 1): {(updates_after - updates_before) / args.seconds:.1f} updates/s applied "
          f"while {(reports_after - reports_before) / args.seconds / 10:.1f}/s were numbered (a batch of 10 reports each); "
          f"after the loops it applied {caught_up - updates_after:.0f} more in {catch_up_s:.0f} s, before part 2")
    if loop_stats["errors"]:
        print(f"errors of the /propose + /report loops: {loop_stats['error_kinds']}")
    ratio = loop_stats["rps"] / empty_stats["rps"]
    errors = loop_stats["errors"] + paced_stats["errors"]
    print(f"saturated throughput ratio: {ratio:.2f} (target >= 0.60); paced students: p99 {paced_stats['p99']:.1f} ms "
          f"(target <= 25), errors {errors} (target 0); teacher updates during the run: {teacher['teacher_updates']}")
    print(f"service: single_ratio={ratio:.2f} errors={errors} batch64_episodes_per_s={batch['SQLite']['episodes_per_s']:.0f}")


if __name__ == "__main__":
    main()
