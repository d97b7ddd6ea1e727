"""Owner-only files: the data directory and the SQLite database (with its -wal and -shm), like the tokens."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger("teacher_service")


def private_dir(path: Path) -> None:
    """Create `path` readable by its owner only. An existing folder is left as it is (it may be one the
    user shares on purpose, such as the current directory), with a warning if others can read it."""
    if path.is_dir():
        if path.stat().st_mode & 0o077:
            log.warning("data directory %s is readable by others; `chmod 700 %s` to keep it private", path, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)


def private_sqlite_file(url: str) -> None:
    """Create a SQLite database file owner-only before SQLite opens it: SQLite creates it with the
    umask's permissions (often readable by all) and gives its -wal and -shm files the database's."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is an empty database
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:  # made by an earlier version
            file.chmod(0o600)
