"""Teacher algorithms, one module each. Adding a teacher means adding one module here:
every module of this package is imported, and each Teacher subclass with a `name` registers itself."""

import importlib
import pkgutil

from teacher_service.teachers.base import REGISTRY, Context, Decision, Experience, Teacher, build_teacher

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Context", "Decision", "Experience", "Teacher", "build_teacher"]
