"""`random`: every task of the space equally likely, whatever the students report."""

from __future__ import annotations

from teacher_service.learning.teachers.base import Context, Decision, Teacher


class RandomTeacher(Teacher):
    name = "random"

    def propose(self, context: Context) -> Decision:
        return self.uniform_decision()

    def describe(self) -> dict:
        return {"distribution": "uniform"}
