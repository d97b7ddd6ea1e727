"""Wire schemas shared by the service and the students.

This module is the whole contract between a student and the teacher service. It imports
pydantic only, so `student_client` can use it without pulling in the service's database or
torch code.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

# Anything larger than this is a unit error or a diverged student, not a gradient norm.
MAX_MAGNITUDE = 1e12

StudentId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# Not only dots: `.` and `..` would be path segments that clients resolve away in /curricula/{name}.
CURRICULUM_NAME = r"^[A-Za-z0-9_.\-]*[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$"
CurriculumName = Annotated[str, Field(min_length=1, max_length=64, pattern=CURRICULUM_NAME)]
# Signal names become paths into the stored JSON in SQL (SQLite and PostgreSQL spell them differently):
# characters such as quotes, braces, commas and NUL cannot be there.
SignalName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")]


def json_number(value: Any) -> Any:
    """A number as JSON writes one: pydantic would take "2.5" and true for numbers (a report's signals, stored and
    rewarded as 2.5 and 1.0). numpy's numbers pass."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"should be a number, not {'a boolean' if isinstance(value, bool) else 'text'}")
    return value


def json_boolean(value: Any) -> Any:
    """true or false (or 1 and 0), not text such as "yes", which pydantic would take for true."""
    if isinstance(value, (str, bytes)):
        raise ValueError("should be true or false, not text")
    return value


FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
# What students measure and send: JSON numbers only. Not the specs of curricula, whose YAML (1.1) files read 1e3 as
# text. The constraints first: in the number's own schema, which checks for NaN and infinity before the bounds.
Measured = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE), BeforeValidator(json_number)]
NonNegative = Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_MAGNITUDE), BeforeValidator(json_number)]
Count = Annotated[int, Field(ge=0, le=10**12), BeforeValidator(json_number)]
JsonBool = Annotated[bool, BeforeValidator(json_boolean)]
# Free-form JSON from users (reset options, teacher parameters) is stored and sent back as JSON:
# finite numbers only (JSON has no NaN), integers within 64 bits (orjson, which stores the hot path's JSON,
# writes no wider ones), and nesting bounded well below what its encoders can write.
MAX_JSON_DEPTH = 16
MAX_JSON_ITEMS = 10_000


def unicode_text(text: str) -> str:
    """Refuse a string with a lone surrogate (JSON's "\\ud800" escapes allow it): neither the databases nor
    the JSON encoders here can store one. Typed string fields get this from pydantic; free-form JSON from here."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate is not Unicode text") from None
    return text


def plain_json(value: Any) -> Any:
    items = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal items
        items += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if items > MAX_JSON_ITEMS:
            raise ValueError(f"more than {MAX_JSON_ITEMS} values")
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError("NaN and infinity are not allowed (JSON has no such numbers)")
        if isinstance(node, int) and not -(2**63) <= node < 2**64:
            raise ValueError("integers beyond 64 bits are not allowed")
        if not isinstance(node, (str, int, float, dict, list, tuple)) and node is not None:
            # What JSON cannot hold (bytes, a set, a date: YAML has them), refused here, not by the encoder later.
            raise ValueError(f"a {type(node).__name__} is not a JSON value")
        if isinstance(node, str):
            unicode_text(node)
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    raise ValueError(f"keys must be strings, not {key!r}")
                unicode_text(key)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        for child in children:
            walk(child, depth + 1)

    walk(value, 0)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(plain_json)]

# The signals a report may carry by name; any of them can be a curriculum's reward.
NAMED_SIGNALS = (
    "grad_norm_mean",
    "grad_norm_episode",
    "critic_grad_norm_mean",
    "critic_grad_norm_episode",
    "grad_norm_local",
    "critic_grad_norm_local",
    "positive_value_loss",
    "episode_return",
    "success",
    "env_steps",
    "grad_updates",
)
# An `extra` signal (1.0) on the report of a student's last episode of its run (`--steps` reached):
# the dashboard then shows the student as finished instead of active.
RUN_FINISHED = "run_finished"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudentContext(WireModel):
    """What the student knows about its last episode; the teacher may condition on it."""

    last_return: Measured | None = None
    last_task: list[Measured] | None = Field(default=None, max_length=64)


class ProposeRequest(WireModel):
    curriculum: CurriculumName
    student_id: StudentId
    context: StudentContext | None = None


class Task(WireModel):
    """A task in the teacher's own coordinates."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a discrete space's tasks are shared by its proposals

    index: int | None = Field(default=None, description="Index in a discrete task space.")
    name: str | None = None
    values: list[float] = Field(description="Coordinates: maze cells or box values.")


class Proposal(WireModel):
    proposal_id: str
    curriculum: str
    student_id: str
    task: Task | None = Field(description="None when the environment picks its own start (env-default).")
    reset_options: dict[str, Any] = Field(description=(
        "Where the episode starts, for env.reset(options=...), as JSON has it (lists, not arrays). Pass it through "
        "student_client.envs.reset_options(env, reset_options): a raw gymnasium-robotics Adroit env needs numpy "
        "arrays (README, Students)."))
    teacher_version: int
    expires_at: datetime


