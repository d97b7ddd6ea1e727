"""Read-only queries behind the inspection endpoints `/curricula/{name}/...`.

Aggregation happens in SQL, with SQLAlchemy's portable JSON operators for the report signals, so the
same queries run on SQLite and PostgreSQL and no endpoint loads a whole table into Python.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy import Float, Integer, Row, Select, Text, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from teacher_service import wire
from teacher_service.learning.informativeness import grid_cells, informativeness
from teacher_service.learning.task_spaces import BoxSpace
from teacher_service.learning.task_spaces.adroit import ADROIT_RELOCATE_ID, BALL_Z
from teacher_service.learning.task_spaces.maze import is_maze, shortest_paths
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.errors import BadRequest, NotFound
from teacher_service.serving.store.tables import Curriculum, Evaluation, Proposal, TeacherUpdate, utcnow

ACTIVE_WITHIN_S = 300.0  # a student seen this recently counts as active
COMPARE_METRICS = ("success_rate", "mean_return")  # evaluation columns `compare` aggregates
SIGNAL_SERIES = ("reward", *wire.NAMED_SIGNALS)  # the default series of `signals`
# The curriculum measure the paper plotted for Adroit: how far the ball starts from its target.
BALL_TARGET_DISTANCE = "ball_target_distance"


def utc(moment: datetime | None) -> datetime | None:
    """Query times as UTC (naive ones are taken as UTC): SQLite compares stored UTC text.
    ValueError for a time UTC cannot hold (year 9999 with a negative offset, say)."""
    if moment is None or moment.tzinfo is None:
        return None if moment is None else moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of range in UTC") from None


def time_filters(column, since: datetime | None, until: datetime | None) -> list:
    conditions = []
    if since is not None:
        conditions.append(column >= utc(since))
    if until is not None:
        conditions.append(column < utc(until))
    return conditions


def page_query(model, key, curriculum_id: int, limit: int, after: int | None, student: str | None,
               since: datetime | None, until: datetime | None):
    """One page of a curriculum's rows (proposals or evaluations) in `key` order, after the cursor `after`."""
    query = select(model).where(model.curriculum_id == curriculum_id, *time_filters(model.created_at, since, until))
    if student is not None:
        query = query.where(model.student_id == student)
    if after is not None:
        query = query.where(key > after)
    return query.order_by(key).limit(limit)


def signal_column(name: str, adroit: bool):
    """A report signal as a SQL number (NULL where the report lacks it); BadRequest if unknown."""
    if adroit and name == BALL_TARGET_DISTANCE:
        return ball_target_distance()
    if name == "reward":
        return Proposal.reward
    if name == "success":  # a JSON boolean: PostgreSQL casts it to a number only through an integer
        return cast(Proposal.signals["success"].as_boolean(), Integer)
    if name in wire.NAMED_SIGNALS:
        return Proposal.signals[name].as_float()
    if name.startswith("extra.") and len(name) > len("extra."):
        return Proposal.signals[("extra", name.removeprefix("extra."))].as_float()
    raise BadRequest(f"unknown signal {name!r}: use reward, {', '.join(wire.NAMED_SIGNALS)} or 'extra.<name>'",
                     loc=("query", "signal"))


def ball_target_distance():
    ball_x, ball_y, target_x, target_y, target_z = (Proposal.task_values[i].as_float() for i in range(5))
    return func.sqrt(
        (ball_x - target_x) * (ball_x - target_x)
        + (ball_y - target_y) * (ball_y - target_y)
        + (BALL_Z - target_z) * (BALL_Z - target_z)
    )


def number(value) -> float | None:
    """Database aggregates as plain floats (PostgreSQL gives Decimal for averages of integers)."""
    return None if value is None else float(value)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def episode_reported() -> Any:
    """A reported proposal that was an episode: one reported `abandoned` was never trained on (wire.ReportRequest),
    one `stopped` ran."""
    return and_(Proposal.reported_at.is_not(None),
                func.coalesce(Proposal.signals["outcome"].as_string(), "") != "abandoned")


