"""TeacherClient and AsyncTeacherClient against a real service process."""

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
import sqlite3
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from teacher_service.wire import CurriculumCreate, EvaluationRequest, PresetTaskSpace, Signals

from student_client import AsyncTeacherClient, TeacherClient, TeacherError, TeacherUnavailableError
from tests.servers import ServiceProcess, free_port, wait_until
from tests.student_helpers import create_curriculum, stored_proposals


def test_propose_report_evaluate_and_errors(service):
    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.student_token) as client:
        assert [c.name for c in client.list_curricula()] == ["cl"]
        proposal = client.propose("cl", "s-1")
        assert set(proposal.reset_options) <= {"reset_cell", "goal_cell"}
        signals = Signals(grad_norm_mean=0.5, episode_return=1.0, env_steps=300)
        ack = client.report(proposal.proposal_id, "s-1", signals)
        assert ack.proposal_id == proposal.proposal_id
        assert client.report(proposal.proposal_id, "s-1", signals) == ack  # idempotent resend
        client.evaluate(EvaluationRequest(curriculum="cl", student_id="s-1", env_steps=300, episodes=2,
                                          success_rate=0.5, mean_return=1.0))
        with pytest.raises(TeacherError) as err:
            client.report(proposal.proposal_id, "s-2", signals)
        assert err.value.status_code == 409 and "s-1" in err.value.detail
        with pytest.raises(TeacherError) as err:
            client.propose("missing", "s-1")
        assert err.value.status_code == 404 and not isinstance(err.value, TeacherUnavailableError)
    with TeacherClient(service.url, "wrong-token") as client, pytest.raises(TeacherError) as err:
        client.propose("cl", "s-1")
    assert err.value.status_code == 401


def test_token_from_environment_and_admin_calls(service, monkeypatch):
    monkeypatch.setenv("TEACHER_TOKEN", service.admin_token)
    monkeypatch.setenv("TEACHER_URL", service.url)
    with TeacherClient() as admin:
        create_curriculum(service, "tmp")
        assert admin.get_curriculum("tmp").name == "tmp"
        admin.delete_curriculum("tmp")
        with pytest.raises(TeacherError) as err:
            admin.get_curriculum("tmp")
        assert err.value.status_code == 404


def test_creating_a_curriculum_again_with_its_spec_returns_it_and_with_another_is_a_conflict(service):
    """What a retry meets when the first attempt created the curriculum but its answer was lost (a timeout under
    load), or a script run again; both clients."""
    spec = CurriculumCreate(name="again", task_space=PresetTaskSpace(env_id="PointMaze_UMaze-v3"), seed=3)
    other = spec.model_copy(update={"seed": 4})
    with TeacherClient(service.url, service.admin_token) as admin:
        first = admin.create_curriculum(spec)
        assert admin.create_curriculum(spec) == first
        with pytest.raises(TeacherError) as err:
            admin.create_curriculum(other)
        assert err.value.status_code == 409 and "already exists" in err.value.detail

    async def main():
        async with AsyncTeacherClient(service.url, service.admin_token) as admin:
            assert await admin.create_curriculum(spec) == first
            with pytest.raises(TeacherError) as err:
                await admin.create_curriculum(other)
            assert err.value.status_code == 409

    asyncio.run(main())


def test_unreachable_teacher_raises_after_retries():
    with TeacherClient(f"http://127.0.0.1:{free_port()}", "t", attempts=3, max_backoff_s=0.05) as client:
        assert not client.health()
        with pytest.raises(TeacherUnavailableError) as err:
            client.propose("cl", "s-1")
        assert err.value.status_code is None


def self_signed_certificate(directory, name: str = "cert") -> tuple:
    """A key and a self-signed certificate for 127.0.0.1 (as IP address too, which verification checks), valid a
    day, written to directory/<name>.pem and directory/<name>-key.pem; returns their paths."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    paths = directory / f"{name}.pem", directory / f"{name}-key.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def self_signed_tls_server(tmp_path):
    """A TLS server on a free port with a certificate that nothing trusts; returns its port and a list of the
    connections it accepted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed_certificate(tmp_path))
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            conn, _ = listener.accept()
            accepted.append(conn)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):  # the client refuses the certificate
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], accepted


