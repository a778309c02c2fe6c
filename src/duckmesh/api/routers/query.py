from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
from fastapi import Depends, Query, Request
from starlette.responses import Response, StreamingResponse

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.observability.logging import trace_id_var
from duckmesh.query.encode import encode_rows
from duckmesh.query.models import QueryRequest, QueryResponse
from duckmesh.query.service import QueryOutcome

router = api_router("query")
Reader = Annotated[Principal, Depends(require(Role.QUERY_READER))]
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_CHUNK_ROWS = 10_000


def _meta_headers(outcome: QueryOutcome) -> dict[str, str]:
    snapshot = outcome.snapshot
    return {
        "X-DuckMesh-Snapshot-Id": str(snapshot.snapshot_id or ""),
        "X-DuckMesh-Max-Visibility-Token": str(snapshot.watermark),
        "X-DuckMesh-Truncated": str(outcome.result.truncated).lower(),
        "X-DuckMesh-Row-Count": str(outcome.result.table.num_rows),
    }


def _ndjson(table: pa.Table, sql_types: list[str]) -> Iterator[bytes]:
    names = table.column_names
    for batch in table.to_batches(_CHUNK_ROWS):
        rows = encode_rows(pa.Table.from_batches([batch]), sql_types)
        yield b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in rows)


def _csv(table: pa.Table) -> Iterator[bytes]:
    for index, batch in enumerate(table.to_batches(_CHUNK_ROWS)):
        sink = io.BytesIO()
        pa_csv.write_csv(pa.Table.from_batches([batch]), sink, pa_csv.WriteOptions(include_header=index == 0))
        yield sink.getvalue()


@router.post(
    "/v1/query",
    response_model=QueryResponse,
    responses={
        200: {"content": {ARROW_STREAM: {}, "text/csv": {}, "application/x-ndjson": {}}},
        400: {}, 401: {}, 403: {}, 404: {}, 408: {}, 429: {}, 504: {},
    },
)
async def query(
    body: QueryRequest,
    principal: Reader,
    request: Request,
    format: Annotated[Literal["json", "csv", "ndjson", "arrow"], Query()] = "json",
) -> Any:
    ctx: AppContext = request.app.state.ctx
    outcome = await ctx.query.execute(principal, body, trace_id_var.get())
    table = outcome.result.table
    if format == "arrow" or ARROW_STREAM in request.headers.get("accept", ""):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM, headers=_meta_headers(outcome))
    if format == "ndjson":
        sql_types = [c["type"] for c in outcome.result.columns]
        return StreamingResponse(
            _ndjson(table, sql_types), media_type="application/x-ndjson", headers=_meta_headers(outcome)
        )
    if format == "csv":
        return StreamingResponse(_csv(table), media_type="text/csv", headers=_meta_headers(outcome))
    snapshot = outcome.snapshot
    payload = {
        "columns": outcome.result.columns,
        "rows": encode_rows(table, [c["type"] for c in outcome.result.columns]),
        "row_count": table.num_rows,
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
