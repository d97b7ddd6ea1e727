"""Launch overhead of the Ray launcher: what a run started through Ray costs more than a local process.

The same short run (`student-worker --help`: the worker's imports, then exit) is started through the
local launcher and through Ray, one run at a time, interleaved, and timed from `start()` until the
launcher reports its exit. The median of the paired differences (each local run and the Ray run after it)
is Ray's overhead per run; connecting to the cluster is paid once per acl-run or acl-experiment and
printed apart.

    python bench/ray_launch.py                          # RAY_ADDRESS, ray start's cluster, or a new one
    python bench/ray_launch.py --ray-address HOST:PORT  # an existing cluster
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from teacher_service.launch.launchers import Launcher, LocalLauncher, Resources
from teacher_service.launch.ray_launcher import RayLauncher


def timed_run(launcher: Launcher, workdir: Path) -> float:
    start = time.perf_counter()
    handle = launcher.start(["--help"], workdir, {"OMP_NUM_THREADS": "1"})
    while handle.poll() is None:
        time.sleep(0.005)
    if handle.returncode != 0:
        raise SystemExit(f"the run failed ({handle.returncode}); see {workdir / 'worker.log'}")
    return time.perf_counter() - start


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ray-address", default=None, help="an existing cluster (default: start one on this machine)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per launcher")
    args = p.parse_args()

    start = time.perf_counter()
    ray = RayLauncher(args.ray_address, Resources(cpus=1), max_retries=0, service_on_loopback=True,
                      who="ray_launch")
    connect = time.perf_counter() - start
    local = LocalLauncher()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first_ray, first_local = timed_run(ray, workdir), timed_run(local, workdir)  # warm-up, not counted
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(args.runs):
            times["local"].append(timed_run(local, workdir))
            times["ray"].append(timed_run(ray, workdir))
    ray.close()

    differences = [r - loc for loc, r in zip(times["local"], times["ray"])]
    low, overhead, high = statistics.quantiles(differences, n=4)
    print(f"ray.init (connect, or start a cluster here), once per command: {connect:.2f} s")
    print(f"first run (not counted): ray {first_ray:.3f} s, local {first_local:.3f} s")
    for name, values in times.items():
        print(f"{name:5} {summary(values)} over {args.runs} runs")
    print(f"Ray launch overhead per run (ray - local, paired): median {overhead:+.3f} s, quartiles {low:+.3f} "
          f"and {high:+.3f} (goal: at most 2 s)")


if __name__ == "__main__":
    main()