def tls_proxy(context: ssl.SSLContext, target_port: int) -> tuple[int, list]:
    """TLS in front of a plain HTTP service on `target_port`, with `context`'s certificate at each handshake; returns
    its port and its open client connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def pump(source, sink):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve():
        while True:
            conn, _ = listener.accept()
            try:
                client = context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client refuses the certificate
                conn.close()
                continue
            connections.append(client)
            upstream = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], connections


@pytest.mark.parametrize("client_class", [TeacherClient, AsyncTeacherClient])
def test_tls_that_cannot_work_is_an_error_at_once_not_an_outage(service, tmp_path, client_class):
    """An https URL for the service, which speaks plain HTTP, or a certificate not trusted here: a `TeacherError` that
    says so, at the first try. As an outage (`TeacherUnavailableError`, retried) a session would train its whole run
    on env-default tasks, saying only that the teacher was unreachable."""
    port, accepted = self_signed_tls_server(tmp_path)

    def error_of(url: str) -> TeacherError:
        async def call_async():
            async with AsyncTeacherClient(url, "t", attempts=5, max_backoff_s=1.0) as client:
                await client.propose("cl", "s")

        with pytest.raises(TeacherError) as raised:
            if client_class is AsyncTeacherClient:
                asyncio.run(call_async())
            else:
                with TeacherClient(url, "t", attempts=5, max_backoff_s=1.0) as client:
                    client.propose("cl", "s")
        assert not isinstance(raised.value, TeacherUnavailableError)
        return raised.value

    started = time.monotonic()
    assert "use an http:// URL, not https://" in str(error_of(service.url.replace("http://", "https://")))
    assert "the service's certificate is not trusted here" in str(error_of(f"https://127.0.0.1:{port}"))
    assert time.monotonic() - started < 1.0 and len(accepted) == 1  # no retries (their backoff: 0.1 s and more)


@pytest.mark.parametrize("client_class", [TeacherClient, AsyncTeacherClient])
def test_a_certificate_refused_after_the_service_answered_is_an_outage(service, tmp_path, monkeypatch, client_class):
    """A certificate refused in mid-run (expired, or replaced by one not trusted here) stopped the students as one
    refused at the start does, though it was trusted until then: now an outage (`TeacherUnavailableError`, the
    session trains on env-default tasks meanwhile) once the service has answered, and the calls go through again
    once the certificate is."""
    create_curriculum(service, "cl")
    trusted, untrusted = self_signed_certificate(tmp_path, "trusted"), self_signed_certificate(tmp_path, "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted[0]))  # the bundle httpx trusts
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*trusted)
    port, connections = tls_proxy(context, service.port)

    def replace_certificate(paths) -> None:  # new handshakes get it; the open connections are closed
        context.load_cert_chain(*paths)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    async def calls_async(client: AsyncTeacherClient, fresh: AsyncTeacherClient) -> list:
        outcomes = [await client.propose("cl", "s")]
        replace_certificate(untrusted)
        for call in (client.propose("cl", "s"), client.once().propose("cl", "s"), fresh.propose("cl", "s")):
            try:
                await call
            except TeacherError as exc:
                outcomes.append(exc)
        replace_certificate(trusted)
        return [*outcomes, await client.propose("cl", "s")]

    def calls(client: TeacherClient, fresh: TeacherClient) -> list:
        outcomes = [client.propose("cl", "s")]
        replace_certificate(untrusted)
        for call in (client.propose, client.once().propose, fresh.propose):
            with pytest.raises(TeacherError) as raised:
                call("cl", "s")
            outcomes.append(raised.value)
        replace_certificate(trusted)
        return [*outcomes, client.propose("cl", "s")]

    url, options = f"https://127.0.0.1:{port}", {"token": service.student_token, "attempts": 2, "max_backoff_s": 0.1}
    if client_class is AsyncTeacherClient:
        async def main():
            async with AsyncTeacherClient(url, **options) as client, AsyncTeacherClient(url, **options) as fresh:
                return await calls_async(client, fresh)

        first, later, later_once, fresh_error, after = asyncio.run(main())
    else:
        with TeacherClient(url, **options) as client, TeacherClient(url, **options) as fresh:
            first, later, later_once, fresh_error, after = calls(client, fresh)
    assert first.student_id == after.student_id == "s"
    assert isinstance(later, TeacherUnavailableError) and isinstance(later_once, TeacherUnavailableError)
    assert "the service's certificate is not trusted here" in str(later)
    # A client that the service never answered: refused at once, as before (the URL or the trust is wrong).
    assert type(fresh_error) is TeacherError and "the service's certificate is not trusted here" in str(fresh_error)


@pytest.mark.parametrize("client_class", [TeacherClient, AsyncTeacherClient])
@pytest.mark.parametrize("url, token, says", [
    ("127.0.0.1:8000", "t", "must start with http:// or https://"),  # no scheme: httpx's UnsupportedProtocol
    ("http://", "t", "must start with http:// or https://"),
    ("http://[::1", "t", "is not a URL"),
    ("http://127.0.0.1:99999", "t", "no valid port"),
    ("http://127.0.0.1:8000?x=1", "t", "has a query (?...)"),  # was 405 on every call: the paths came after it
    ("http://127.0.0.1:8000/?", "t", "has a query (?...)"),
    ("http://127.0.0.1:8000", "to\nken", "a tab or a line break inside it"),
    ("http://127.0.0.1:8000", "to\tken", "a tab or a line break inside it"),
    ("http://127.0.0.1:8000", " \n", "blank (whitespace only)"),
    ("http://127.0.0.1:8000", "tökén", "non-ASCII"),
])
def test_a_url_or_token_that_can_never_work_is_refused_at_once(client_class, url, token, says):
    """Not at the first call as a transport error after the retries, which a student takes for an outage and then
    trains its whole run on default tasks (an outsider's probe: student-worker exited 0 after such a run)."""
    with pytest.raises(ValueError, match=re.escape(says)):
        client_class(url, token)
    # What works: a token with spaces (a service's own, from its settings, may have them: only the first splits),
    # no port, IPv6, spaces around the URL.
    for url, token in (("http://localhost", "two words"), ("https://[::1]:8000/", "t"), (" http://h:1 ", "t")):
        assert client_class(url, token).url == url.strip().rstrip("/")

    with pytest.raises(ValueError, match=re.escape("timeout_s must be above 0, not -1")):
        client_class("http://localhost", "t", timeout_s=-1)  # every call failed, as an outage


def test_whitespace_around_a_token_is_not_part_of_it(tmp_path, monkeypatch):
    """A token read from a file or a variable with its newline or a space after it was taken, then every call failed in
    h11 ("Illegal header value b'Bearer student-tok '"), which students take for an outage: an outsider's probe. The
    whitespace around it is dropped; whitespace inside is kept, since a service whose token has some matches it."""
    service = ServiceProcess(tmp_path)
    service.student_token = "two  words"
    service.start()
    try:
        create_curriculum(service, "cl")
        for token in ("two  words ", "\ttwo  words\n", " \r\ntwo  words\r\n"):
            with TeacherClient(service.url, token, attempts=1) as client:
                assert client.propose("cl", "s-1").curriculum == "cl"
        monkeypatch.setenv("TEACHER_TOKEN", "two  words\n")
        with TeacherClient(service.url, attempts=1) as client:
            assert client.propose("cl", "s-1").curriculum == "cl"
        with TeacherClient(service.url, "two words", attempts=1) as client, pytest.raises(TeacherError) as err:
            client.propose("cl", "s-1")  # inner whitespace is the token's own: one space is another token
        assert err.value.status_code == 401
    finally:
        service.stop()


def test_a_url_with_a_query_is_refused_and_one_with_a_fragment_works(service):
    """TeacherClient("http://127.0.0.1:8765?x=1") was taken, and then every call was answered 405 (an outsider's
    probe): the calls' paths were joined after the query. A fragment is never sent, so such a URL works."""
    create_curriculum(service, "cl")
    with pytest.raises(ValueError, match=re.escape("has a query (?...)")):
        TeacherClient(f"{service.url}?x=1", service.student_token)
    with TeacherClient(f"{service.url}/#top", service.student_token, attempts=1) as client:
        assert client.propose("cl", "s-1").curriculum == "cl"


def test_a_name_no_curriculum_can_have_is_refused_before_any_request(service):
    """Before, '../healthz' reached /healthz (and failed parsing its answer), and 'cl?x=1' returned curriculum 'cl'."""
    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.admin_token) as admin:
        for name in ("../healthz", "cl?x=1", "cl/target", "cl#x", "..", ""):
            for call in (admin.get_curriculum, admin.delete_curriculum, admin.target):
                with pytest.raises(ValueError, match="is not a curriculum name"):
                    call(name)
        assert [c.name for c in admin.list_curricula()] == ["cl"]  # nothing was deleted
        assert admin.get_curriculum("cl").name == "cl" and admin.target("cl") is None


