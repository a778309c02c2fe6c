from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, Query, Request
from starlette.responses import Response

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.observability.logging import trace_id_var
from duckmesh.query.engine import ResultFormat
from duckmesh.query.models import QueryRequest, QueryResponse
from duckmesh.query.service import QueryOutcome

router = api_router("query")
Reader = Annotated[Principal, Depends(require(Role.QUERY_READER))]
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _meta_headers(outcome: QueryOutcome) -> dict[str, str]:
    snapshot = outcome.snapshot
    return {
        "X-DuckMesh-Snapshot-Id": str(snapshot.snapshot_id or ""),
        "X-DuckMesh-Max-Visibility-Token": str(snapshot.watermark),
        "X-DuckMesh-Truncated": str(outcome.result.truncated).lower(),
        "X-DuckMesh-Row-Count": str(outcome.result.row_count),
    }


_MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv", "arrow": ARROW_STREAM}


@router.post(
    "/v1/query",
    response_model=QueryResponse,
    responses={
        200: {"content": {ARROW_STREAM: {}, "text/csv": {}, "application/x-ndjson": {}}},
        400: {}, 401: {}, 403: {}, 404: {}, 408: {}, 413: {}, 429: {}, 504: {},
    },
)
async def query(
    body: QueryRequest,
    principal: Reader,
    request: Request,
    format: Annotated[Literal["json", "csv", "ndjson", "arrow"], Query()] = "json",
) -> Any:
    """The result is encoded where the query ran (a worker process), in the asked format and up to
    the result byte limit; here it is only framed."""
    ctx: AppContext = request.app.state.ctx
    fmt: ResultFormat = "arrow" if ARROW_STREAM in request.headers.get("accept", "") else format
    outcome = await ctx.query.execute(principal, body, trace_id_var.get(), fmt)
    if fmt != "json":
        return Response(outcome.result.body, media_type=_MEDIA[fmt], headers=_meta_headers(outcome))
    snapshot = outcome.snapshot
    payload = {
        "columns": outcome.result.columns,
        "rows": orjson.Fragment(outcome.result.body),
        "row_count": outcome.result.row_count,
        "truncated": outcome.result.truncated,
        "snapshot_id": snapshot.snapshot_id,
        "snapshot_time": snapshot.created_at.isoformat() if snapshot.created_at else None,
        "max_visibility_token": snapshot.watermark,
        "stats": {
            "duration_ms": round(outcome.duration_ms, 3),
            "wait_ms": round(snapshot.wait_ms, 3),
            "scanned_files": outcome.scanned_files,
            "scanned_bytes": outcome.scanned_bytes,
        },
    }
    return Response(orjson.dumps(payload), media_type="application/json")
