"""The students' routes parse request bodies with orjson: under batch load the json module's parsing was a
visible share of the service's time (docs/scale-history.md). What orjson refuses goes to the json module, as it did
before: NaN, Infinity and 1e999 (which the schemas then refuse field by field), lone surrogates (which pydantic
refuses in a string field) and invalid JSON. Those routes take no free-form JSON, so orjson's one other difference,
an integer beyond 64 bits read as a float, meets the same bounds as the integer would."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._json = json.loads(body)
        return self._json


class OrjsonRoute(APIRoute):
    """A route whose handler reads its JSON body with `OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def orjson_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return orjson_handler
