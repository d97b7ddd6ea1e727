"""Service settings, read from environment variables prefixed `TEACHER_` (or a `.env` file)."""

from __future__ import annotations

import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def http_url(host: str, port: int) -> str:
    """The service's base URL; an IPv6 address goes in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEACHER_", env_file=".env", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    data_dir: Path = Field(default=Path("teacher-data"), description="Where the SQLite file and generated tokens live.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/teacher.db. PostgreSQL: postgresql+psycopg://..."
    )
    admin_token: SecretStr | None = Field(default=None, description="Bearer token that manages curricula.")
    student_token: SecretStr | None = Field(default=None, description="Bearer token that may propose and report.")
    insecure: bool = Field(default=False, description="Run without authentication (never the default).")
    proposal_ttl_s: float = Field(
        default=3600.0, ge=1, le=30 * 24 * 3600, allow_inf_nan=False,
        description="Seconds before an unreported proposal expires (1 s to 30 days, as a curriculum's own proposal_ttl_s).")
    request_threads: int = Field(default=4, ge=1, le=256, description="Students' work running at once (an evaluation, a batch, or a group of single proposes or reports, at most one group per verb at a time): evaluations in threads of their own, the rest in the writer thread; as many threads again for the other routes (more for a remote PostgreSQL).")
    max_queue_wait_s: float = Field(
        default=5.0, gt=0, le=3600, allow_inf_nan=False,
        description="Load shedding: a student's propose, report or evaluation that has waited this many seconds for its "
                    "turn (a request thread's slot, or its group) is not run but answered 503 with Retry-After, which the "
                    "students' clients retry with backoff. Below the clients' timeout (10 s by default), so that an "
                    "overloaded service answers them rather than leaving them to time out and resend.")
    database_idle_transaction_s: float = Field(
        default=60.0, gt=0, le=86_400, allow_inf_nan=False,
        description="PostgreSQL: the server ends a session of this service that holds a transaction this many seconds "
                    "without a statement (a replica frozen while it holds a curriculum's lock), so that the others go on.")
    update_timeout_s: float = Field(
        default=300.0, gt=0, le=86_400, allow_inf_nan=False,
        description="A round of teacher updates that runs longer is stopped (its worker killed) and tried again: a hung "
                    "update would hold up the curriculum's later ones, and the service's shutdown.")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="Larger request bodies get 413.")
    body_idle_s: float = Field(
        default=30.0, gt=0, le=3600, allow_inf_nan=False,
        description="A request body of which nothing more comes for this many seconds gets 408 and its connection closed.")
    max_batch_items: int = Field(default=1024, ge=1, le=10_000, description="Most items in one batch call.")
    max_batch_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="Larger bodies of /propose/batch, /report/batch and /curricula get 413.")
    curricula_file: Path | None = Field(default=None, description="YAML file of curricula to create at start-up.")
    replica_id: str = Field(
        default_factory=socket.gethostname,
        description="Tells apart service processes sharing one database, so each draws its own proposals.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="How much the service logs (uvicorn's levels; any case).")

    @field_validator("admin_token", "student_token")
    @classmethod
    def _presentable(cls, token: SecretStr | None) -> SecretStr | None:
        # HTTP drops the whitespace around a header's value (and the students' client strips its token): a token with
        # some, or with a control character (`$(cat file)` with a Windows line end), could never match.
        text = token.get_secret_value() if token is not None else ""
        if text != text.strip() or not text.isprintable():
            raise ValueError("whitespace at its ends or a control character (a line end from a file?): no request "
                             "could present it")
        return token

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'teacher.db').resolve()}"


class SettingsError(ValueError):
    """Settings that cannot be used: one line naming each problem as the operator gave it."""


def load_settings(flags: Collection[str] = (), **values: Any) -> Settings:
    """Settings from `values`, the TEACHER_* environment and ./.env; SettingsError for an operator's mistake, not a
    traceback. `flags`: the settings the command takes as options (named `--port / TEACHER_PORT`)."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        def named(name: str) -> str:  # as an operator may have given it
            variable = f"TEACHER_{name.upper()}"
            return f"--{name.replace('_', '-')} / {variable}" if name in flags else variable

        problems = "; ".join(f"{named('_'.join(map(str, err['loc'])))}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from None
    except UnicodeDecodeError as exc:  # ./.env in another encoding: UTF-16 from Windows Notepad, Latin-1
        raise SettingsError(f"cannot read {Path('.env').resolve()}: not UTF-8 text (byte {exc.start}); save it as "
                            "UTF-8") from None
