"""What a report costs when its reward is derived from earlier reports, against the curriculum's history.

`return_progress` reads the student's last reports (up to 1,000) and `<gradient signal>_normalized` the
curriculum's last 99, each the most recently reported first. This bench gives a service process (SQLite in
its data dir, or `--database-url`) curricula with a long history of reported episodes, written straight into
the database (two students taking turns, one report a millisecond; a on tasks 0 and 2, b on 1 and 3, so that
half the timed reports are of a task rare in the student's history: `return_progress` then finds few rows of the
task among the student's), then times `/report` over HTTP, one student at a time, next to a curriculum rewarded
with a raw signal. A report's time should not grow with the history.

    python bench/derived_rewards.py [--history 0 20000 100000] [--reports 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from service_load import TOKEN, start_service  # noqa: E402

from teacher_service.learning import rewards  # noqa: E402

TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(4)]}
SIGNALS = {"grad_norm_mean": 1.5, "grad_norm_episode": 0.7, "episode_return": 12.5, "env_steps": 300}
REWARD_SIGNALS = ("grad_norm_mean", "return_progress", "grad_norm_mean_normalized")


def write_history(url: str, name: str, episodes: int, derived: bool) -> None:
    """`episodes` reported episodes of students a and b, taking turns, one report a millisecond until a minute ago."""
    from sqlalchemy import insert, select

    from teacher_service.serving.store.tables import Curriculum, Proposal, make_engine

    engine = make_engine(url, request_threads=4)
    with engine.connect() as conn:
        curriculum_id = conn.scalar(select(Curriculum.id).where(Curriculum.name == name))
    start = datetime.now(timezone.utc) - timedelta(minutes=1, milliseconds=episodes)
    signals = orjson.loads(orjson.dumps(SIGNALS))
    with engine.begin() as conn:
        for first in range(0, episodes, 10_000):
            rows = []
            for k in range(first, min(first + 10_000, episodes)):
                at = start + timedelta(milliseconds=k)
                rows.append({
                    "proposal_id": uuid.uuid4().hex, "curriculum_id": curriculum_id, "student_id": "ab"[k % 2],
                    "task_index": k % 4, "task_values": [float(k % 4)], "reset_options": {}, "teacher_version": 0,
                    "teacher_input": {}, "created_at": at, "expires_at": at + timedelta(hours=1), "reported_at": at,
                    "derived_window_at": at if derived else None, "reward": 1.0, "signals": signals,
                    "ack": {"proposal_id": "x", "reward": 1.0, "teacher_version": 0, "teacher_updated": False},
                })
            conn.execute(insert(Proposal), rows)
    engine.dispose()


def time_reports(client: httpx.Client, name: str, reports: int) -> list[float]:
    """Seconds of each of `reports` reports (students a and b taking turns), proposals made beforehand."""
    times = []
    for k in range(reports):
        student = "ab"[k % 2]
        proposal = client.post("/propose", json={"curriculum": name, "student_id": student}).raise_for_status().json()
        body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": SIGNALS}
        start = time.perf_counter()
        client.post("/report", json=body).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, nargs="+", default=[0, 20_000, 100_000],
                        help="reported episodes already in each curriculum")
    parser.add_argument("--reports", type=int, default=200, help="reports timed per curriculum")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary data dir")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="derived-rewards-"))
    env = {**os.environ, "TEACHER_ADMIN_TOKEN": TOKEN, "TEACHER_STUDENT_TOKEN": "student-" + TOKEN,
           "TEACHER_DATA_DIR": str(data), "TEACHER_LOG_LEVEL": "warning"}
    url = args.database_url or f"sqlite:///{data / 'teacher.db'}"
    process, service_url = start_service(env, url)
    results: dict[tuple[str, int], list[float]] = {}
    try:
        with httpx.Client(base_url=service_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for history in args.history:
                for signal in REWARD_SIGNALS:
                    name = f"{signal}-{history}"
                    client.post("/curricula", json={"name": name, "task_space": TASKS, "teacher": {"algorithm": "random"},
                                                    "reward_signal": signal}).raise_for_status()
                    write_history(url, name, history, signal in rewards.DERIVED_SIGNALS)
                    time_reports(client, name, 10)  # warm-up: the curriculum's teacher loaded
                    results[signal, history] = time_reports(client, name, args.reports)
    finally:
        process.terminate()
        process.wait()
    print(f"/report over HTTP, one at a time, {args.reports} per curriculum, "
          f"{'SQLite' if url.startswith('sqlite') else 'PostgreSQL'}; ms, median (p90)")
    print(f"{'history (episodes)':<28}" + "".join(f"{h:>18,}" for h in args.history))
    for signal in REWARD_SIGNALS:
        cells = []
        for history in args.history:
            t = sorted(results[signal, history])
            cells.append(f"{1e3 * statistics.median(t):.2f} ({1e3 * t[int(0.9 * len(t))]:.2f})")
        print(f"{signal:<28}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
