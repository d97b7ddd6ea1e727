"""HTTP client of the teacher service, sync (`TeacherClient`) and async (`AsyncTeacherClient`).

Connection errors and 5xx answers are retried with exponential backoff (tenacity), waiting at least what a
503's `Retry-After` asks (an overloaded service sheds requests so; capped by the backoff's maximum); a retried report
is safe because the service answers a repeated report with its first answer. A 4xx answer is not
retried: it raises `TeacherError` with the status code and the server's ``detail``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, TypeAdapter, ValidationError

from teacher_service.wire import (
    NO_TARGET_TASKS,
    CurriculumCreate,
    CurriculumInfo,
    CurriculumName,
    EvaluationAck,
    EvaluationRequest,
    Proposal,
    ProposeBatchRequest,
    ProposeBatchResponse,
    ProposeRequest,
    ReportAck,
    ReportBatchRequest,
    ReportBatchResponse,
    ReportRequest,
    Signals,
    StudentContext,
    TargetTasks,
    item_problems,
)

DEFAULT_URL = "http://127.0.0.1:8000"
log = logging.getLogger(__name__)
_CURRICULUM_NAME = TypeAdapter(CurriculumName)
M = TypeVar("M")


class TeacherError(Exception):
    """The service answered with an error status (or could not be reached: `TeacherUnavailableError`)."""

    def __init__(self, status_code: int | None, detail: Any) -> None:
        super().__init__(f"teacher service error {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class TeacherUnavailableError(TeacherError):
    """Connection failure, timeout or 5xx answer that persisted through the retries."""

    def __init__(self, status_code: int | None, detail: Any, retry_after_s: float = 0.0) -> None:
        super().__init__(status_code, detail)
        self.retry_after_s = retry_after_s  # what the answer's Retry-After asked for (seconds), else 0


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if response.status_code >= 500 or response.status_code in (408, 429):  # an outage, a stalled body, a proxy's limit
        raise TeacherUnavailableError(response.status_code, detail, _retry_after_s(response))
    raise TeacherError(response.status_code, detail)


def _retry_after_s(response: httpx.Response) -> float:
    """A `Retry-After` in seconds; 0 for none, or for the HTTP-date form, which the service does not send."""
    try:
        seconds = float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
    return seconds if 0 <= seconds < float("inf") else 0.0


def _unavailable(exc: httpx.TransportError, answered_before: bool) -> TeacherError:
    """The error of a request that got no answer: `TeacherUnavailableError` (retried; a session trains on env-default
    tasks meanwhile), unless TLS says that the URL or the trust cannot work, which no retry mends: an https URL for a
    service that speaks plain HTTP, a certificate not trusted here. A certificate refused after the service has
    answered (`answered_before`) was trusted then: it expired or was replaced, an outage until it is renewed, not the
    end of a long run."""
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        error = TeacherUnavailableError if answered_before else TeacherError
        return error(None, f"TLS: {cause.verify_message or cause}: the service's certificate is not trusted here "
                           "(SSL_CERT_FILE names the bundle httpx trusts)")
    if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
        return TeacherError(None, "TLS: the service answered in plain HTTP: use an http:// URL, not https://")
    return TeacherUnavailableError(None, repr(exc))


def _retry_options(attempts: int, max_backoff_s: float) -> dict[str, Any]:
    backoff = tenacity.wait_exponential(multiplier=0.1, max=max_backoff_s)

    def wait(state: tenacity.RetryCallState) -> float:
        # Retrying an overloaded service sooner than it asks would meet the same queue.
        asked = getattr(state.outcome.exception(), "retry_after_s", 0.0) if state.outcome else 0.0
        return max(backoff(state), min(asked, max_backoff_s))

    return dict(
        retry=tenacity.retry_if_exception_type((httpx.TransportError, TeacherUnavailableError)),
        wait=wait,
        stop=tenacity.stop_after_attempt(attempts),
        reraise=True,
    )


def _parse(response: httpx.Response, model: Any) -> Any:
    if model is None:
        return None
    return TypeAdapter(model).validate_python(response.json())


def _body(model: BaseModel | None) -> dict | None:
    return None if model is None else model.model_dump(mode="json", exclude_none=True)


def _batches(items: list[dict], size: int, max_bytes: int) -> Iterator[list[dict]]:
    """Consecutive runs of `items`, each at most `size` items and `max_bytes` of JSON: the service answers 413 to a
    larger body, failing the whole call (1,024 reports with many `extra` signals made 5.6 MB)."""
    batch: list[dict] = []
    used = len('{"items":[]}')
    for item in items:
        length = len(json.dumps(item)) + 1  # spaces and escapes the compact encoding of the request may not have
        if batch and (len(batch) == size or used + length > max_bytes):
            yield batch
            batch, used = [], len('{"items":[]}')
        batch.append(item)
        used += length
    if batch:
        yield batch


def _propose_items(curriculum: str, student_ids: Sequence[str],
                   contexts: Sequence[StudentContext | None] | None) -> list[dict | TeacherError]:
    """Each student's `/propose` body, or the `TeacherError` 422 the service gives an invalid item of a batch (an
    invalid student id fails alone, not the whole call)."""
    if contexts is not None and len(contexts) != len(student_ids):
        raise ValueError(f"{len(contexts)} contexts for {len(student_ids)} students")
    items: list[dict | TeacherError] = []
    for k, student in enumerate(student_ids):
        try:
            items.append(_body(ProposeRequest(curriculum=curriculum, student_id=student,
                                              context=contexts[k] if contexts else None)))
        except ValidationError as exc:
            items.append(TeacherError(422, item_problems(exc)))
    return items


def _in_place(items: list[dict | TeacherError], answers: list[Any]) -> list[Any]:
    """The answers to the valid items, in order, with the invalid items' errors in their places."""
    answered = iter(answers)
    return [item if isinstance(item, TeacherError) else next(answered) for item in items]


