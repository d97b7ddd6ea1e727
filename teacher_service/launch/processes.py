"""Processes the launchers start: the service (once it answers) and student workers, and how to stop them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from teacher_service.serving.infra.auth import Tokens, TokensFileError, load_tokens
from teacher_service.serving.settings import Settings, SettingsError, load_settings


def service_settings(who: str, flags: tuple[str, ...] = (), **values: object) -> tuple[Settings, Tokens]:
    """The settings of the service a launcher starts (`values`, TEACHER_*, ./.env) and the tokens it will use; an
    operator's mistake in them (a bad value, a .env not in UTF-8, a damaged tokens.json) is one line, not a
    traceback. `flags`: the settings the launcher takes as options."""
    try:
        settings = load_settings(flags, **values)
        return settings, load_tokens(settings)
    except (SettingsError, TokensFileError) as exc:
        raise SystemExit(f"{who}: {exc}") from None


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # A session of its own: the terminal's Ctrl-C reaches only us, and we stop the children in order
    # (students first, while the service can still take their last reports).
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (a port left in TIME_WAIT counts as free, as for uvicorn)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start_service(serve_args: list[str], url: str, log_path: Path, who: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """`teacher-service serve` with these arguments, in the background, once it answers on /healthz."""
    # Checked first: another process answering on the port would pass for our service below.
    address = httpx.URL(url)
    if not port_free(address.host, address.port):
        raise SystemExit(f"{who}: port {address.port} is in use on {address.host} (another teacher service?): "
                         "stop that process or choose another port with --port")
    service = spawn([sys.executable, "-m", "teacher_service.serving.cli", "serve", *serve_args], log_path, env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if service.poll() is not None:
                raise SystemExit(f"{who}: the service exited; its log {log_path} ends:\n"
                                 + log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{who}: the service did not answer on {url} within 120 s; see {log_path}")
    except BaseException:
        # Also on Ctrl-C: the caller has no handle yet, and in a session of its own the service would outlive us.
        service.kill()
        service.wait()
        raise


def stop(procs: list[subprocess.Popen], timeout: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def last_episodes(path: Path, n: int = 20) -> tuple[int, list[dict]]:
    """How many episodes a worker has logged, and the last `n` of them."""
    if not path.exists():
        return 0, []
    lines = path.read_text().splitlines()
    return len(lines), [json.loads(line) for line in lines[-n:]]
