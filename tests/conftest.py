from __future__ import annotations

import itertools
import os
import shutil

import pytest

from tests.servers import PostgresServer, ServiceProcess

_db_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def sb3_logs_in_the_session_folder(tmp_path_factory):
    """SB3's `learn` makes a log folder in the temp folder each time (SB3-<date>) unless SB3_LOGDIR names one; the
    tests' models (and the examples they run, which inherit the environment) log under pytest's folder instead."""
    os.environ.setdefault("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))


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