class Signals(WireModel):
    """What the student measured while training on one episode.

    Gradient norms are of the actor (`grad_norm_*`) and critic (`critic_grad_norm_*`):
    `*_mean` is the mean over the episode's updates of ||g_t||, `*_episode` is ||(1/N) sum_t g_t||,
    `*_local` is the norm of the loss gradient on a batch of this episode's own transitions only
    (no optimizer step). `positive_value_loss` is PLR's score: the mean over the episode's transitions
    of max(TD error, 0). They are None for an episode that had no gradient update (before learning starts).
    """

    grad_norm_mean: NonNegative | None = None
    grad_norm_episode: NonNegative | None = None
    critic_grad_norm_mean: NonNegative | None = None
    critic_grad_norm_episode: NonNegative | None = None
    grad_norm_local: NonNegative | None = None
    critic_grad_norm_local: NonNegative | None = None
    positive_value_loss: NonNegative | None = None
    episode_return: Measured | None = None
    success: JsonBool | None = None
    env_steps: Count | None = None
    grad_updates: Count | None = None
    extra: dict[SignalName, Measured] = Field(default_factory=dict, max_length=64)

    def value(self, signal: str) -> float | None:
        """The number a teacher is rewarded with: a named signal or `extra.<name>`."""
        if signal.startswith("extra."):
            return self.extra.get(signal.removeprefix("extra."))
        raw = getattr(self, signal)
        return None if raw is None else float(raw)


class ReportRequest(WireModel):
    proposal_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    student_id: StudentId
    signals: Signals
    outcome: Literal["completed", "stopped", "abandoned"] = Field(
        default="completed",
        description="completed: the environment ended the episode. stopped: the student cut it short "
        "(a stop signal, close, a reset in mid-episode); the signals cover the part that ran. abandoned: "
        "the proposal was never trained on (it is released). Only completed episodes reward the teacher.",
    )


class ReportAck(WireModel):
    proposal_id: str
    reward: float | None = Field(description="The teacher's reward for this proposal; None if the signal was missing.")
    teacher_version: int = Field(
        description="The teacher version that learns from this report's batch if `teacher_updated`, else the "
        "latest version scheduled when the report was stored. Updates are applied after the acknowledgement, "
        "in order, within moments: `GET /curricula/{name}` shows the version applied so far."
    )
    teacher_updated: bool = Field(
        description="Whether this report completed a batch: the teacher update to `teacher_version` is scheduled."
    )


class EvaluationRequest(WireModel):
    """An evaluation of a student: on the curriculum's target tasks, or the environment's default distribution."""

    curriculum: CurriculumName
    student_id: StudentId
    env_steps: Count
    episodes: Annotated[int, Field(ge=1, le=10**6), BeforeValidator(json_number)]
    success_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False), BeforeValidator(json_number)]
    mean_return: Measured
    on_target: JsonBool = Field(
        default=False,
        description="True when the episodes ran on the curriculum's target tasks (GET /curricula/{name}/target); "
        "false for the environment's own start and goal distribution.",
    )
    idempotency_key: str = Field(
        default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Unique to this evaluation (a new one is drawn where it is built): a resend with the same key is "
        "answered with the first one's id and stores nothing; the same key with other values is a 409.",
    )


class EvaluationAck(WireModel):
    evaluation_id: int


# ---------------------------------------------------------------- curricula


class PresetTaskSpace(WireModel):
    """A task space derived from a gymnasium-robotics environment id (mazes, AdroitHandRelocate-v1)."""

    kind: Literal["preset"] = "preset"
    env_id: str = Field(min_length=1, max_length=128)
    goal_cell: tuple[Annotated[int, Field(ge=0, le=1_000)], Annotated[int, Field(ge=0, le=1_000)]] | None = Field(
        default=None,
        description="Mazes only: a fixed goal [row, col] (a free cell); the teacher then chooses among start cells "
        "for it. Tasks keep the pair coordinates [reset_row, reset_col, goal_row, goal_col].",
    )


class NamedTask(WireModel):
    name: str = Field(min_length=1, max_length=128)
    reset_options: JsonObject = Field(default_factory=dict)
    values: list[FiniteFloat] | None = Field(default=None, max_length=64)


class DiscreteTaskSpace(WireModel):
    """Your own environment: a list of named tasks, each with the reset options it stands for."""

    kind: Literal["discrete"] = "discrete"
    tasks: list[NamedTask] = Field(min_length=1, max_length=10_000)


class BoxTaskSpace(WireModel):
    """Your own environment: a box; the student gets `{option_key: [values...]}` as reset options."""

    kind: Literal["box"] = "box"
    low: list[FiniteFloat] = Field(min_length=1, max_length=64)
    high: list[FiniteFloat] = Field(min_length=1, max_length=64)
    names: list[Annotated[str, Field(max_length=128)]] | None = Field(default=None, max_length=64)
    option_key: str = Field(default="task", min_length=1, max_length=64)


