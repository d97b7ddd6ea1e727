"""`teacher-service`: run the service. Every option can also come from a TEACHER_* environment variable."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import uvicorn

from teacher_service.serving.settings import Settings, SettingsError, http_url, load_settings


def settings_help() -> str:
    lines = ["environment variables (also read from ./.env):"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f" (default: {field.default})"
        lines.append(f"  TEACHER_{name.upper():<18} {field.description or ''}{default}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="teacher-service",
        description="Curriculum teachers for RL students over HTTP.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (the default)", epilog=settings_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for p in (parser, serve):
        p.add_argument("--host", help="interface to listen on")
        p.add_argument("--port", type=int, help="port to listen on")
        p.add_argument("--data-dir", help="folder for the SQLite file and generated tokens")
        p.add_argument("--database-url", help="SQLAlchemy database URL (default: SQLite in the data dir)")
        p.add_argument("--curricula-file", help="YAML file of curricula to create at start-up")
        p.add_argument("--insecure", action="store_true", default=None, help="no authentication at all")
        p.add_argument("--log-level", help="uvicorn log level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = load_settings(vars(args), **overrides)
    except SettingsError as exc:
        raise SystemExit(f"teacher-service: {exc}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    # Teachers are tiny networks: extra threads only spin against the request threads.
    torch.set_num_threads(1)
    # A request thread that gives up the GIL for a database call gets it back sooner: shorter waits
    # while it holds the database's write lock.
    sys.setswitchinterval(0.0005)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DatabaseError

    from teacher_service.serving.app import create_app  # after logging is set up, so start-up messages show
    from teacher_service.serving.curricula_file import CurriculaFileError
    from teacher_service.serving.infra.auth import TokensFileError

    try:
        app = create_app(settings)
    except (CurriculaFileError, TokensFileError) as exc:
        raise SystemExit(f"teacher-service: {exc}") from None
    except OSError as exc:  # the data dir or the SQLite file cannot be created or opened for writing
        if exc.filename is None:
            raise
        raise SystemExit(f"teacher-service: cannot use {exc.filename}: {exc.strerror} (it must be writable by this "
                         "user)") from None
    except ArgumentError as exc:  # a database URL that SQLAlchemy cannot read, or of a database it does not know
        raise SystemExit(f"teacher-service: cannot use the database URL: {exc}") from None
    except ImportError as exc:  # a database it knows without its driver installed (postgresql+psycopg2, mysql)
        url = make_url(settings.resolved_database_url())
        raise SystemExit(f"teacher-service: cannot use the database URL {url.drivername}://...: its driver is not "
                         f"installed ({exc}); PostgreSQL: postgresql+psycopg://user:password@host/database") from None
    except DatabaseError as exc:  # the database refuses or cannot be reached (a read-only file, a server down, a file
        # that is not a database)
        url = make_url(settings.resolved_database_url()).render_as_string(hide_password=True)
        raise SystemExit(f"teacher-service: cannot use the database {url}: {str(exc.orig).strip()}") from None
    # The cyclic garbage collector ran a full collection about once a second under batch load, each ~170 ms with
    # the GIL held: it scans every object (torch, sklearn and the rest: ~470,000), and its young collections, every
    # 700 allocations, promoted the objects of the requests in flight until the old ones had grown by a quarter.
    # Young collections now wait for 50,000 allocations, and start-up's objects are out of the scans
    # (docs/scale-history.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    tokens = app.state.tokens
    if tokens.insecure:
        print("WARNING: running with --insecure: anyone who reaches this port can change curricula.", flush=True)
    elif tokens.path is not None:
        print(f"API tokens are in {tokens.path} (owner-only).", flush=True)
    print(f"Teacher service on {http_url(settings.host, settings.port)}  (API docs at /docs)", flush=True)
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"Dashboard: {tokens.dashboard_url(http_url(local, settings.port))}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)


if __name__ == "__main__":
    main()
