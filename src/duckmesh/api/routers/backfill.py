from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.api.write_guard import writable
from duckmesh.catalog import audit
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import RequestInvalid
from duckmesh.observability.logging import trace_id_var

router = api_router("tables")
ROUTE = "/v1/tables/{table}/backfill"  # the one route with the large body limit (DUCKMESH_MAX_BACKFILL_BYTES)
Writer = Annotated[Principal, Depends(writable(Role.TABLE_ADMIN))]
_CSV_TYPES = ("text/csv", "application/csv", "text/comma-separated-values")
_PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet", "application/octet-stream")


@router.post(
    ROUTE,
    responses={
        200: {"description": "published as one backfill snapshot (or the original result for a repeated id)"},
        400: {}, 401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 503: {},
    },
    openapi_extra={"requestBody": {"content": {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    }, "required": True}},
)
async def backfill(
    table: str, principal: Writer, request: Request,
    backfill_id: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")],
) -> dict[str, Any]:
    """Stream the body (NDJSON payload rows or one Parquet file) to disk, then load it."""
    ctx: AppContext = request.app.state.ctx
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _CSV_TYPES:
        raise RequestInvalid(
            "CSV is not supported by backfill: send NDJSON (one payload object per line) or one Parquet file;"
            " `duckmesh ingest TABLE FILE.csv` converts CSV with the table's column types and loads it",
            content_type=content_type)
    # The body is scratch data of this server: under the state dir, owner-only, never the system temp dir.
    scratch_root = ctx.settings.state_dir.resolve() / "scratch"
    scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backfill-", dir=scratch_root) as scratch:
        body = Path(scratch) / "body"
        with open(body, "wb") as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        with open(body, "rb") as handle:
            magic = handle.read(4)
        fmt = "parquet" if content_type in _PARQUET_TYPES or magic == b"PAR1" else "ndjson"
        result = await ctx.backfill.load(
            principal.tenant_id, table, backfill_id, body, fmt, principal.key_id or "api"
        )
    async with ctx.pool.connection() as conn:
        await audit.record(conn, principal, "table.backfill", "table", table,
                           {"backfill_id": re.sub(r"\s", "", backfill_id), **result.to_json()}, trace_id_var.get())
    return result.to_json()
