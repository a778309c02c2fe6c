"""The FastAPI app factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from duckmesh import __version__
from duckmesh.api import errors
from duckmesh.api.context import AppContext, OpsContext
from duckmesh.api.middleware import RequestContextMiddleware
from duckmesh.api.routers import backfill, dead_letters, ingest, maintenance, ops, probes, query, snapshots, tables


def create_app(ctx: AppContext | OpsContext) -> FastAPI:
    """The full API for an ``AppContext``; for a worker process's ``OpsContext`` only the probes:
    health, readiness and metrics."""
    app = FastAPI(
        title="DuckMesh",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    errors.install(app)
    data_routers = (ingest, query, tables, backfill, snapshots, maintenance, dead_letters, ops)
    for module in (*data_routers, probes) if isinstance(ctx, AppContext) else (probes,):
        app.include_router(module.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=ctx.settings.max_body_bytes,
        max_backfill_bytes=ctx.settings.max_backfill_bytes,
    )
    return app


_ERROR_BODY = {
    "type": "object",
    "required": ["error_code", "message", "retryable", "context", "trace_id"],
    "properties": {
        "error_code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"},
        "context": {"type": "object"}, "trace_id": {"type": ["string", "null"]},
    },
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The served document says what the API really answers: request validation errors are
    400 (never FastAPI's 422) and every error uses the one error body."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_BODY
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {})
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["description"] = response.get("description") or "error"
                    response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    app.openapi_schema = schema
    return schema
