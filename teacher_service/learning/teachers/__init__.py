"""Teacher algorithms, one module each. To add one: write its module, then list its class in TEACHERS."""

from __future__ import annotations

from typing import Any

from teacher_service.learning.task_spaces import TaskSpace
from teacher_service.learning.teachers.alp_gmm import ALPGMMTeacher
from teacher_service.learning.teachers.base import Context, Decision, Experience, Teacher, TeacherParams
from teacher_service.learning.teachers.env_default import EnvDefaultTeacher
from teacher_service.learning.teachers.exp3 import Exp3Teacher
from teacher_service.learning.teachers.gradnorm_reinforce import GradNormReinforceTeacher
from teacher_service.learning.teachers.learnability import LearnabilityTeacher
from teacher_service.learning.teachers.learning_progress import LearningProgressTeacher
from teacher_service.learning.teachers.plr import PLRTeacher
from teacher_service.learning.teachers.random_teacher import RandomTeacher

TEACHERS: list[type[Teacher]] = [
    EnvDefaultTeacher,
    RandomTeacher,
    GradNormReinforceTeacher,
    ALPGMMTeacher,
    Exp3Teacher,
    LearnabilityTeacher,
    PLRTeacher,
    LearningProgressTeacher,
]
REGISTRY: dict[str, type[Teacher]] = {cls.name: cls for cls in TEACHERS}


def build_teacher(algorithm: str, space: TaskSpace, params: dict[str, Any], seed: int) -> Teacher:
    """Raises KeyError for an unknown algorithm and pydantic.ValidationError for bad params."""
    cls = REGISTRY[algorithm]
    return cls(space, cls.Params.model_validate(params), seed)


__all__ = ["REGISTRY", "TEACHERS", "Context", "Decision", "Experience", "Teacher", "TeacherParams", "build_teacher"]
