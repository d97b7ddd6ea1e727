"""Single /propose and /report requests that wait together run as one batch (api/deps.py Gatherer), each answered
with its own result or error."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import prometheus_client
import psycopg
import pytest
from starlette.requests import Request

from teacher_service.serving.api.deps import Gatherer, RequestThreads, run_each_alone_on_fault, run_in_request_thread
from teacher_service.serving.group_commit import GroupCommitter
from teacher_service.serving.store.tables import make_engine
from tests.servers import ServiceProcess, wait_until
from tests.serving.test_api import MAZE, counts
from tests.serving.test_metrics import scrape, value

SIGNALS = {"grad_norm_mean": 1.5, "grad_norm_episode": 0.7, "episode_return": 3.0, "env_steps": 300}


def gathered(service, verb: str) -> tuple[float, float]:
    """How many batches of gathered requests ran for `verb`, and how many requests they held."""
    samples = scrape(service)
    return (value(samples, "teacher_gathered_requests_count", verb=verb),
            value(samples, "teacher_gathered_requests_sum", verb=verb))


def held_back(service, requests: list[tuple[str, dict]]) -> list:
    """Post the first request while another connection holds SQLite's write lock, so that it holds the only request
    slot; then the others, which wait for it; release the lock once all of them wait. The responses, in order."""
    blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            client = service.client()
            first = pool.submit(client.post, requests[0][0], json=requests[0][1])
            wait_until(lambda: value(scrape(service), "teacher_request_threads_busy") == 1, 30,
                       "the first request holding the only slot")
            rest = [pool.submit(client.post, path, json=body) for path, body in requests[1:]]
            wait_until(lambda: value(scrape(service), "teacher_requests_waiting") == len(rest), 30,
                       f"{len(rest)} requests waiting")
            blocker.execute("ROLLBACK")
            return [first.result(), *(f.result() for f in rest)]
    finally:
        blocker.close()


def test_waiting_single_requests_run_as_one_batch_each_with_its_own_answer(tmp_path):
    # The requests are held back until all of them wait: not shed however long that takes on a busy machine.
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1", "TEACHER_MAX_QUEUE_WAIT_S": "600"}).start()
    try:
        client = service.client()
        # The teacher's defaults: an update every 10 rewarded episodes.
        created = client.post("/curricula", json={"name": "maze", "task_space": MAZE,
                                                  "teacher": {"algorithm": "gradnorm-reinforce"}})
        assert created.status_code == 201, created.text
        students = [f"s{k}" for k in range(12)]

        proposes = [("/propose", {"curriculum": "maze", "student_id": s}) for s in students]
        answers = held_back(service, [*proposes, ("/propose", {"curriculum": "nowhere", "student_id": "s0"})])
        assert [a.status_code for a in answers] == [200] * 12 + [404]
        proposals = [a.json() for a in answers[:12]]
        assert [p["student_id"] for p in proposals] == students
        assert len({p["proposal_id"] for p in proposals}) == 12
        assert all(len(p["reset_options"]["goal_cell"]) == 2 for p in proposals)
        # The first alone, then the twelve that waited for it together (the unknown curriculum's among them).
        assert gathered(service, "propose") == (2, 13)
        assert len({p["proposal_id"][:16] for p in proposals[1:]}) == 1  # ids begin with the time of their one teacher call

        reports = [("/report", {"proposal_id": p["proposal_id"], "student_id": p["student_id"], "signals": SIGNALS})
                   for p in proposals]
        resend, intruder = reports[3], ("/report", {**reports[5][1], "student_id": "intruder"})
        unknown = ("/report", {**reports[0][1], "proposal_id": "f" * 32})
        answers = held_back(service, [*reports, resend, intruder, unknown])
        assert [a.status_code for a in answers] == [200] * 13 + [409, 404], [a.text for a in answers]
        acks = [a.json() for a in answers[:13]]
        assert [a["proposal_id"] for a in acks] == [p["proposal_id"] for p in proposals] + [proposals[3]["proposal_id"]]
        assert acks[12] == acks[3]  # the resend gets the first answer, whichever of the two ran first
        assert sum(a["teacher_updated"] for a in acks[:12]) == 1  # the tenth report numbered a batch
        assert gathered(service, "report") == (2, 15)
        assert client.get("/curricula/maze").json()["teacher_updates"] == 1  # once applied
        assert counts(service) == {"proposals": 12, "reports": 12, "updates": 1, "curricula": 1}
    finally:
        service.stop()


def writer_for(verb) -> tuple[ThreadPoolExecutor, Callable[[list], Future]]:
    """A thread that does `verb`'s work as the hub's writer does a batch verb's (`start(items)`: its future)."""
    writer = ThreadPoolExecutor(1)
    return writer, lambda items: writer.submit(verb, items)


def each_alone_on_fault(verb, items: list) -> list:
    writer, start = writer_for(verb)
    try:
        return asyncio.run(run_each_alone_on_fault(start, items))
    finally:
        writer.shutdown()


def test_a_fault_in_a_gathered_batch_fails_only_the_items_that_meet_it():
    runs: list[list[str]] = []

    def verb(items: list[str]) -> list[str]:
        runs.append(items)
        if "bug" in items:
            raise ValueError("a bug this item meets")
        return [item.upper() for item in items]

    results = each_alone_on_fault(verb, ["a", "bug", "c"])
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert runs == [["a", "bug", "c"], ["a"], ["bug"], ["c"]]


def test_an_unavailable_database_fails_a_gathered_batch_at_once():
    runs: list[list[str]] = []

    def verb(items: list[str]) -> list[str]:
        runs.append(items)
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError):  # every request of the batch answers 503; none is tried again
        each_alone_on_fault(verb, ["a", "b"])
    assert runs == [["a", "b"]]


