"""What every teacher is: propose a task, learn from a batch of rewarded proposals, checkpoint itself."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from teacher_service.learning.task_spaces import DiscreteSpace, TaskSpace


class TeacherParams(BaseModel):
    """Parameters every teacher accepts; subclasses add their own."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Context:
    """What the teacher may condition on: the student's last episode."""

    last_return: float | None = None
    last_task_features: np.ndarray | None = None


@dataclass
class Decision:
    """A proposed task and what the teacher must remember to learn from its reward later."""

    task_index: int | None = None
    task_values: list[float] | None = None
    teacher_input: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experience:
    """A reported proposal as a teacher learns from it."""

    seq: int
    student_id: str
    trajectory: int  # proposals of one student grouped into one trajectory share this id
    task_index: int | None
    task_values: list[float] | None
    teacher_input: dict[str, Any]
    reward: float


class Teacher:
    name: ClassVar[str]
    Params: ClassVar[type[TeacherParams]] = TeacherParams
    # Batching contract with the service: `horizon` consecutive reported episodes of one student form
    # a trajectory; the teacher is updated once `batch_size` episodes in complete trajectories wait.
    # batch_size 0 means the teacher never learns. Subclasses override them as attributes or properties.
    horizon: int = 1
    batch_size: int = 0
    # The service stores the checkpoint every `checkpoint_every` updates and, when it loads one, replays the
    # updates made since from their stored batches (`updates` counts them): a teacher whose checkpoint grows
    # with its history need not rewrite it on every update.
    checkpoint_every: int = 1
    # The reward signals this teacher can learn from, as "name" or "extra.*"; None: any.
    reward_signals: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def accepts_reward_signal(cls, signal: str) -> bool:
        if cls.reward_signals is None:
            return True
        return signal in cls.reward_signals or ("extra.*" in cls.reward_signals and signal.startswith("extra."))

    def __init__(self, space: TaskSpace, params: TeacherParams, seed: int) -> None:
        self.space = space
        self.params = params
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    @property
    def uses_context(self) -> bool:
        """Whether propose() looks at the student's last episode (the service then looks it up)."""
        return False

    def propose(self, context: Context) -> Decision:
        raise NotImplementedError

    def propose_many(self, contexts: list[Context]) -> list[Decision]:
        """A decision per context: what that many propose() calls in order give, drawing the same random
        numbers. Teachers that can decide for many at once (one network forward) override it."""
        return [self.propose(context) for context in contexts]

    def update(self, batch: list[Experience]) -> dict[str, Any]:
        """Learn from a batch; returns statistics to keep (loss, reward statistics...)."""
        raise NotImplementedError(f"{self.name} does not learn")

    def describe(self) -> dict[str, Any]:
        """The teacher's current state for inspection (distribution, parameters of interest)."""
        return {}

    # ------------------------------------------------------------------ checkpoints

    def extra_state(self) -> dict[str, Any]:
        """Subclasses add networks, optimizers and their own counters here."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_bytes(self) -> bytes:
        state = {"generator": self.generator.get_state(), "updates": self.updates, **self.extra_state()}
        return pickle.dumps(_pack(state), protocol=pickle.HIGHEST_PROTOCOL)

    def load_state_bytes(self, blob: bytes) -> None:
        # Our own checkpoints from our own database: trusted, like torch.load(weights_only=False).
        state = _unpack(pickle.loads(blob))
        self.generator.set_state(state.pop("generator"))
        self.updates = state.pop("updates")
        self.load_extra_state(state)

    # ------------------------------------------------------------------ helpers for subclasses

    def uniform_decision(self) -> Decision:
        if isinstance(self.space, DiscreteSpace):
            index = int(torch.randint(self.space.size, (1,), generator=self.generator))
            return Decision(task_index=index)
        unit = torch.rand(self.space.dim, generator=self.generator, dtype=torch.float64) * 2 - 1
        return Decision(task_values=self.space.from_unit(unit.numpy()).tolist())


@dataclass
class _PackedTensor:
    array: np.ndarray


# A teacher's checkpoint holds dozens of small tensors; pickling them as numpy arrays is about 8x
# faster than torch.save, and a checkpoint is written at every teacher update.
def _pack(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _PackedTensor(obj.detach().cpu().numpy())
    if isinstance(obj, dict):
        return {key: _pack(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(value) for value in obj)
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, _PackedTensor):
        return torch.from_numpy(obj.array)
    if isinstance(obj, dict):
        return {key: _unpack(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(value) for value in obj)
    return obj
