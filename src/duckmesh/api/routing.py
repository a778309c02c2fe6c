"""Every API route parses JSON strictly: ``NaN``, ``Infinity`` and numbers beyond float64 are
invalid JSON (400 ``INVALID_JSON``), never stored as something else. FastAPI reads bodies with
Python's lenient ``json`` module; our routes hand it a request whose ``json()`` is orjson's."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI reports it as invalid JSON.
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


def api_router(tag: str) -> APIRouter:
    return APIRouter(tags=[tag], route_class=StrictJsonRoute)