class _BatchPlan:
    """The batch calls of one `propose_many` or `report_many`, and their answers: at most the client's `batch_items`
    items and `batch_bytes` of JSON a call. A service that takes fewer items a batch (TEACHER_MAX_BATCH_ITEMS) refuses
    the call with a 422 that names its limit: the client lowers its `batch_items` to it and goes on from the first item
    not sent (the call failed as a whole, so nothing of it was stored)."""

    def __init__(self, client: _Base, items: list[dict], request: type[ProposeBatchRequest | ReportBatchRequest],
                 key: str) -> None:
        self.client, self.items, self.request, self.key = client, items, request, key
        self.sent, self.answers = 0, []

    def next(self) -> ProposeBatchRequest | ReportBatchRequest | None:
        batch = next(_batches(self.items[self.sent:], self.client.batch_items, self.client.batch_bytes), None)
        return None if batch is None else self.request(items=batch)

    def take(self, batch: ProposeBatchRequest | ReportBatchRequest, answered: Any) -> None:
        self.answers += _item_results(answered, self.key)
        self.sent += len(batch.items)

    def refused(self, error: TeacherError) -> None:
        """Raises `error` unless it is the service's limit on items, which then becomes the client's."""
        limit = _batch_limit(error)
        if limit is None or limit >= self.client.batch_items:
            raise error
        log.warning("the teacher service takes at most %d items a batch: batch_items lowered from %d", limit,
                    self.client.batch_items)
        self.client.batch_items = limit


def _batch_limit(error: TeacherError) -> int | None:
    """The most items a batch may hold, if `error` is the service's 422 for a batch with more (api/episodes.py)."""
    if error.status_code != 422 or not isinstance(error.detail, list):
        return None
    for problem in error.detail:
        if isinstance(problem, dict) and problem.get("loc") == ["body", "items"] and problem.get("type") == "too_long":
            limit = (problem.get("ctx") or {}).get("max_length")
            if isinstance(limit, int) and limit >= 1:
                return limit
    return None


def _created_before(info: CurriculumInfo, spec: CurriculumCreate) -> bool:
    """Whether an existing curriculum is the one `spec` asks for: a retry of a create whose answer was lost (a
    timeout) finds it created, as does a script run again."""
    fields = set(CurriculumCreate.model_fields)
    return info.model_dump(mode="json", include=fields) == spec.model_dump(mode="json", include=fields)


def _item_results(response: ProposeBatchResponse | ReportBatchResponse, key: str) -> list[Any]:
    """Each item's result, or a TeacherError with the status and detail the service gave that item."""
    return [TeacherError(item.error.status, item.error.detail) if item.error else getattr(item, key)
            for item in response.results]


def _checked_url(url: str) -> str:
    """The service's URL, refused at once if no request could ever reach it: httpx would say so on every call,
    as a transport error, which students take for an outage and train the whole run without their teacher."""
    url = url.strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"teacher URL {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"teacher URL {url!r} must start with http:// or https:// and name a host, e.g. {DEFAULT_URL}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"teacher URL {url!r} has no valid port (1 to 65535)")
    # Each call's path would be joined after the query (http://h:8000?x=1/propose: 405 on every call). A fragment
    # is never sent: it does no harm.
    if "?" in url.split("#")[0]:
        raise ValueError(f"teacher URL {url!r} has a query (?...): give the service's base URL only, e.g. {DEFAULT_URL}")
    return url.rstrip("/")


