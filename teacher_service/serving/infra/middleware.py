"""A request body's gate, before anything parses the body: its size limit and its content coding."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Answers 413 to a body over `max_bytes` (`batch_max_bytes` for paths ending in /batch and for /curricula),
    whether it announces its length or is chunked, 415 to a compressed one (`Content-Encoding: gzip`), which the JSON
    parser would otherwise call malformed (400), and 408 to one of which nothing more comes for `idle_s`, closing
    its connection: uvicorn has no such limit, so a client that announced a longer body than it sent held its
    connection (and a request) open for ever."""

    def __init__(self, app: ASGIApp, max_bytes: int, batch_max_bytes: int | None = None, idle_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.batch_max_bytes = batch_max_bytes or max_bytes
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        # A curriculum's spec may hold up to 10,000 discrete tasks and 1,000 target tasks (wire.py): far more than the
        # students' small bodies, which is what `max_bytes` is sized for.
        large = scope["path"].endswith(("/batch", "/curricula"))
        limit = self.batch_max_bytes if large else self.max_bytes
        codings = [value.strip().lower() for name, value in scope["headers"] if name == b"content-encoding"]
        coding = next((c for c in codings if c not in (b"identity", b"")), None)  # every header, not the last one
        if coding is not None:
            await self._reject(send, 415, limit, f"Content-Encoding {coding.decode('latin-1')!r} is not supported: send "
                                                 "the body uncompressed")
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await self._reject(send, 400, limit, "content-length is not a number")
            return
        if length is not None and int(length) > limit:
            await self._reject(send, 413, limit)
            return
        # Read the body here (it is small by construction) so that a chunked one is limited too.
        chunks, size = [], 0
        while True:
            try:
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                await self._reject(send, 408, limit, f"the request body stalled: nothing more came for {self.idle_s:g} s "
                                                     "(a Content-Length larger than the body sent?)", close=True)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._reject(send, 413, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, status: int, limit: int, reason: str | None = None, close: bool = False) -> None:
        detail = reason or f"request body larger than {limit} bytes"
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if close:  # the rest of the body may still come: it must not be read as the next request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