async def still_there() -> dict:
    """An ASGI `receive` whose client is still connected."""
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


def waiting_requests() -> float:
    return prometheus_client.REGISTRY.get_sample_value("teacher_requests_waiting")


def slots_held() -> float:
    return prometheus_client.REGISTRY.get_sample_value("teacher_request_threads_busy")


def app_with(threads: RequestThreads) -> SimpleNamespace:
    """What `run_in_request_thread` and the routes read of the application."""
    return SimpleNamespace(state=SimpleNamespace(request_threads=threads))


def gatherer_test(verb_name: str, batch_verb=None, max_items: int = 1024, threads: int = 1, receive=still_there,
                  start: Callable[[list], Future] | None = None):
    """Run `body(gatherer, ask)` on a Gatherer over `batch_verb`, done in a writer thread of its own (or over `start`);
    `ask(item)` is a single request's answer. Every slot is given back at the end, once."""

    def run(body):
        async def main():
            pool = RequestThreads(threads)
            writer, own_start = writer_for(batch_verb)
            gatherer = Gatherer(pool, verb_name, start or own_start, max_items)
            held = slots_held()
            try:  # a request left hanging fails the test rather than stalling it
                answers = await asyncio.wait_for(body(gatherer, lambda item: gatherer.call(
                    Request({"type": "http", "app": app_with(pool)}, receive), item)), 20)
            finally:
                pool.close()
                writer.shutdown()
            assert slots_held() == held and not pool.slots.locked()
            return answers

        return asyncio.run(main())

    return run


def test_under_steady_arrivals_each_request_is_answered_once_its_group_ends():
    def slow_verb(items: list[int]) -> list[int]:
        time.sleep(0.05)
        return [10 * item for item in items]

    async def body(gatherer, ask):
        loop = asyncio.get_running_loop()

        async def timed(item: int) -> tuple[int, float]:
            start = loop.time()
            return await ask(item), loop.time() - start

        requests = []
        for item in range(40):  # one every 10 ms, while a group takes 50 ms
            requests.append(asyncio.create_task(timed(item)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*requests)

    answers = gatherer_test("steady", slow_verb)(body)
    assert [answer for answer, _ in answers] == [10 * item for item in range(40)]
    # Each waits for the group running when it came and then its own: about 0.1 s. (Waiting for a thread's slot
    # after its group had answered it, a request waited longer the longer the load lasted: 1.6 s here.)
    assert max(latency for _, latency in answers) < 0.5


def test_groups_hold_at_most_max_items_and_a_cancelled_request_is_not_run():
    release, groups = threading.Event(), []

    def verb(items: list[int]) -> list[int]:
        groups.append(items)
        release.wait(10)
        return items

    before = waiting_requests()

    async def body(gatherer, ask):
        first = asyncio.create_task(ask(0))
        while not groups:  # the first group holds the only slot
            await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(ask(item)) for item in range(1, 11)]
        await asyncio.sleep(0.05)
        assert waiting_requests() == before + 10
        waiting[4].cancel()  # item 5: its client is gone before it ran
        await asyncio.sleep(0.05)
        assert waiting_requests() == before + 9
        release.set()
        answers = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert isinstance(answers[5], asyncio.CancelledError)
        return [a for k, a in enumerate(answers) if k != 5]

    answers = gatherer_test("split", verb, max_items=4)(body)
    assert answers == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert groups == [[0], [1, 2, 3, 4], [6, 7, 8, 9], [10]]
    assert waiting_requests() == before


def test_the_other_routes_take_their_turn_on_the_only_thread_while_requests_keep_coming():
    def slow_verb(items: list[int]) -> list[int]:
        time.sleep(0.02)
        return items

    async def body(gatherer, ask):
        keep_asking, asked = True, []

        async def steady() -> None:
            while keep_asking:
                asked.append(asyncio.create_task(ask(len(asked))))
                await asyncio.sleep(0.005)

        arrivals = asyncio.create_task(steady())
        await asyncio.sleep(0.1)
        other_route = Request({"type": "http", "app": app_with(gatherer.threads)}, still_there)
        start = asyncio.get_running_loop().time()
        assert await run_in_request_thread(other_route, lambda: "evaluated") == "evaluated"
        waited = asyncio.get_running_loop().time() - start
        keep_asking = False
        await arrivals
        assert await asyncio.gather(*asked) == list(range(len(asked)))
        return waited

    assert gatherer_test("turns", slow_verb)(body) < 0.5  # a group or two, not the end of the arrivals


def test_a_broken_answer_or_receive_fails_only_its_own_request_and_the_chain_goes_on():
    def verb(items: list[int]) -> list:
        return [StopIteration() if item == 1 else item for item in items]

    async def failing_receive() -> dict:
        raise RuntimeError("no current task")

    async def body(gatherer, ask):
        first = await asyncio.gather(*(ask(item) for item in range(3)), return_exceptions=True)
        return first, await ask(7)

    (first, later) = gatherer_test("broken", verb, receive=failing_receive)(body)
    assert first[0] == 0 and first[2] == 2 and isinstance(first[1], RuntimeError)
    assert later == 7


def test_requests_waiting_when_the_writer_is_closed_get_an_error(tmp_path):
    committer = GroupCommitter(make_engine(f"sqlite:///{tmp_path / 'closed.db'}", request_threads=1))
    committer.close()

    async def body(gatherer, ask):
        return await asyncio.gather(ask(1), ask(2), return_exceptions=True)

    answers = gatherer_test("closed", start=lambda items: committer.submit(lambda tx: items))(body)
    assert all(isinstance(a, RuntimeError) and "closed" in str(a) for a in answers), answers

