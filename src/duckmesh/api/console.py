"""The web console: static files of ``duckmesh.console`` at ``/`` and ``/ui/...`` (no CDN, no build)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from duckmesh.errors import NotFound

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The console only talks to this server; nothing inline, nothing from elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    source = resources.files("duckmesh.console") / name
    if "/" in name or suffix not in _TYPES or not source.is_file():
        raise NotFound("no such console file", path=f"/ui/{name}")
    return Response(source.read_bytes(), media_type=_TYPES[suffix], headers=_HEADERS)


def install(app: FastAPI) -> None:
    async def index(request: Request) -> Response:
        return _asset("index.html")

    async def asset(request: Request) -> Response:
        return _asset(request.path_params["name"])

    for path in ("/", "/ui", "/ui/"):
        app.router.add_route(path, index, methods=["GET"], include_in_schema=False)
    app.router.add_route("/ui/{name}", asset, methods=["GET"], include_in_schema=False)