def test_the_target_of_an_unknown_curriculum_is_not_found_rather_than_none(service):
    """`target("no-such-curriculum")` returned None, as for a curriculum that names no target tasks: a student then
    evaluated on the env's own tasks. The service's two 404s differ in their detail (wire.NO_TARGET_TASKS)."""
    from student_client.session import TeacherSession

    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.student_token) as client:
        assert client.target("cl") is None
        with pytest.raises(TeacherError) as err:
            client.target("no-such-curriculum")
        assert err.value.status_code == 404 and "not found" in err.value.detail
        with pytest.raises(TeacherError) as err:  # a worker asks at its start: it exits with the error, as a propose would
            TeacherSession(client, "no-such-curriculum", "s-1").target()
        assert err.value.status_code == 404

    async def main():
        async with AsyncTeacherClient(service.url, service.student_token) as client:
            assert await client.target("cl") is None
            with pytest.raises(TeacherError) as err:
                await client.target("no-such-curriculum")
            assert err.value.status_code == 404

    asyncio.run(main())


def test_an_invalid_student_id_in_propose_many_fails_alone_as_the_service_fails_it(service):
    """propose_many with one invalid student id raised a ValidationError for the whole list; the item now gets in its
    place the TeacherError 422 that the batch route gives an item it refuses (the same detail), and the others are
    proposed. A list with no valid item sends nothing."""
    create_curriculum(service, "cl")
    headers = {"Authorization": f"Bearer {service.student_token}"}
    served = httpx.post(f"{service.url}/propose/batch", headers=headers,
                        json={"items": [{"curriculum": "cl", "student_id": "bad id!"}]}).json()["results"][0]["error"]
    with TeacherClient(service.url, service.student_token) as client:
        first, bad, last = client.propose_many("cl", ["s-1", "bad id!", "s-2"])
        assert (first.student_id, last.student_id) == ("s-1", "s-2")
        assert isinstance(bad, TeacherError) and (bad.status_code, bad.detail) == (served["status"], served["detail"])
        assert [e.status_code for e in client.propose_many("cl", ["", "x" * 129])] == [422, 422]

    async def main():
        async with AsyncTeacherClient(service.url, service.student_token) as client:
            return await client.propose_many("cl", ["bad id!", "s-3"])

    bad, proposal = asyncio.run(main())
    assert (bad.status_code, bad.detail, proposal.student_id) == (422, served["detail"], "s-3")
    history = httpx.get(f"{service.url}/curricula/cl/history", headers=headers).json()["items"]
    assert len(history) == 3


