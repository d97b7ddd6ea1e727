"""Bearer tokens: an admin token manages curricula, a student token proposes and reports.

Tokens come from settings. Without them (and without --insecure) the service generates both at
first start and keeps them in `<data_dir>/tokens.json`, readable by its owner only.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from teacher_service.serving.infra.errors import Forbidden, Unauthorized
from teacher_service.serving.infra.private_files import private_dir
from teacher_service.serving.settings import Settings

log = logging.getLogger("teacher_service")


@dataclass(frozen=True)
class Tokens:
    admin: str | None
    student: str | None
    insecure: bool = False
    path: Path | None = None  # where generated tokens are kept, if they were generated

    def role(self, presented: str | None) -> str | None:
        """'admin', 'student' or None for a token that is missing or wrong."""
        if self.insecure:
            return "admin"
        if presented is None:
            return None
        # As bytes: compare_digest refuses str with non-ASCII characters, and a header may carry any.
        given = presented.encode()
        if self.admin and secrets.compare_digest(given, self.admin.encode()):
            return "admin"
        if self.student and secrets.compare_digest(given, self.student.encode()):
            return "student"
        return None

    def dashboard_url(self, base_url: str) -> str:
        """The dashboard with the student (read) token in the fragment, which browsers never send."""
        return f"{base_url}/" if self.insecure or not self.student else f"{base_url}/#token={self.student}"


class TokensFileError(ValueError):
    """The generated tokens file cannot be read; the message names the file and what to do."""


def _stored_tokens(path: Path) -> dict[str, str]:
    try:
        stored = json.loads(path.read_text())
    except ValueError:  # not JSON, or not UTF-8
        stored = None
    tokens = [stored.get(key) for key in ("admin_token", "student_token")] if isinstance(stored, dict) else []
    if len(tokens) != 2 or not all(isinstance(token, str) and token for token in tokens):
        # Empty after a crash in the first start's write, or edited: a traceback told the operator neither.
        raise TokensFileError(f"{path} does not hold the two tokens this service generated (admin_token and "
                              "student_token, non-empty strings): delete it to generate new ones, or set "
                              "TEACHER_ADMIN_TOKEN and TEACHER_STUDENT_TOKEN")
    return stored


def load_tokens(settings: Settings) -> Tokens:
    if settings.insecure:
        return Tokens(None, None, insecure=True)
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    student = settings.student_token.get_secret_value() if settings.student_token else None
    if admin and student:
        return Tokens(admin, student)
    path = settings.data_dir / "tokens.json"
    if path.exists():
        stored = _stored_tokens(path)
    else:
        private_dir(path.parent)
        stored = {"admin_token": secrets.token_urlsafe(32), "student_token": secrets.token_urlsafe(32)}
        # Created with owner-only permissions from the start, never readable by others even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=2)
            f.flush()
            os.fsync(f.fileno())  # on disk before the tokens are printed and handed out
        log.warning("generated API tokens in %s (owner-only); use them as 'Authorization: Bearer <token>'", path)
    return Tokens(admin or stored["admin_token"], student or stored["student_token"], path=path)


_bearer = HTTPBearer(auto_error=False, description="Admin or student token")


def _role(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    role = request.app.state.tokens.role(credentials.credentials if credentials else None)
    if role is None:
        raise Unauthorized("missing or wrong bearer token" if credentials else "missing bearer token")
    return role


# One dependency each over the bearer scheme (which documents the token in OpenAPI): each level of dependencies
# costs FastAPI's event loop a few microseconds on every student request.
async def require_student(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """Students and admins may propose, report and read."""
    return _role(request, credentials)


async def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    role = _role(request, credentials)
    if role != "admin":
        raise Forbidden("this needs the admin token")
    return role