TaskSpaceSpec = Annotated[Union[PresetTaskSpace, DiscreteTaskSpace, BoxTaskSpace], Field(discriminator="kind")]


class TeacherSpec(WireModel):
    algorithm: str = Field(
        default="gradnorm-reinforce", max_length=64, description="A registered teacher, see GET /teachers."
    )
    params: JsonObject = Field(default_factory=dict, description="The teacher's own parameters.")


class TargetSpec(WireModel):
    """The tasks a curriculum is evaluated on (its target distribution): exactly one of `tasks` and `farthest`.
    Students evaluate on them; inspection and the dashboard report success on them."""

    tasks: list[JsonObject] | None = Field(
        default=None,
        min_length=1,
        max_length=1_000,
        description="The reset options of each target task. Maze presets: `{reset_cell: [r, c], goal_cell: [r, c]}`, "
        "two distinct free cells of the maze (any pair, whatever the teacher may propose). Discrete spaces: the "
        "reset options of one of its tasks (`{task: <name>}` for a task given without reset_options). Box spaces: "
        "the reset options of a point within the bounds (`{<option_key>: [values...]}`).",
    )
    farthest: int | None = Field(
        default=None,
        ge=1,
        le=1_000,
        description="Maze presets: the N start-goal pairs of the task space farthest apart by shortest path "
        "(ties in task order; with `goal_cell`, the N starts farthest from it). More than the task space has: 422.",
    )

    @model_validator(mode="after")
    def exactly_one(self) -> "TargetSpec":
        if (self.tasks is None) == (self.farthest is None):
            raise ValueError("give exactly one of 'tasks' and 'farthest'")
        return self


# How the 404 of GET /curricula/{name}/target for a curriculum without target tasks ends its detail; the other 404,
# for no curriculum by that name, does not say it (a curriculum's name has no spaces).
NO_TARGET_TASKS = "has no target tasks"


class TargetTasks(WireModel):
    """A curriculum's target tasks, resolved: what a student passes to env.reset(options=...) to evaluate."""

    reset_options: list[dict[str, Any]]


class CurriculumCreate(WireModel):
    name: CurriculumName
    task_space: TaskSpaceSpec
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    reward_signal: SignalName = Field(default="grad_norm_mean", description="A named signal or `extra.<name>`.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    proposal_ttl_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600, allow_inf_nan=False)] | None = Field(
        default=None, description="Seconds before an unreported proposal expires, 1 s to 30 days (shorter, it would "
        "expire before its student could act on it); the service default if None."
    )
    target: TargetSpec | None = Field(
        default=None, description="The tasks students evaluate on; None: the environment's default distribution."
    )


class CurriculumInfo(CurriculumCreate):
    task_space_summary: dict[str, Any]
    teacher_version: int
    teacher_updates: int
    created_at: datetime


# ---------------------------------------------------------------- batch verbs

# The most items a batch may hold on the wire; a service may set a lower limit (TEACHER_MAX_BATCH_ITEMS).
MAX_BATCH_ITEMS = 10_000
# Any item is taken, so that one that is not an object fails alone (api/episodes.py validates each); the schema says
# what a valid one is.
BatchItems = Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH_ITEMS,
                                        json_schema_extra={"items": {"type": "object"}})]


class ItemError(WireModel):
    """Why one item of a batch was refused: the status and detail the single verb would have answered."""

    status: int
    detail: Any = Field(description="For 422 a list of {loc, msg, type}, for other statuses a message.")


def item_problems(exc: ValidationError) -> list[dict[str, Any]]:
    """A batch item's validation errors as the 422 `detail` the single verb gives its body (located under `body`):
    the service's answer to an invalid item, and the client's own for an item it will not send."""
    return [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


class ProposeBatchRequest(WireModel):
    """Many proposals in one call, e.g. one per environment of a vectorized learner. Each item is what
    `POST /propose` takes; an item that is not valid (not an object too) gets its own 422 entry, as `/propose` would
    answer it (the body must be valid JSON)."""

    items: BatchItems


class ProposeBatchItem(WireModel):
    """One item's answer: its proposal, or its error."""

    proposal: Proposal | None = None
    error: ItemError | None = None


class ProposeBatchResponse(WireModel):
    results: list[ProposeBatchItem] = Field(description="One per item, in the order of the request.")


class ReportBatchRequest(WireModel):
    """Many reports in one call, stored in one transaction. Each item is what `POST /report` takes and is
    idempotent as it is; an item that is not valid (not an object too) gets its own 422 entry, as `/report` would
    answer it (the body must be valid JSON)."""

    items: BatchItems


class ReportBatchItem(WireModel):
    """One item's answer: its acknowledgement, or its error."""

    ack: ReportAck | None = None
    error: ItemError | None = None


class ReportBatchResponse(WireModel):
    results: list[ReportBatchItem] = Field(description="One per item, in the order of the request.")
