"""Curricula declared in a YAML file, created at start-up if missing.

The file holds `curricula:`, a list of `POST /curricula` bodies (wire.CurriculumCreate), each with its
optional `target` (the tasks its students evaluate on, e.g. `target: {farthest: 10}` on a maze). Existing
curricula, and the state their teachers have learned, are left alone, so restarting the service (or
starting another replica) with the same file changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
import yaml

from teacher_service import wire
from teacher_service.serving.hub import TeacherHub, validation_message
from teacher_service.serving.infra.errors import ApiError

log = logging.getLogger("teacher_service")


class CurriculaFileError(ValueError):
    """The curricula file is missing or wrong; the message names the file and the problem."""


class CurriculaFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    curricula: list[wire.CurriculumCreate]

    @pydantic.field_validator("curricula")
    @classmethod
    def unique_names(cls, curricula: list[wire.CurriculumCreate]) -> list[wire.CurriculumCreate]:
        names = [c.name for c in curricula]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"curriculum names must be unique, repeated: {', '.join(duplicates)}")
        return curricula


def load_curricula(path: Path) -> list[wire.CurriculumCreate]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CurriculaFileError(f"curricula file {path}: cannot read it: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CurriculaFileError(f"curricula file {path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise CurriculaFileError(f"curricula file {path}: not valid YAML: {exc}") from exc
    try:
        return CurriculaFile.model_validate(data).curricula
    except pydantic.ValidationError as exc:
        raise CurriculaFileError(f"curricula file {path}: {validation_message(exc)}") from exc


def create_curricula(hub: TeacherHub, path: Path) -> list[wire.CurriculumInfo]:
    """Create the file's curricula that do not exist yet; returns all of them as stored."""
    stored = []
    for spec in load_curricula(path):
        try:
            info = hub.create_curriculum(spec, exist_ok=True)
        except ApiError as exc:  # unknown teacher, bad parameters, unknown environment...
            raise CurriculaFileError(f"curricula file {path}: curriculum {spec.name!r}: {exc.detail}") from exc
        stored_spec = wire.CurriculumCreate.model_validate(info.model_dump(include=set(wire.CurriculumCreate.model_fields)))
        if not _same(stored_spec, spec):
            log.warning("curriculum %r exists with another spec than in %s; it is left as it is", spec.name, path)
        stored.append(info)
    return stored


def _same(stored: wire.CurriculumCreate, given: wire.CurriculumCreate) -> bool:
    """Whether the file's spec is the stored one, parameters compared as the teacher reads them (a curriculum stored
    before they were stored that way has "4" where the file has 4)."""
    try:
        return TeacherHub.as_read(stored) == TeacherHub.as_read(given)
    except (KeyError, pydantic.ValidationError):  # stored by a version whose teacher took other parameters
        return False
