"""`env-default`: no teacher. Empty reset options, so the environment draws its own start and goal."""

from __future__ import annotations

from teacher_service.learning.teachers.base import Context, Decision, Teacher


class EnvDefaultTeacher(Teacher):
    name = "env-default"

    def propose(self, context: Context) -> Decision:
        return Decision()  # neither an index nor values: the service sends empty reset_options

    def describe(self) -> dict:
        return {"distribution": "environment default"}