def test_an_outbox_file_has_one_outbox_at_a_time_across_processes(tmp_path):
    """Two outboxes on one file (the sub-environments of a vector env given the same `outbox=`) overwrote each
    other's messages: an outsider's probe found 2 of 6 pending reports on disk. The second is refused, in this process
    and in another, until the first is closed; a process's end releases its claim."""
    import subprocess
    import sys

    from student_client.outbox import Outbox
    from teacher_service.wire import ReportRequest

    path = tmp_path / "outbox.json"
    first = Outbox(path)
    with pytest.raises(ValueError, match="in use by another student"):
        Outbox(path)
    other_process = [sys.executable, "-c", f"from pathlib import Path; from student_client.outbox import Outbox; "
                     f"Outbox(Path({str(path)!r}))"]
    refused = subprocess.run(other_process, capture_output=True, text=True)
    assert refused.returncode != 0 and "in use by another student" in refused.stderr
    evaluation = EvaluationRequest(curriculum="cl", student_id="s", env_steps=1, episodes=1, success_rate=0.0,
                                   mean_return=0.0)
    first.put_evaluation(evaluation)
    child = os.fork()  # a forked child's copy gives the file up: the parent's close is enough
    if child == 0:
        time.sleep(3)
        os._exit(0)
    first.close()
    first.close()  # twice: nothing more to give up
    subprocess.run(other_process, check=True)  # its claim ends with it
    second = Outbox(path)
    assert [m["kind"] for m in second.pending] == ["evaluation"]
    second.put_report(ReportRequest(proposal_id="p", student_id="s", signals=Signals()))
    first.put_evaluation(evaluation)  # after close: in memory only, not over the file's new owner's messages
    assert [m["kind"] for m in json.loads(path.read_text())["pending"]] == ["evaluation", "report"]
    os.waitpid(child, 0)
    assert Outbox(tmp_path / "another.json").pending == []  # other files are free


