"""Pure ASGI middleware: trace ids, access log and HTTP metrics, the request body limit (chosen by
route), and the auth gate that checks the key before any body is read."""

from __future__ import annotations

import logging
import re
import time

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duckmesh.api.auth import principal_of
from duckmesh.api.errors import BodyTooLarge, error_response
from duckmesh.errors import DuckMeshError
from duckmesh.observability import metrics
from duckmesh.observability.logging import new_trace_id, trace_id_var

log = logging.getLogger("duckmesh.access")
_FORM = b"application/x-www-form-urlencoded"
_TRACE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def _incoming_trace_id(headers: dict[bytes, bytes]) -> str | None:
    given = headers.get(b"x-trace-id", b"").decode("latin-1").strip()
    if given and _TRACE_ID.fullmatch(given):
        return given
    parent = _TRACEPARENT.match(headers.get(b"traceparent", b"").decode("latin-1").strip())
    return parent.group(1) if parent else None


def _default_json_body(scope: Scope) -> dict[bytes, bytes]:
    headers = dict(scope["headers"])
    if scope.get("method") in ("POST", "PATCH", "PUT") and headers.get(b"content-type", b"") in (b"", _FORM):
        # JSON is the API's body format (curl -d sends a form content type): read it as JSON.
        headers[b"content-type"] = b"application/json"
        scope["headers"] = list(headers.items())
    return headers


def _matching(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    return next((route for route in routes if route.matches(scope)[0] is Match.FULL), None)


class RequestContextMiddleware:
    """Sets the trace id, echoes it, enforces the body limit, logs one line per request."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_backfill_bytes: int | None = None,
        large_body_routes: list[BaseRoute] | None = None,
    ) -> None:
        self.app = app
        self.default_limit = max_body_bytes
        self.backfill_limit = max_backfill_bytes or max_body_bytes
        self.large_body_routes = large_body_routes or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _default_json_body(scope)
        trace_id = _incoming_trace_id(headers) or new_trace_id()
        token = trace_id_var.set(trace_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-trace-id", trace_id.encode())]
            await send(message)

        received = 0
        # The backfill route streams large files to disk; every other body has the API limit.
        limit = self.backfill_limit if _matching(self.large_body_routes, scope) else self.default_limit

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            await self.app(scope, receive_limited, send_wrapper)
        except BodyTooLarge:
            if not response_started:
                response = error_response(
                    413, "PAYLOAD_TOO_LARGE", "request body too large",
                    context={"max_body_bytes": limit},
                )
                await response(scope, receive, send_wrapper)
        except Exception:
            # Nothing crashes the process and no stack trace reaches the client.
            log.exception("unhandled_error")
            if not response_started:
                response = error_response(
                    500, "INTERNAL", "internal error; see server logs with this trace id"
                )
                await response(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "")
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, route).observe(duration)
            log.info("http_request", extra={
                "method": method, "path": scope.get("path", ""), "route": route, "status": status,
                "duration_ms": round(duration * 1000, 3),
            })
            trace_id_var.reset(token)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "<unmatched>"


class AuthGate:
    """Authenticates requests to protected routes from their headers before anything reads the
    body: a request without a valid key is answered 401 having sent at most its headers, whatever
    body it announces. The principal is handed to the route (``auth.authenticate``)."""

    def __init__(self, app: ASGIApp, protected: list[BaseRoute]) -> None:
        self.app = app
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope["app"].state.ctx if scope["type"] == "http" and "app" in scope else None
        route = _matching(self.protected, scope) if ctx is not None and ctx.settings.auth_required else None
        if ctx is None or route is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal = await principal_of(ctx, headers.get("authorization", ""), headers.get("x-api-key"),
                                           headers.get("x-tenant-id"))
        except DuckMeshError as exc:
            scope["route"] = route  # the access log and metrics name the route template
            response = error_response(exc.http_status, exc.error_code, exc.message, retryable=exc.retryable,
                                      context=exc.context)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