def _checked_token(token: str) -> str:
    """The token without the whitespace around it, refused at once if it cannot be sent in a header: httpx would fail
    every call. A token read from a file or a variable often ends in a newline or a space, which no header may end
    in and the service strips from what it is given: it can never be part of a token."""
    token = token.strip()
    if not token:
        raise ValueError("the teacher token is blank (whitespace only): give the service's token, or none at all for "
                         "a service run with --insecure")
    if not (token.isascii() and token.isprintable()):
        raise ValueError("the teacher token holds a control character (a tab or a line break inside it) or a "
                         "non-ASCII character: it cannot be sent in a header")
    return token


def _curriculum_path(name: str, *rest: str) -> str:
    """A curriculum's path, for a name that a curriculum can have: '../healthz' went to /healthz, and 'cl?x=1' to
    curriculum 'cl'."""
    try:
        _CURRICULUM_NAME.validate_python(name)
    except ValidationError as exc:
        raise ValueError(f"{name!r} is not a curriculum name: {exc.errors()[0]['msg']}") from None
    return "/".join(("/curricula", name, *rest))


def _no_target(error: TeacherError) -> bool:
    """Whether a target's 404 says the curriculum names no target tasks, not that there is no such curriculum."""
    return error.status_code == 404 and str(error.detail).endswith(NO_TARGET_TASKS)


