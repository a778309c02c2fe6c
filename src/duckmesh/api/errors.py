"""Every non-2xx answer has the same body: {error_code, message, retryable, context, trace_id}."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from duckmesh.errors import DuckMeshError
from duckmesh.ingest.models import grouped_errors
from duckmesh.observability.logging import trace_id_var

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: ("NOT_FOUND", "no such route"),
    405: ("METHOD_NOT_ALLOWED", "method not allowed on this route"),
    413: ("PAYLOAD_TOO_LARGE", "request body too large"),
}


class BodyTooLarge(StarletteHTTPException):
    """The request body passed its limit while being read (also for chunked bodies, which declare
    no length). An HTTP exception, so FastAPI's body parsing lets it through as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "request body too large")
        self.limit = limit


def error_response(
    status: int, code: str, message: str, *, retryable: bool = False, context: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "error_code": code, "message": message, "retryable": retryable,
        "context": context or {}, "trace_id": trace_id_var.get(),
    }
    return Response(
        orjson.dumps(body, default=str), status_code=status, media_type="application/json", headers=headers
    )


def _validation_context(exc: RequestValidationError) -> tuple[str, dict[str, Any]]:
    """A body that is not JSON is INVALID_JSON; anything else is grouped by record index."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error") or err.get("msg", "invalid JSON")
            return "INVALID_JSON", {"reason": str(detail), "position": (err.get("loc") or [None, None])[-1]}
    in_body = [{**err, "loc": tuple(p for p in err.get("loc", ()) if p != "body")} for err in errors]
    return "VALIDATION_FAILED", grouped_errors(in_body)


def install(app: FastAPI) -> None:
    @app.exception_handler(DuckMeshError)
    async def _domain(_: Request, exc: DuckMeshError) -> Response:
        if exc.http_status >= 500:
            log.warning("request_failed", extra={"error_code": exc.error_code})
        headers = None
        if exc.http_status == 429 or "retry_after_s" in exc.context:  # shed or read-only: when to come back
            headers = {"Retry-After": str(max(1, round(float(exc.context.get("retry_after_s", 1)))))}
        return error_response(
            exc.http_status, exc.error_code, exc.message, retryable=exc.retryable, context=exc.context,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        code, context = _validation_context(exc)
        return error_response(400, code, "the request body is not valid", context=context)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code, message = _HTTP_CODES.get(exc.status_code, ("HTTP_ERROR", str(exc.detail)))
        context = {"max_body_bytes": exc.limit} if isinstance(exc, BodyTooLarge) else None
        return error_response(exc.status_code, code, message, context=context)
