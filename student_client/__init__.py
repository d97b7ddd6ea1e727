"""The student side of the teacher service: client, env adapters, SAC, gradient probes, worker."""

from student_client.client import AsyncTeacherClient, TeacherClient, TeacherError, TeacherUnavailableError

__all__ = ["AsyncTeacherClient", "TeacherClient", "TeacherError", "TeacherUnavailableError"]