def _healthy(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _answering(status: int | None) -> bool:
    return status is not None and status not in (502, 503, 504)


@dataclass
class _Learnt:
    """What a client learns of its service, shared with its `once()` copies: a limit one of them meets holds for all."""

    batch_items: int
    answered: bool = False  # the service has answered a call (through TLS: its certificate was trusted then)


class _Base:
    def __init__(self, url: str | None, token: str | None, timeout_s: float, attempts: int,
                 max_backoff_s: float, batch_items: int, batch_bytes: int) -> None:
        if not timeout_s > 0:  # httpx fails every call with it, as a transport error: an outage for ever
            raise ValueError(f"timeout_s must be above 0, not {timeout_s}")
        if batch_items < 1 or batch_bytes < 1024:
            raise ValueError(f"batch_items must be at least 1 and batch_bytes at least 1024, not {batch_items} and "
                             f"{batch_bytes}")
        self._learnt = _Learnt(batch_items)  # shared with `once()`'s copies
        self.batch_bytes = batch_bytes  # JSON bytes per batch call; at most its TEACHER_MAX_BATCH_BODY_BYTES
        self.url = _checked_url(url or os.environ.get("TEACHER_URL") or DEFAULT_URL)
        token = token if token is not None else os.environ.get("TEACHER_TOKEN")
        self._headers = {"Authorization": f"Bearer {_checked_token(token)}"} if token else {}
        self.timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self._retry = _retry_options(attempts, max_backoff_s)

    @property
    def batch_items(self) -> int:
        """Items per batch call; at most the service's TEACHER_MAX_BATCH_ITEMS, which the client learns from it."""
        return self._learnt.batch_items

    @batch_items.setter
    def batch_items(self, items: int) -> None:
        self._learnt.batch_items = items

    def once(self) -> Self:
        """This client with one attempt per call, no retries, on the same connections: for callers that have an outage
        policy of their own (student_client.session), whose next try after a failed one must not cost all the retries
        again (a teacher that answers /healthz but not the call, e.g. its database stalled). Close the client, not the
        copy: they share the connections."""
        view = copy.copy(self)
        view._retry = _retry_options(1, 0.0)
        return view

    def _within(self, timeout_s: float | None) -> httpx.Timeout:
        """The client's timeout, or ``timeout_s`` where that is shorter."""
        return self._timeout if timeout_s is None else httpx.Timeout(min(timeout_s, self.timeout_s))


class TeacherClient(_Base):
    """Synchronous client; token from the argument or ``TEACHER_TOKEN``, URL from ``TEACHER_URL``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 10.0,
                 attempts: int = 5, max_backoff_s: float = 5.0, batch_items: int = 1024,
                 batch_bytes: int = 4 * 1024 * 1024) -> None:
        super().__init__(url, token, timeout_s, attempts, max_backoff_s, batch_items, batch_bytes)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeout)

    def _request(self, method: str, path: str, body: BaseModel | None = None, model: Any = None) -> Any:
        for attempt in tenacity.Retrying(**self._retry):
            with attempt:
                try:
                    response = self._http.request(method, path, json=_body(body))
                except httpx.TransportError as exc:
                    raise _unavailable(exc, self._learnt.answered) from exc
                self._learnt.answered = True
                _raise_for_status(response)
        return _parse(response, model)

    def propose(self, curriculum: str, student_id: str, context: StudentContext | None = None) -> Proposal:
        """Ask for the next task of ``student_id``."""
        return self._request("POST", "/propose", ProposeRequest(curriculum=curriculum, student_id=student_id,
                                                                context=context), Proposal)

    def report(self, proposal_id: str, student_id: str, signals: Signals, outcome: str = "completed") -> ReportAck:
        """Report what the student measured on the episode of ``proposal_id`` (idempotent); ``outcome``
        "stopped" or "abandoned" marks an episode cut short or never run, which rewards no teacher."""
        return self._request("POST", "/report", ReportRequest(proposal_id=proposal_id, student_id=student_id,
                                                              signals=signals, outcome=outcome), ReportAck)

    def propose_many(self, curriculum: str, student_ids: Sequence[str],
                     contexts: Sequence[StudentContext | None] | None = None) -> list[Proposal | TeacherError]:
        """One proposal per student id (e.g. one per environment of a vectorized learner), through
        ``POST /propose/batch``; an item the service refused, or that is not valid (a `TeacherError` 422, as the
        service would answer it), is a `TeacherError` in its place."""
        items = _propose_items(curriculum, student_ids, contexts)
        valid = [item for item in items if not isinstance(item, TeacherError)]
        plan = _BatchPlan(self, valid, ProposeBatchRequest, "proposal")
        return _in_place(items, self._send_batches("/propose/batch", plan, ProposeBatchResponse))

    def report_many(self, reports: Sequence[ReportRequest]) -> list[ReportAck | TeacherError]:
        """Many reports through ``POST /report/batch`` (idempotent per proposal, so retries are safe); an item
        the service refused is a `TeacherError` in its place."""
        plan = _BatchPlan(self, [_body(report) for report in reports], ReportBatchRequest, "ack")
        return self._send_batches("/report/batch", plan, ReportBatchResponse)

    def _send_batches(self, path: str, plan: _BatchPlan, response: type) -> list[Any]:
        while (batch := plan.next()) is not None:
            try:
                plan.take(batch, self._request("POST", path, batch, response))
            except TeacherError as exc:
                plan.refused(exc)
        return plan.answers

    def evaluate(self, evaluation: EvaluationRequest) -> EvaluationAck:
        """Post an evaluation on the environment's default task distribution."""
        return self._request("POST", "/evaluations", evaluation, EvaluationAck)

    def create_curriculum(self, spec: CurriculumCreate) -> CurriculumInfo:
        """Create a curriculum (needs the admin token); one that exists with this very spec is returned (say, the
        first attempt's answer was lost), one by that name with another spec is a `TeacherError` 409."""
        try:
            return self._request("POST", "/curricula", spec, CurriculumInfo)
        except TeacherError as exc:
            if exc.status_code != 409:
                raise
            conflict = exc
        try:
            existing = self.get_curriculum(spec.name)
        except TeacherError:
            raise conflict from None
        if not _created_before(existing, spec):
            raise conflict
        return existing

    def get_curriculum(self, name: str) -> CurriculumInfo:
        return self._request("GET", _curriculum_path(name), model=CurriculumInfo)

    def list_curricula(self) -> list[CurriculumInfo]:
        return self._request("GET", "/curricula", model=list[CurriculumInfo])

    def target(self, curriculum: str) -> TargetTasks | None:
        """The curriculum's target tasks (what its students evaluate on); None if it names none, a `TeacherError` 404
        if there is no such curriculum."""
        try:
            return self._request("GET", _curriculum_path(curriculum, "target"), model=TargetTasks)
        except TeacherError as exc:
            if _no_target(exc):
                return None
            raise

    def delete_curriculum(self, name: str) -> None:
        self._request("DELETE", _curriculum_path(name))

    def health(self, timeout_s: float | None = None) -> bool:
        """Whether the service answers ``/healthz`` with success (one attempt, no retry), within the client's timeout
        or ``timeout_s`` if shorter."""
        return _healthy(self._healthz(timeout_s))

    def answers(self, timeout_s: float | None = None) -> bool:
        """Whether the service answers at all, as `health` asks: any answer but 502-504 (what a proxy says for a
        service behind it that is down), so that a proxy that does not route ``/healthz`` (a 404) counts."""
        return _answering(self._healthz(timeout_s))

    def _healthz(self, timeout_s: float | None) -> int | None:
        try:
            return self._http.get("/healthz", timeout=self._within(timeout_s)).status_code
        except httpx.TransportError:
            return None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTeacherClient(_Base):
    """Asynchronous client with the same methods as `TeacherClient`, awaitable."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 10.0,
                 attempts: int = 5, max_backoff_s: float = 5.0, batch_items: int = 1024,
                 batch_bytes: int = 4 * 1024 * 1024) -> None:
        super().__init__(url, token, timeout_s, attempts, max_backoff_s, batch_items, batch_bytes)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)

    async def _request(self, method: str, path: str, body: BaseModel | None = None, model: Any = None) -> Any:
        async for attempt in tenacity.AsyncRetrying(**self._retry):
            with attempt:
                try:
                    response = await self._http.request(method, path, json=_body(body))
                except httpx.TransportError as exc:
                    raise _unavailable(exc, self._learnt.answered) from exc
                self._learnt.answered = True
                _raise_for_status(response)
        return _parse(response, model)

    async def propose(self, curriculum: str, student_id: str, context: StudentContext | None = None) -> Proposal:
        return await self._request("POST", "/propose", ProposeRequest(curriculum=curriculum, student_id=student_id,
                                                                      context=context), Proposal)

    async def report(self, proposal_id: str, student_id: str, signals: Signals,
                     outcome: str = "completed") -> ReportAck:
        return await self._request("POST", "/report", ReportRequest(proposal_id=proposal_id, student_id=student_id,
                                                                    signals=signals, outcome=outcome), ReportAck)

    async def propose_many(self, curriculum: str, student_ids: Sequence[str],
                           contexts: Sequence[StudentContext | None] | None = None) -> list[Proposal | TeacherError]:
        items = _propose_items(curriculum, student_ids, contexts)
        valid = [item for item in items if not isinstance(item, TeacherError)]
        plan = _BatchPlan(self, valid, ProposeBatchRequest, "proposal")
        return _in_place(items, await self._send_batches("/propose/batch", plan, ProposeBatchResponse))

    async def report_many(self, reports: Sequence[ReportRequest]) -> list[ReportAck | TeacherError]:
        plan = _BatchPlan(self, [_body(report) for report in reports], ReportBatchRequest, "ack")
        return await self._send_batches("/report/batch", plan, ReportBatchResponse)

    async def _send_batches(self, path: str, plan: _BatchPlan, response: type) -> list[Any]:
        while (batch := plan.next()) is not None:
            try:
                plan.take(batch, await self._request("POST", path, batch, response))
            except TeacherError as exc:
                plan.refused(exc)
        return plan.answers

    async def evaluate(self, evaluation: EvaluationRequest) -> EvaluationAck:
        return await self._request("POST", "/evaluations", evaluation, EvaluationAck)

    async def create_curriculum(self, spec: CurriculumCreate) -> CurriculumInfo:
        """As `TeacherClient.create_curriculum`."""
        try:
            return await self._request("POST", "/curricula", spec, CurriculumInfo)
        except TeacherError as exc:
            if exc.status_code != 409:
                raise
            conflict = exc
        try:
            existing = await self.get_curriculum(spec.name)
        except TeacherError:
            raise conflict from None
        if not _created_before(existing, spec):
            raise conflict
        return existing

    async def get_curriculum(self, name: str) -> CurriculumInfo:
        return await self._request("GET", _curriculum_path(name), model=CurriculumInfo)

    async def list_curricula(self) -> list[CurriculumInfo]:
        return await self._request("GET", "/curricula", model=list[CurriculumInfo])

    async def target(self, curriculum: str) -> TargetTasks | None:
        try:
            return await self._request("GET", _curriculum_path(curriculum, "target"), model=TargetTasks)
        except TeacherError as exc:
            if _no_target(exc):
                return None
            raise

    async def delete_curriculum(self, name: str) -> None:
        await self._request("DELETE", _curriculum_path(name))

    async def health(self, timeout_s: float | None = None) -> bool:
        return _healthy(await self._healthz(timeout_s))

    async def answers(self, timeout_s: float | None = None) -> bool:
        return _answering(await self._healthz(timeout_s))

    async def _healthz(self, timeout_s: float | None) -> int | None:
        try:
            return (await self._http.get("/healthz", timeout=self._within(timeout_s))).status_code
        except httpx.TransportError:
            return None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