def test_an_outbox_on_a_filesystem_without_locks_is_used_with_a_warning(tmp_path, monkeypatch, caplog):
    """Some network mounts refuse flock (ENOLCK): the student still runs, and the log says to keep the file to one
    student. The filesystem's refusal is injected: this machine's filesystems all lock."""
    import errno
    import fcntl

    from student_client.outbox import Outbox
    from teacher_service.wire import ReportRequest

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    outbox = Outbox(tmp_path / "outbox.json")
    outbox.put_report(ReportRequest(proposal_id="p", student_id="s", signals=Signals()))
    assert len(json.loads((tmp_path / "outbox.json").read_text())["pending"]) == 1
    assert "cannot be locked" in caplog.text and "No locks available" in caplog.text


def test_batches_are_split_by_size_as_well_as_by_count(tmp_path):
    """1,024 reports with many `extra` signals made a 5.6 MB body, and the whole call failed with 413 (an outsider's
    probe). Against a service that takes 4 KiB a batch, 30 reports of ~400 bytes go in several calls and every one is
    acknowledged, by both clients; without the split, the same reports fail."""
    from teacher_service.wire import ReportRequest
    from tests.servers import ServiceProcess

    service = ServiceProcess(tmp_path, extra_env={"TEACHER_MAX_BATCH_BODY_BYTES": "4096"}).start()
    try:
        create_curriculum(service, "big")
        signals = Signals(grad_norm_mean=1.0, extra={f"probe.signal_{k}": 1.0 + k for k in range(12)})
        with TeacherClient(service.url, service.student_token, batch_bytes=4096) as client:
            proposals = client.propose_many("big", [f"s-{k}" for k in range(60)])
            reports = [ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id, signals=signals)
                       for p in proposals]
            assert len(json.dumps([r.model_dump(mode="json") for r in reports[30:]])) > 3 * 4096
            with TeacherClient(service.url, service.student_token, batch_bytes=10**7) as unsplit:
                with pytest.raises(TeacherError) as err:
                    unsplit.report_many(reports[:30])
                assert err.value.status_code == 413
            acks = client.report_many(reports[:30])
            assert [a.proposal_id for a in acks] == [p.proposal_id for p in proposals[:30]]

        async def main():
            async with AsyncTeacherClient(service.url, service.student_token, batch_bytes=4096) as client:
                return await client.report_many(reports[30:])

        assert [a.proposal_id for a in asyncio.run(main())] == [p.proposal_id for p in proposals[30:]]
    finally:
        service.stop()


