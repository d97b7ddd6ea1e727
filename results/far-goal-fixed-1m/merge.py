"""Builds this directory's result CSVs: results/far-goal-fixed-20's rows (20 seeds of env-default and alp-gmm to
500k), then the evaluations after 500k of the 7 env-default runs continued here (the grid's own evaluations.csv,
read first). Rerunning it gives the same files; `acl-experiment --analyze-only --threshold 0.5 --out
results/far-goal-fixed-1m` then writes the summary (budget 1M from experiment.json)."""

import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = HERE.parent / "far-goal-fixed-20"
CONTINUED = {0, 4, 12, 13, 15, 17, 18}


def rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def write(path: Path, header: list[str], body: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])


header, base = rows(BASE / "evaluations.csv")
continued_path = HERE / "continued_evaluations.csv"
if not continued_path.exists():  # the first run: keep the grid's own rows under their own name
    (HERE / "evaluations.csv").rename(continued_path)
_, continued = rows(continued_path)
assert {(r[0], int(r[1])) for r in continued} == {("env-default", s) for s in CONTINUED}
assert all(int(r[2]) > 500_000 for r in continued)
write(HERE / "evaluations.csv", header, base + continued)
for name in ("proposals.csv", "informativeness.csv"):  # the continued runs are env-default's: no proposed tasks
    write(HERE / name, *rows(BASE / name))
