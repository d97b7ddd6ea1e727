"""Errors the service answers with, and their one model in the OpenAPI document.

Every 4xx, and the 503 of an unavailable database, is JSON with a `detail`: for 422 a list of problems
`{loc, msg, type}` (FastAPI's own validation errors and the service's checks alike), for every other status a
message in words.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import psycopg
import sqlalchemy.exc
from pydantic import BaseModel


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: the request is well-formed but some of its values are not acceptable."""

    detail: list[Problem]


class ErrorResponse(BaseModel):
    """Every error other than 422."""

    detail: str


ERRORS = {
    400: "Malformed request (body not parseable, bad Content-Length)",
    401: "Missing or wrong bearer token",
    403: "This needs the admin token",
    404: "No such curriculum or proposal",
    408: "Nothing more of the request body came for TEACHER_BODY_IDLE_S: the connection is closed",
    409: "Conflicts with what is stored",
    410: "The proposal expired",
    413: "Request body too large",
    415: "Compressed request body (Content-Encoding): send it uncompressed",
    422: "Invalid values",
    503: "The database is unreachable or timed out (the request may not have been stored), or the service is overloaded "
         "(the request waited TEACHER_MAX_QUEUE_WAIT_S for its turn and was not run): resending it is safe",
}

# The exceptions that can say the database is unavailable; `database_unavailable` tells which do.
DATABASE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.InternalError,
                   sqlalchemy.exc.TimeoutError, sqlite3.OperationalError, psycopg.OperationalError,
                   psycopg.InterfaceError, psycopg.InternalError)
# SQLite's primary result codes of a database that is busy, locked, failing, full or cannot be opened; its other
# OperationalErrors are mistakes in a statement or the schema ("no such table"), which stay 500s.
SQLITE_UNAVAILABLE = {5, 6, 10, 13, 14}  # SQLITE_BUSY, _LOCKED, _IOERR, _FULL, _CANTOPEN


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or did not answer in time (connection refused, lost or
    ended by the server, no free pooled connection, SQLite's write lock held past its timeout, a failing disk):
    answered with 503, which the students' clients retry, rather than 500."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no free connection in the pool
        return True
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    if isinstance(cause, sqlite3.OperationalError):
        return (getattr(cause, "sqlite_errorcode", 0) & 0xFF) in SQLITE_UNAVAILABLE
    # PostgreSQL ended a session that held a transaction idle too long (this replica was frozen: tables.make_engine).
    return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError,
                              psycopg.errors.IdleInTransactionSessionTimeout))


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` for these error codes."""
    return {
        code: {"model": ValidationErrorResponse if code == 422 else ErrorResponse, "description": ERRORS[code]}
        for code in codes
    }


class ApiError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class BadRequest(ApiError):
    """422 from the service's own checks; `loc` names the input at fault where one does (empty if
    the fault is in how values go together), as in validation errors."""

    status_code = 422

    def __init__(self, detail: str, loc: tuple[str | int, ...] = (), kind: str = "value_error",
                 ctx: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.loc = loc
        self.kind = kind  # the entry's `type`, pydantic's names where one fits
        self.ctx = ctx  # the limit at fault, for programs, as in pydantic's entry of that type

    def body(self) -> dict[str, Any]:
        return {"detail": [{"loc": list(self.loc), "msg": self.detail, "type": self.kind}
                           | ({"ctx": self.ctx} if self.ctx else {})]}


class Unauthorized(ApiError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}  # the scheme to use, as RFC 9110 has a 401 say


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Gone(ApiError):
    status_code = 410


class Overloaded(ApiError):
    """A student's request waited too long for its turn (TEACHER_MAX_QUEUE_WAIT_S) and was not run."""

    status_code = 503

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"the service is overloaded: the request waited {waited_s:.1f} s for its turn and was not run "
                         "(nothing was stored); resend it later, resending is safe")
        # A retry soon after meets the same queue; the students' clients back off exponentially anyway.
        self.headers = {"Retry-After": str(max(1, math.ceil(waited_s / 2)))}


class DatabaseUnavailable(ApiError):
    """The database could not be reached or did not answer in time (`database_unavailable`)."""

    status_code = 503
    headers = {"Retry-After": "1"}

    def __init__(self) -> None:
        super().__init__("the database is unavailable; the request may not have been stored, resend it shortly "
                         "(resending is safe)")


class ClientClosedRequest(ApiError):
    """The client hung up while its request waited; nginx's code for it, seen only in metrics and logs."""

    status_code = 499