def test_batches_follow_a_service_that_takes_fewer_items(tmp_path, caplog):
    """A service started with TEACHER_MAX_BATCH_ITEMS=4 refused a client's batch of 10 with a 422, and the ensemble
    worker's propose_many failed whole. The client now lowers its batch_items to the limit the 422 names (once, with
    a warning) and sends the rest in batches of 4: every item answered, in order, by both clients."""
    from teacher_service.wire import ReportRequest
    from tests.servers import ServiceProcess

    service = ServiceProcess(tmp_path, extra_env={"TEACHER_MAX_BATCH_ITEMS": "4"}).start()
    try:
        create_curriculum(service, "few")
        students = [f"s-{k}" for k in range(10)]
        with caplog.at_level("WARNING", logger="student_client.client"), \
                TeacherClient(service.url, service.student_token) as client:
            one_try = client.once()  # the session's copy for calls after a failed try: it learns the limit for both
            proposals = one_try.propose_many("few", students)
            assert [p.student_id for p in proposals] == students and client.batch_items == one_try.batch_items == 4
            assert [p.student_id for p in client.propose_many("few", students)] == students  # no second 422
            reports = [ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                     signals=Signals(grad_norm_mean=1.0)) for p in proposals]
            assert [a.proposal_id for a in client.report_many(reports)] == [p.proposal_id for p in proposals]
            headers = {"Authorization": f"Bearer {service.student_token}"}
            refused = httpx.post(f"{service.url}/propose/batch", headers=headers,
                                 json={"items": [{"curriculum": "few", "student_id": s} for s in students]})
            assert refused.status_code == 422 and refused.json()["detail"][0]["ctx"] == {"max_length": 4,
                                                                                       "actual_length": 10}
        assert caplog.messages == ["the teacher service takes at most 4 items a batch: batch_items lowered from 1024"]

        async def main():
            async with AsyncTeacherClient(service.url, service.student_token, batch_items=6) as client:
                proposed = await client.propose_many("few", students)
                acks = await client.report_many([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                                               signals=Signals(grad_norm_mean=1.0)) for p in proposed])
                return proposed, acks, client.batch_items

        proposed, acks, size = asyncio.run(main())
        assert [p.student_id for p in proposed] == students and size == 4
        assert [a.proposal_id for a in acks] == [p.proposal_id for p in proposed]
        stored = stored_proposals(service, "few")  # the database (the API's history waits for the teacher's updates)
        assert len(stored) == 30 and sum(1 for row in stored.values() if row["reported_at"]) == 20  # each stored once
    finally:
        service.stop()


def test_async_client(service):
    create_curriculum(service, "acl")

    async def main():
        async with AsyncTeacherClient(service.url, service.student_token) as client:
            assert await client.health()
            proposals = await asyncio.gather(*(client.propose("acl", f"s-{i}") for i in range(4)))
            acks = await asyncio.gather(*(client.report(p.proposal_id, p.student_id, Signals(grad_norm_mean=1.0))
                                          for p in proposals))
            return proposals, acks

    proposals, acks = asyncio.run(main())
    assert len({p.proposal_id for p in proposals}) == 4
    assert [a.proposal_id for a in acks] == [p.proposal_id for p in proposals]


def test_outboxes_deliver_their_leading_reports_in_one_batch(service, tmp_path):
    """`Outbox.flush_reports`: the reports leading each outbox go in one batch call; an outbox whose head is an
    evaluation keeps it (for `flush`) and its file is not rewritten; everything is delivered once, in order."""
    from student_client.outbox import Outbox
    from teacher_service.wire import ReportRequest

    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.student_token) as client:
        reports, evaluation = Outbox(tmp_path / "a.json"), Outbox(tmp_path / "b.json")
        for student in ("a", "a"):
            p = client.propose("cl", student)
            reports.put_report(ReportRequest(proposal_id=p.proposal_id, student_id=student,
                                             signals=Signals(grad_norm_mean=1.0)))
        evaluation.put_evaluation(EvaluationRequest(curriculum="cl", student_id="b", env_steps=10, episodes=1,
                                                    success_rate=1.0, mean_return=1.0))
        inode = (tmp_path / "b.json").stat().st_ino
        reports.flush_reports(client, [evaluation])
        assert reports.pending == [] and reports.rejected == []
        assert [m["kind"] for m in evaluation.pending] == ["evaluation"]
        assert (tmp_path / "b.json").stat().st_ino == inode  # untouched: nothing of it was sent
        assert json.loads((tmp_path / "a.json").read_text())["pending"] == []  # what was delivered is off the file too
        assert evaluation.flush(client) == 1 and json.loads((tmp_path / "b.json").read_text())["pending"] == []
    headers = {"Authorization": f"Bearer {service.student_token}"}
    history = httpx.get(f"{service.url}/curricula/cl/history", headers=headers).json()["items"]
    assert [item["reported_at"] is not None for item in history] == [True, True]
    evaluations = httpx.get(f"{service.url}/curricula/cl/evaluations", headers=headers).json()["items"]
    assert [(e["student_id"], e["success_rate"]) for e in evaluations] == [("b", 1.0)]


