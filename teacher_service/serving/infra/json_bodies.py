"""How request bodies are parsed: strings with a lone surrogate are refused (a 422 JSON decode error), since no
database here, nor the JSON encoders, can store them; and the students' routes parse with orjson, since under
batch load the json module's parsing was a visible share of the service's time (README "Scale")."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


def refuse_lone_surrogates(value: Any, body: bytes) -> Any:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise json.JSONDecodeError("a string holds a lone surrogate, which is not Unicode text",
                                   body.decode(errors="replace"), 0) from exc
    return value


class CheckedJsonRequest(Request):
    """Parsed by the json module, exactly (big integers stay integers), then checked for lone surrogates."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = refuse_lone_surrogates(json.loads(body), body)
        return self._json


class OrjsonRequest(CheckedJsonRequest):
    """Parsed by orjson. What it refuses goes to the json module as before: NaN, Infinity and 1e999, which the
    schemas then refuse field by field, and invalid JSON. The students' routes take no free-form JSON, so orjson's
    one difference, an integer beyond 64 bits read as a float, meets the same bounds as the integer would."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = orjson.loads(await self.body())
            except orjson.JSONDecodeError:
                return await super().json()
        return self._json


def route_class(request_class: type[Request]) -> type[APIRoute]:
    """A route class whose handlers read their JSON body with `request_class`."""

    class Route(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def parse_with(request: Request) -> Response:
                return await handler(request_class(request.scope, request.receive))

            return parse_with

    return Route


CheckedJsonRoute = route_class(CheckedJsonRequest)
OrjsonRoute = route_class(OrjsonRequest)