def last_reported(curriculum_id: int, last: int, *columns: Any) -> Select:
    """The curriculum's `last` newest proposals among those reported, newest first: (seq, reported_at,
    task_index, task_values, *columns). Through its (curriculum_id, seq) index, which stops after `last` rows;
    ordered by report time, the query read and sorted the curriculum's whole history (225 ms at 300,000
    episodes on SQLite, against 1.6), each time an open dashboard refreshed this table."""
    return (select(Proposal.seq, Proposal.reported_at, Proposal.task_index, Proposal.task_values, *columns)
            .where(Proposal.curriculum_id == curriculum_id, episode_reported())
            .order_by(Proposal.seq.desc()).limit(last))


class Inspector:
    """Queries over one hub's database; every method opens one read-only session."""

    def __init__(self, hub: TeacherHub) -> None:
        self.hub = hub

    @contextmanager
    def _curriculum(self, name: str) -> Iterator[tuple[Session, Row]]:
        with self.hub.sessions() as session:
            yield session, self.hub.curriculum_row(session, name)

    # ------------------------------------------------------------------ history

    def history(
        self, name: str, limit: int, after: int | None, student: str | None,
        since: datetime | None, until: datetime | None,
    ) -> dict[str, Any]:
        """Proposals with their reports in proposal order; `next_after` is the cursor of the next page."""
        with self._curriculum(name) as (session, row):
            query = page_query(Proposal, Proposal.seq, row.id, limit, after, student, since, until)
            proposals = session.scalars(query).all()
            items = [
                {
                    "seq": p.seq,
                    "proposal_id": p.proposal_id,
                    "student_id": p.student_id,
                    "created_at": iso(p.created_at),
                    "teacher_version": p.teacher_version,
                    "task_index": p.task_index,
                    "task_values": p.task_values,
                    "reported_at": iso(p.reported_at),
                    "reward": p.reward,
                    "signals": p.signals,
                }
                for p in proposals
            ]
        next_after = items[-1]["seq"] if len(items) == limit else None
        return {"curriculum": name, "items": items, "next_after": next_after}

    # ------------------------------------------------------------------ evaluations

    def evaluations(
        self, name: str, limit: int, after: int | None, student: str | None,
        since: datetime | None, until: datetime | None, on_target: bool | None = None,
    ) -> dict[str, Any]:
        with self._curriculum(name) as (session, row):
            query = page_query(Evaluation, Evaluation.id, row.id, limit, after, student, since, until)
            if on_target is not None:
                query = query.where(Evaluation.on_target == on_target)
            rows = session.scalars(query).all()
            items = [
                {
                    "id": e.id,
                    "student_id": e.student_id,
                    "created_at": iso(e.created_at),
                    "env_steps": e.env_steps,
                    "episodes": e.episodes,
                    "success_rate": e.success_rate,
                    "mean_return": e.mean_return,
                    "on_target": e.on_target,
                }
                for e in rows
            ]
        next_after = items[-1]["id"] if len(items) == limit else None
        return {"curriculum": name, "items": items, "next_after": next_after}

    # ------------------------------------------------------------------ distribution

    def distribution(
        self, name: str, version: int | None, source: str | None, samples: int, bins: int, seed: int,
        buckets: int | None,
    ) -> dict[str, Any]:
        """The teacher's distribution over tasks (now, or after update `version`), or that of its proposals.

        Teachers without a policy of their own (random, env-default) are described by their proposals."""
        with self._curriculum(name) as (session, row):
            space = self.hub.runtime(row).space
            with self.hub.current_teacher(session, row) as teacher:
                state = teacher.describe()
                box_sampler = getattr(teacher, "sample_values", None)
                own = "probabilities" in state or "mean" in state
                source = source or ("teacher" if own else "proposals")
                if source == "proposals" and version is not None:
                    # Proposals span every version: counted for all of them, they would pass for that version's.
                    raise BadRequest(f"version is for the teacher's own distribution (source=teacher); the "
                                     f"{teacher.name} teacher's proposals span every version: leave version out",
                                     loc=("query", "version"))
                if source == "teacher":
                    if not own:
                        raise BadRequest(f"the {teacher.name} teacher has no distribution of its own: use source=proposals",
                                         loc=("query", "source"))
                    if version is None or version == row.teacher_version:
                        version = row.teacher_version
                        if isinstance(space, BoxSpace) and box_sampler is not None:
                            state = {**state, "sample": box_sampler(samples, seed)}
                    else:
                        state = self._stored_stats(session, row, version)
                        if ("mean" if isinstance(space, BoxSpace) else "probabilities") not in state:
                            # exp3 and learning-progress learn from every report: a distribution stored with each
                            # would cost a report one number per task (up to 10,000)
                            raise NotFound(f"the {teacher.name} teacher does not store its distribution with each "
                                           "update: ask for the current one (no version)")
            base = {"curriculum": name, "kind": space.kind, "source": source, "version": version}
            if isinstance(space, BoxSpace):
                base.update(names=space.names, low=space.low.tolist(), high=space.high.tolist())
                if source == "teacher":
                    return {**base, "mean": state["mean"], "std": state["std"],
                            **space.histograms(state.get("sample"), bins)}
                values = session.scalars(
                    select(Proposal.task_values)
                    # Not JSON null either: the proposals of a teacher without tasks of its own (env-default).
                    .where(Proposal.curriculum_id == row.id, Proposal.task_values.is_not(None),
                           cast(Proposal.task_values, Text) != "null")
                    .order_by(Proposal.seq.desc())
                    .limit(samples)
                ).all()
                return {**base, **space.histograms(np.array(values).reshape(-1, space.dim), bins)}
            base.update(names=space.names, values=space.values.tolist())
            env_id = row.spec["task_space"].get("env_id")
            if env_id and is_maze(env_id):  # how far each task's goal is from its start, for the dashboard
                paths = shortest_paths(env_id)
                base["shortest_path"] = [paths[(int(r), int(c))][(int(gr), int(gc))] for r, c, gr, gc in space.values]
            if source == "teacher":
                return {**base, "probabilities": state["probabilities"]}
            return {**base, **self._proposal_counts(session, row, space.size, buckets)}

    @staticmethod
    def _stored_stats(session: Session, row: Row, version: int) -> dict[str, Any]:
        stats = session.scalar(
            select(TeacherUpdate.stats).where(TeacherUpdate.curriculum_id == row.id, TeacherUpdate.version == version)
        )
        if stats is None:
            raise NotFound(f"no stored distribution for teacher version {version} (current: {row.teacher_version}); "
                           "versions 1 and up are stored, one per update")
        return stats

    @staticmethod
    def _proposal_counts(session: Session, row: Curriculum, size: int, buckets: int | None) -> dict[str, Any]:
        """Proposal frequencies per task; with `buckets`, also per stretch of the proposal sequence."""
        mine = (Proposal.curriculum_id == row.id, Proposal.task_index.is_not(None))
        counts = np.zeros(size, dtype=np.int64)
        for index, n in session.execute(select(Proposal.task_index, func.count()).where(*mine).group_by(Proposal.task_index)):
            counts[index] = n
        total = int(counts.sum())
        result: dict[str, Any] = {
            "proposals": total,
            "counts": counts.tolist(),
            "probabilities": (counts / total).tolist() if total else counts.astype(float).tolist(),
        }
        if buckets is None:
            return result
        first, last = session.execute(select(func.min(Proposal.seq), func.max(Proposal.seq)).where(*mine)).one()
        result["buckets"] = []
        if first is None:
            return result
        # Equal stretches of the global proposal sequence: integer arithmetic that both databases share.
        bucket = ((Proposal.seq - first) * buckets // (last - first + 1)).label("bucket")
        spans = {
            b: {"first_at": iso(start), "last_at": iso(end), "proposals": n, "counts": {}}
            for b, start, end, n in session.execute(
                select(bucket, func.min(Proposal.created_at), func.max(Proposal.created_at), func.count())
                .where(*mine).group_by(bucket)
            )
        }
        for b, index, n in session.execute(
            select(bucket, Proposal.task_index, func.count()).where(*mine).group_by(bucket, Proposal.task_index)
        ):
            spans[b]["counts"][index] = n
        result["buckets"] = [spans[b] for b in sorted(spans)]
        return result

    # ------------------------------------------------------------------ students

    def students(self, name: str, active_within_s: float) -> dict[str, Any]:
        now = utcnow()
        cutoff = now - timedelta(seconds=active_within_s)
        with self._curriculum(name) as (session, row):
            per_student: dict[str, dict[str, Any]] = {}
            finished_report = case(
                (Proposal.signals[("extra", wire.RUN_FINISHED)].as_float().is_not(None), Proposal.reported_at)
            )
            for sid, proposals, episodes, steps, proposed, reported, finished in session.execute(
                select(
                    Proposal.student_id,
                    func.count(),
                    func.count(case((episode_reported(), 1))),
                    func.sum(Proposal.signals["env_steps"].as_float()),
                    func.max(Proposal.created_at),
                    func.max(Proposal.reported_at),
                    func.max(finished_report),
                )
                .where(Proposal.curriculum_id == row.id)
                .group_by(Proposal.student_id)
            ):
                per_student[sid] = {
                    "student_id": sid, "proposals": proposals, "episodes": episodes,
                    "env_steps": int(steps or 0), "seen": [proposed, reported], "last_evaluation": None,
                    "last_target_evaluation": None,
                    # Its run ended with its last proposal; a later proposal means it was resumed.
                    "finished": finished is not None and finished >= proposed,
                }
            # The last evaluation of each student on each distribution (the environment's own, the target).
            last_ids = (
                select(func.max(Evaluation.id)).where(Evaluation.curriculum_id == row.id)
                .group_by(Evaluation.student_id, Evaluation.on_target)
            )
            for e in session.scalars(select(Evaluation).where(Evaluation.id.in_(last_ids))):
                student = per_student.setdefault(
                    e.student_id,
                    {"student_id": e.student_id, "proposals": 0, "episodes": 0, "env_steps": 0, "seen": [],
                     "last_evaluation": None, "last_target_evaluation": None, "finished": False},
                )
                student["seen"].append(e.created_at)
                student["last_target_evaluation" if e.on_target else "last_evaluation"] = {
                    "env_steps": e.env_steps, "episodes": e.episodes, "success_rate": e.success_rate,
                    "mean_return": e.mean_return, "at": iso(e.created_at),
                }
        students = []
        for student in sorted(per_student.values(), key=lambda s: s["student_id"]):
            last_seen = max(t for t in student.pop("seen") if t is not None)
            active = last_seen >= cutoff and not student["finished"]
            students.append({**student, "last_seen": iso(last_seen), "active": active})
        return {
            "curriculum": name,
            "active_within_s": active_within_s,
            "active": sum(s["active"] for s in students),
            "students": students,
        }

    def active_students(self, within_s: float = ACTIVE_WITHIN_S) -> dict[str, int]:
        """Students seen (proposal or report) within the window, per curriculum name, for /metrics."""
        cutoff = utcnow() - timedelta(seconds=within_s)
        with self.hub.sessions() as session:
            counts = dict(
                session.execute(
                    select(Curriculum.name, func.count(func.distinct(Proposal.student_id)))
                    .join(Proposal, Proposal.curriculum_id == Curriculum.id)
                    .where(or_(Proposal.created_at >= cutoff, Proposal.reported_at >= cutoff))
                    .group_by(Curriculum.name)
                ).all()
            )
            return {name: counts.get(name, 0) for name in session.scalars(select(Curriculum.name))}

    # ------------------------------------------------------------------ teacher

    def teacher(self, name: str) -> dict[str, Any]:
        with self._curriculum(name) as (session, row):
            with self.hub.current_teacher(session, row) as teacher:
                state = teacher.describe()
            last = session.execute(
                select(TeacherUpdate.version, TeacherUpdate.created_at, TeacherUpdate.stats)
                .where(TeacherUpdate.curriculum_id == row.id)
                .order_by(TeacherUpdate.version.desc())
                .limit(1)
            ).first()
            mine = Proposal.curriculum_id == row.id
            # The variance about the mean, two passes: avg(x * x) - avg(x)^2 cancels for large, nearly equal rewards.
            mean_reward = select(func.avg(Proposal.reward)).where(mine).scalar_subquery()
            deviation = Proposal.reward - mean_reward
            count, mean, variance, low, high = session.execute(
                select(
                    func.count(Proposal.reward),
                    func.avg(Proposal.reward),
                    func.avg(deviation * deviation),
                    func.min(Proposal.reward),
                    func.max(Proposal.reward),
                ).where(mine)
            ).one()
            last_update = None
            if last is not None:
                # The distribution itself is in `state` and under /distribution; here only the numbers.
                numbers = {k: v for k, v in last.stats.items() if k not in ("probabilities", "mean", "std")}
                last_update = {"version": last.version, "at": iso(last.created_at), **numbers}
            std = math.sqrt(number(variance)) if count else None
            return {
                "curriculum": name,
                "algorithm": row.spec["teacher"]["algorithm"],
                "reward_signal": row.spec["reward_signal"],
                "version": row.teacher_version,
                "updates": row.teacher_updates,
                "state": state,
                "last_update": last_update,
                "rewards": {"count": count, "mean": number(mean), "std": std, "min": number(low), "max": number(high)},
            }

    # ------------------------------------------------------------------ signals

    def signals(
        self, name: str, names: list[str] | None, every: int | None, student: str | None,
        since: datetime | None, until: datetime | None,
    ) -> dict[str, Any]:
        """Each signal over reported episodes in proposal order, in windows of `every` episodes:
        mean, min, max and count (episodes that carried it). Adroit adds the ball-to-target distance."""
        with self._curriculum(name) as (session, row):
            adroit = row.spec["task_space"].get("env_id") == ADROIT_RELOCATE_ID
            names = list(dict.fromkeys(names or [*SIGNAL_SERIES, *([BALL_TARGET_DISTANCE] if adroit else [])]))
            columns = [signal_column(n, adroit) for n in names]
            reported = [Proposal.curriculum_id == row.id, episode_reported(),
                        *time_filters(Proposal.created_at, since, until)]
            if student is not None:
                reported.append(Proposal.student_id == student)
            total = session.scalar(select(func.count()).where(*reported))
            every = every or max(1, math.ceil(total / 100))  # about 100 points by default
            episodes = select(
                (func.row_number().over(order_by=Proposal.seq) - 1).label("n"),
                Proposal.reported_at,
                *(cast(c, Float).label(f"s{i}") for i, c in enumerate(columns)),
            ).where(*reported).subquery()
            window = (episodes.c.n // every).label("window")
            aggregates = []
            for i in range(len(names)):
                value = episodes.c[f"s{i}"]
                aggregates += [func.avg(value), func.min(value), func.max(value), func.count(value)]
            rows = session.execute(
                select(window, func.count(), func.min(episodes.c.reported_at), func.max(episodes.c.reported_at),
                       *aggregates)
                .group_by(window)
                .order_by(window)
            ).all()
        series = {n: {"mean": [], "min": [], "max": [], "count": []} for n in names}
        windows = []
        for w, count, first_at, last_at, *values in rows:
            windows.append({"first_episode": int(w) * every, "episodes": count, "first_at": iso(first_at),
                            "last_at": iso(last_at)})
            for i, n in enumerate(names):
                mean, low, high, n_values = values[4 * i : 4 * i + 4]
                for key, value in (("mean", number(mean)), ("min", number(low)), ("max", number(high)),
                                   ("count", n_values)):
                    series[n][key].append(value)
        return {"curriculum": name, "every": every, "episodes": total, "windows": windows, "series": series}

    # ------------------------------------------------------------------ informativeness

    def informativeness(
        self, name: str, names: list[str] | None, last: int, bins: int, permutations: int
    ) -> dict[str, Any]:
        """For each signal, over the last `last` reported episodes (the newest proposals among those reported),
        in report order: the share of its variance explained by the task once the trend over training is
        removed (learning/informativeness.py). Box tasks are grouped into a grid of `bins` cells per
        dimension; episodes without a task are left out."""
        with self._curriculum(name) as (session, row):
            space = self.hub.runtime(row).space
            adroit = row.spec["task_space"].get("env_id") == ADROIT_RELOCATE_ID
            names = list(dict.fromkeys(names or SIGNAL_SERIES))
            columns = [cast(signal_column(n, adroit), Float) for n in names]
            rows = session.execute(last_reported(row.id, last, *columns)).all()
        rows.sort(key=lambda r: (r.reported_at, r.seq))
        rows = [r for r in rows if r.task_values is not None]  # a JSON null, which SQL's IS NULL does not see
        box = isinstance(space, BoxSpace)
        if box:
            tasks = grid_cells(space.features_of_values([r.task_values for r in rows]), bins) if rows else []
        else:
            tasks = [r.task_index for r in rows]
        tasks = np.asarray(tasks, dtype=np.int64)
        result = {}
        for i, signal in enumerate(names):
            values = np.array([np.nan if r[4 + i] is None else r[4 + i] for r in rows], dtype=np.float64)
            known = ~np.isnan(values)
            result[signal] = informativeness(tasks[known], values[known], permutations=permutations)
        grouping = f"grid of {bins} cells per dimension" if box else "task"
        return {"curriculum": name, "episodes": len(rows), "grouping": grouping, "signals": result}

    # ------------------------------------------------------------------ updates and comparison

    def updates(self, name: str, limit: int, after: int | None) -> dict[str, Any]:
        """The numbers each teacher update stored (losses, baseline, entropy...), oldest first, paged by version."""
        with self._curriculum(name) as (session, row):
            query = select(TeacherUpdate.version, TeacherUpdate.created_at, TeacherUpdate.stats).where(
                TeacherUpdate.curriculum_id == row.id
            )
            if after is not None:
                query = query.where(TeacherUpdate.version > after)
            rows = session.execute(query.order_by(TeacherUpdate.version).limit(limit)).all()
        # Only plain numbers: the distributions are under /distribution, flags are not curves.
        items = [
            {"version": version, "at": iso(at),
             **{k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for version, at, stats in rows
        ]
        next_after = items[-1]["version"] if len(items) == limit else None
        return {"curriculum": name, "items": items, "next_after": next_after}

    def compare(self, names: list[str], metric: str, on_target: bool = False) -> dict[str, Any]:
        """An evaluation metric of several curricula against environment steps: at each step, the mean,
        standard deviation, min and max over the students that evaluated there (each student's
        evaluations at one step averaged first, so a repeated evaluation does not weigh twice).
        Evaluations on the curricula's target tasks if `on_target`, else on the environment's distribution."""
        if metric not in COMPARE_METRICS:
            raise BadRequest(f"unknown metric {metric!r}: use {' or '.join(COMPARE_METRICS)}")
        for name in names:  # checked before any query: PostgreSQL fails on some characters (NUL)
            if not re.fullmatch(wire.CURRICULUM_NAME, name):
                raise BadRequest(f"{name!r} is not a curriculum name", loc=("query", "curricula"))
        curves = []
        with self.hub.sessions() as session:
            for name in names:
                row = self.hub.curriculum_row(session, name)
                per_student = (
                    select(Evaluation.env_steps, func.avg(getattr(Evaluation, metric)).label("value"))
                    .where(Evaluation.curriculum_id == row.id, Evaluation.on_target == on_target)
                    .group_by(Evaluation.student_id, Evaluation.env_steps)
                    .subquery()
                )
                rows = session.execute(
                    select(per_student.c.env_steps, per_student.c.value).order_by(per_student.c.env_steps)
                ).all()
                curve: dict[str, Any] = {"curriculum": name, "algorithm": row.spec["teacher"]["algorithm"],
                                         "env_steps": [], "students": [], "mean": [], "std": [], "min": [], "max": []}
                # Moments here, not in SQL: its avg(x * x) - avg(x)^2 cancelled, a std of 16 for three equal returns
                # of 1e9 (and 1e-8 for equal success rates).
                for steps, group in itertools.groupby(rows, key=lambda r: r[0]):
                    values = np.array([number(value) for _, value in group])
                    for key, v in (("env_steps", int(steps)), ("students", len(values)), ("mean", float(values.mean())),
                                   ("std", float(values.std())), ("min", float(values.min())),
                                   ("max", float(values.max()))):
                        curve[key].append(v)
                curves.append(curve)
        return {"metric": metric, "on_target": on_target, "curves": curves}