def test_an_outbox_keeps_a_report_refused_for_its_token_and_rejects_one_refused_for_itself(service, tmp_path):
    """A 401 (the student token was rotated) says nothing about the report: it is raised and the report kept, in the
    file, and delivered by the next flush with the right token (it was moved to `rejected`, never sent again). A 404
    (an unknown proposal) refuses the report itself: rejected, and the flush goes on."""
    from student_client.outbox import Outbox
    from teacher_service.wire import ReportRequest

    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.student_token) as client:
        p = client.propose("cl", "a")
    outbox = Outbox(tmp_path / "outbox.json")
    unknown = ReportRequest(proposal_id="f" * 32, student_id="a", signals=Signals(grad_norm_mean=1.0))
    outbox.put_report(ReportRequest(proposal_id=p.proposal_id, student_id="a", signals=Signals(grad_norm_mean=1.0)))
    outbox.put_report(unknown)
    for flush in (outbox.flush, lambda c: outbox.flush_reports(c, [])):
        with TeacherClient(service.url, "an-old-token") as stale, pytest.raises(TeacherError) as refused:
            flush(stale)
        assert refused.value.status_code == 401
        assert [m["body"]["proposal_id"] for m in json.loads((tmp_path / "outbox.json").read_text())["pending"]] == [
            p.proposal_id, unknown.proposal_id] and outbox.rejected == []
    outbox.close()
    # At exit (a worker's, the Gym wrapper's close): the drain logs the refusal and ends, the messages kept.
    from student_client.session import TeacherSession

    with TeacherClient(service.url, "an-old-token") as stale:
        session = TeacherSession(stale, "cl", "a", outbox=tmp_path / "outbox.json")
        started = time.monotonic()
        session.drain(30)
        assert time.monotonic() - started < 5 and len(session.outbox.pending) == 2
        session.outbox.close()
    with TeacherClient(service.url, service.student_token) as client:
        assert Outbox(tmp_path / "outbox.json").flush(client) == 2  # as after a restart with the right token
    saved = json.loads((tmp_path / "outbox.json").read_text())
    assert saved["pending"] == [] and [(m["body"]["proposal_id"], m["status_code"]) for m in saved["rejected"]] == [
        (unknown.proposal_id, 404)]
    assert stored_proposals(service, "cl")[p.proposal_id]["reported_at"] is not None


def test_a_frozen_teacher_holds_a_session_for_one_probe_after_the_first_failed_try(service):
    """A frozen teacher (SIGSTOP: it accepts connections and never answers) holds the first try for all the client's
    retries, once for sessions sharing the client (an ensemble's members asking their target tasks); after that, each
    try, for one session or several, costs one /healthz of at most PROBE_TIMEOUT_S instead of those retries again, the
    exit's drain of several outboxes too, and the teacher is used again once it answers."""
    import signal

    from student_client.session import PROBE_TIMEOUT_S, TeacherSession, drain_many, propose_many, targets_many

    create_curriculum(service, "cl")
    with TeacherClient(service.url, service.student_token, timeout_s=4, attempts=3) as client:
        sessions = [TeacherSession(client, "cl", f"s{i}", retry_every=0.2) for i in range(3)]
        before = propose_many(sessions)
        assert all(p is not None for p in before)
        service.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            assert targets_many(sessions) == [None, None, None]  # one ask for the three, not one each
            first = time.monotonic() - start  # three attempts of 4 s
            time.sleep(0.3)
            start = time.monotonic()
            assert propose_many(sessions) == [None, None, None]  # one probe for the three
            again = time.monotonic() - start
            time.sleep(0.3)
            start = time.monotonic()
            assert sessions[0].propose() is None
            alone = time.monotonic() - start
            for session, proposal in zip(sessions, before):
                session.finish(proposal, Signals(grad_norm_mean=1.0), deliver=False)
            start = time.monotonic()
            drain_many(sessions, timeout=1)  # probes once a round for the three, never a flush held for the retries
            drained = time.monotonic() - start
            assert [len(session.outbox.pending) for session in sessions] == [1, 1, 1]
        finally:
            service.process.send_signal(signal.SIGCONT)
        assert 3 * 4 <= first < 2 * 3 * 4
        assert drained < 2 * PROBE_TIMEOUT_S  # one probe's wait, where a drain per session took one each
        assert max(again, alone, drained) < first / 2 and min(again, alone) >= PROBE_TIMEOUT_S, (first, again, alone,
                                                                                                 drained)
        wait_until(client.health, 60, "the teacher's answers after SIGCONT")  # it first answers what queued
        time.sleep(0.3)
        # The teacher answers again: used at once (one attempt each, the sessions recovering: tried until it serves).
        wait_until(lambda: all(p is not None for p in propose_many(sessions[1:])), 60, "proposals again")
        assert targets_many(sessions) == [None, None, None]  # known now: the curriculum names no target tasks
        drain_many(sessions, timeout=10)
        assert [session.outbox.pending for session in sessions] == [[], [], []]


