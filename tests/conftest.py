from __future__ import annotations

import itertools
import shutil

import pytest

from tests.servers import PostgresServer, ServiceProcess

_db_names = itertools.count()


@pytest.fixture
def service(tmp_path):
    """A real teacher service process on a fresh SQLite file; `.stop()`/`.start()` restart it."""
    proc = ServiceProcess(tmp_path).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres():
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.fail("PostgreSQL 15 (initdb, pg_ctl) is required; .ci/run installs it")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres):
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres.create_database(f"test_{next(_db_names)}")
