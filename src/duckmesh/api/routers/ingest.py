from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.api.write_guard import writable
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.ingest.models import IngestReceipt, IngestRequest
from duckmesh.observability.logging import trace_id_var

router = api_router("ingest")
Writer = Annotated[Principal, Depends(writable(Role.INGEST_WRITER))]


@router.post(
    "/v1/ingest/{table}",
    response_model=IngestReceipt,
    responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 429: {}, 503: {}, 504: {}},
)
async def ingest(table: str, body: IngestRequest, principal: Writer, request: Request) -> IngestReceipt:
    ctx: AppContext = request.app.state.ctx
    return await ctx.ingest.ingest(principal, table, body, trace_id_var.get())