def test_after_a_failed_try_a_session_tries_once_while_the_teacher_answers_healthz_but_not_the_call(tmp_path, caplog):
    """A teacher whose database stalls answers /healthz but sheds the students' calls (503 after
    TEACHER_MAX_QUEUE_WAIT_S): the first try costs the client's attempts, each later try one attempt, until a call
    succeeds; the outage is logged once, not at every try."""
    from student_client.session import TeacherSession

    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1", "TEACHER_MAX_QUEUE_WAIT_S": "1"}).start()
    blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        create_curriculum(service, "cl")
        with ThreadPoolExecutor(1) as pool, TeacherClient(service.url, service.student_token, attempts=3,
                                                          max_backoff_s=1) as client:
            blocker.execute("BEGIN IMMEDIATE")  # the database stalls: the writer waits for its lock, holding the slot
            held = pool.submit(service.client().post, "/propose", json={"curriculum": "cl", "student_id": "x"})
            wait_until(lambda: "teacher_request_threads_busy 1.0" in service.client().get("/metrics").text, 30,
                       "a propose holding the only slot")
            session = TeacherSession(client, "cl", "s0", retry_every=0.2)
            with caplog.at_level("WARNING", logger="student_client.session"):
                start = time.monotonic()
                assert session.propose() is None  # three attempts, each shed after 1 s
                first = time.monotonic() - start
                time.sleep(0.3)
                start = time.monotonic()
                assert session.propose() is None  # /healthz answers; one attempt, shed after 1 s
                again = time.monotonic() - start
            blocker.execute("ROLLBACK")
            assert held.result().status_code == 200
            assert first >= 3 and 1 <= again < first / 2, (first, again)
            (warning,) = [r.getMessage() for r in caplog.records if "teacher unreachable" in r.getMessage()]
            assert "teacher unreachable (the service is overloaded: the request waited" in warning  # and why
            time.sleep(0.3)
            assert session.propose() is not None  # the teacher serves again: used at once, and the session recovers
            assert session.caller is client
    finally:
        blocker.close()
        service.stop()


def test_an_evaluation_resent_after_a_lost_answer_is_stored_once(service, tmp_path):
    """An evaluation's idempotency key is drawn when it is built and kept in the outbox's file, so a resend after a
    lost answer (the client's retry, the outbox's next flush, after a restart) stores nothing more: it was a second row."""
    from student_client.outbox import Outbox

    create_curriculum(service, "cl")
    evaluation = EvaluationRequest(curriculum="cl", student_id="b", env_steps=10, episodes=1, success_rate=1.0,
                                   mean_return=1.0)
    with TeacherClient(service.url, service.student_token) as client:
        first = client.evaluate(evaluation)
        outbox = Outbox(tmp_path / "outbox.json")
        outbox.put_evaluation(evaluation)  # as if the answer to the post above had been lost
        outbox.close()
        assert Outbox(tmp_path / "outbox.json").flush(client) == 1  # delivered from the file, as after a restart
        assert client.evaluate(evaluation) == first
    headers = {"Authorization": f"Bearer {service.student_token}"}
    evaluations = httpx.get(f"{service.url}/curricula/cl/evaluations", headers=headers).json()["items"]
    assert [e["id"] for e in evaluations] == [first.evaluation_id]
