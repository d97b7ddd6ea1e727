"""Load on one service process, in two parts.

1. Saturation: wrk keeps 256 connections busy with propose-then-report loops, next to an empty
   endpoint on the same server stack, in the same run: requests/s, p50 and p99, errors, the ratio.
   Each server first gets a few seconds of the same load, not measured (imports, first teacher calls).
   A closed loop at saturation has latency = connections / throughput, for the empty endpoint too.
2. Students at their own pace: 256 simulated students, each proposing, "training" for a random
   episode time (5 s on average: a 300-step episode of a CPU student at 60 steps/s) and reporting,
   as real students do: latency and errors at a realistic request rate.

Needs wrk (`apt-get install wrk`).

    python bench/service_load.py [--connections 256] [--seconds 20] [--episode-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"


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
    }


async def paced_students(url: str, students: int, seconds: float, episode_s: float) -> dict:
    """Each student: propose, wait an episode (uniform 0.5x to 1.5x episode_s), report, repeat."""
    latencies: list[float] = []
    errors = 0
    signals = {"grad_norm_mean": 1.5, "grad_norm_episode": 0.7, "episode_return": 12.5, "env_steps": 300}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=256, help="concurrent simulated students")
    parser.add_argument("--seconds", type=int, default=20, help="duration of each measurement")
    parser.add_argument("--episode-s", type=float, default=5.0, help="mean episode time of a paced student")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each measurement")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    data = Path(tempfile.mkdtemp(prefix="service-load-"))
    service_port, empty_port = free_port(), free_port()
    env = {**os.environ, "TEACHER_ADMIN_TOKEN": TOKEN, "TEACHER_STUDENT_TOKEN": "student-" + TOKEN,
           "TEACHER_DATA_DIR": str(data), "TEACHER_LOG_LEVEL": "warning"}
    service = subprocess.Popen([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--port", str(service_port)], env=env)
    empty = subprocess.Popen([sys.executable, str(HERE / "empty_app.py"), str(empty_port)], env=env)
    service_url, empty_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{empty_port}"
    try:
        wait_up(f"{service_url}/healthz", service)
        wait_up(f"{empty_url}/docs", empty)
        curriculum = {"name": "bench", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
                      "teacher": {"algorithm": "gradnorm-reinforce"}}
        httpx.post(f"{service_url}/curricula", json=curriculum, headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()

        print(f"{args.connections} connections, {args.seconds} s each, one service process, SQLite (WAL)")
        wrk(f"{empty_url}/empty", "empty.lua", args.connections, args.warmup)
        empty_stats = wrk(f"{empty_url}/empty", "empty.lua", args.connections, args.seconds)
        wrk(service_url, "propose_report.lua", args.connections, args.warmup, "bench")
        time.sleep(2)  # let the service drain what the warm-up left in flight
        loop_stats = wrk(service_url, "propose_report.lua", args.connections, args.seconds, "bench")
        time.sleep(5)  # let the service drain what wrk left in flight
        paced_stats = asyncio.run(paced_students(service_url, args.connections, args.seconds, args.episode_s))
        teacher = httpx.get(f"{service_url}/curricula/bench", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    finally:
        service.terminate()
        empty.terminate()
        service.wait()
        empty.wait()
        shutil.rmtree(data, ignore_errors=True)

    print(f"{'load':<40}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'errors':>9}")
    rows = (
        ("saturated: empty POST (reference)", empty_stats),
        ("saturated: /propose + /report loops", loop_stats),
        (f"{args.connections} students, {args.episode_s:g} s episodes", paced_stats),
    )
    for name, s in rows:
        print(f"{name:<40}{s['rps']:>8.0f}{s['p50']:>10.1f}{s['p99']:>10.1f}{s['errors']:>9}")
    ratio = loop_stats["rps"] / empty_stats["rps"]
    print(f"saturated throughput ratio: {ratio:.2f} (target >= 0.60); paced students: p99 {paced_stats['p99']:.1f} ms "
          f"(target <= 100), errors {loop_stats['errors'] + paced_stats['errors']} (target 0); "
          f"teacher updates during the run: {teacher['teacher_updates']}")


if __name__ == "__main__":
    main()
