"""What an open dashboard costs the service, against the curriculum's history.

Each refresh of the dashboard reads whole-history aggregates (the reward curve, students, proposal counts per
task, reward statistics), so its cost grows with the run. This bench gives a service process (SQLite in its
data dir) a PointMaze curriculum with a history of reported episodes written straight into the database, then
makes the requests of one dashboard refresh (static/dashboard.js `refresh`, informativeness every 6th as the
page does) and measures the service process's CPU time per refresh and the wall time the page waits. The
page waits `max(refresh, 20 x the last refresh's wall time)` between refreshes (dashboard.js `nextPollMs`): the
last column is the share of one core that one open dashboard then takes, against the fixed 5 s it had before.

    python bench/dashboard_load.py [--history 1000 20000 80000] [--refreshes 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from derived_rewards import write_history  # noqa: E402
from service_load import TOKEN, start_service  # noqa: E402

REFRESH_S = 5.0  # the dashboard's default ?refresh=
SLOWDOWN = 20  # dashboard.js: a refresh waits at least this many times the last one took


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def refresh(client: httpx.Client, name: str, with_informativeness: bool) -> None:
    """The requests of one dashboard refresh of a maze curriculum with one student selected."""
    base = f"/curricula/{name}"
    paths = ["/curricula", f"{base}/teacher", f"{base}/signals?signal=reward", f"{base}/students?active_within_s=300",
             f"{base}/evaluations?limit=10000", f"{base}/distribution?source=proposals&buckets=40",
             f"/compare?curricula={name}&metric=success_rate&on_target=false", f"{base}/updates?limit=10000",
             f"{base}/signals?student=a&signal=episode_return&signal=success&signal=grad_norm_mean"
             "&signal=grad_norm_episode&signal=critic_grad_norm_mean&signal=critic_grad_norm_episode"]
    if with_informativeness:
        paths.append(f"{base}/informativeness?last=2000&permutations=100")
    for path in paths:
        client.get(path).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, nargs="+", default=[1_000, 20_000, 80_000],
                        help="reported episodes in the curriculum")
    parser.add_argument("--refreshes", type=int, default=6, help="refreshes timed per history (one informativeness)")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="dashboard-load-"))
    env = {**os.environ, "TEACHER_ADMIN_TOKEN": TOKEN, "TEACHER_STUDENT_TOKEN": "student-" + TOKEN,
           "TEACHER_DATA_DIR": str(data), "TEACHER_LOG_LEVEL": "warning"}
    url = f"sqlite:///{data / 'teacher.db'}"
    process, service_url = start_service(env, url)
    rows = []
    try:
        with httpx.Client(base_url=service_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
            for history in args.history:
                name = f"maze-{history}"
                client.post("/curricula", json={
                    "name": name, "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"},
                    "teacher": {"algorithm": "gradnorm-reinforce"}}).raise_for_status()
                write_history(url, name, history, derived=False)
                refresh(client, name, True)  # warm-up
                cpu, wall = process_cpu_s(process.pid), time.perf_counter()
                for k in range(args.refreshes):
                    refresh(client, name, k == 0)
                cpu = (process_cpu_s(process.pid) - cpu) / args.refreshes
                wall = (time.perf_counter() - wall) / args.refreshes
                rows.append((history, cpu, wall))
    finally:
        process.terminate()
        process.wait()
    print(f"one dashboard refresh, {args.refreshes} timed per history, SQLite; service CPU and the page's wait")
    print(f"{'history (episodes)':>20}{'CPU ms':>10}{'wall ms':>10}{'every 5 s':>12}{'adaptive':>12}")
    for history, cpu, wall in rows:
        interval = max(REFRESH_S, SLOWDOWN * wall)
        print(f"{history:>20,}{1e3 * cpu:>10.0f}{1e3 * wall:>10.0f}{cpu / REFRESH_S:>12.1%}{cpu / interval:>12.1%}")


if __name__ == "__main__":
    main()
