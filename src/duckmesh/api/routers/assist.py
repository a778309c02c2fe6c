"""Endpoints for tools: the tenant's schema overview and natural-language query assist."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import audit
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import PromptRequired, TranslateNotConfigured
from duckmesh.observability.logging import trace_id_var
from duckmesh.query.overview import MAX_SAMPLE_ROWS, OverviewReader

router = api_router("query")
Reader = Annotated[Principal, Depends(require(Role.QUERY_READER))]


class ColumnInfo(BaseModel):
    name: str
    type: str
    nullable: bool


class TableOverviewInfo(BaseModel):
    table_name: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    row_count: int | None
    sample_rows: list[list[Any]]


class SchemaOverviewInfo(BaseModel):
    tenant_id: int
    tables: list[TableOverviewInfo]
    snapshot_id: int | None
    snapshot_time: str | None
    max_visibility_token: int
    translate_enabled: bool  # POST /v1/query/translate is configured on this server


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=4000)


class TranslateResponse(BaseModel):
    sql: str
    provider: str
    model: str
    sandbox_ok: bool
    sandbox_error_code: str | None
    warnings: list[str]
    referenced_tables: list[str]


@router.get("/v1/ui/schema", response_model=SchemaOverviewInfo, responses={400: {}, 401: {}, 403: {}})
async def ui_schema(
    principal: Reader, request: Request,
    sample_rows: Annotated[int | None, Query(ge=0, le=MAX_SAMPLE_ROWS)] = None,
) -> dict[str, Any]:
    """Typed columns, primary key, row count and a few sample rows of every table of the caller's
    tenant, all read through the query sandbox at the latest snapshot."""
    ctx: AppContext = request.app.state.ctx
    rows = ctx.settings.ui_schema_sample_rows if sample_rows is None else sample_rows
    overview = await OverviewReader(ctx.pool, ctx.query).read(principal, rows, trace_id_var.get())
    return {"tenant_id": principal.tenant_id, **overview.to_json(), "translate_enabled": ctx.assist is not None}


@router.post(
    "/v1/query/translate", response_model=TranslateResponse,
    responses={400: {}, 401: {}, 403: {}, 501: {}, 502: {}, 504: {}},
)
async def translate(body: TranslateRequest, principal: Reader, request: Request) -> dict[str, Any]:
    """A suggested SQL query for a question; never executed here. ``sandbox_ok`` says whether
    ``POST /v1/query`` would accept it."""
    ctx: AppContext = request.app.state.ctx
    if ctx.assist is None:
        raise TranslateNotConfigured(
            "query translation is off; set DUCKMESH_AI_TRANSLATE_ENABLED=true, DUCKMESH_AI_BASE_URL and "
            "DUCKMESH_AI_MODEL to enable it"
        )
    if not body.prompt.strip():
        raise PromptRequired("the request has no prompt")
    trace_id = trace_id_var.get()
    overview = await OverviewReader(ctx.pool, ctx.query).read(principal, ctx.settings.ui_schema_sample_rows, trace_id)
    details: dict[str, Any] = {"model": ctx.assist.config.model, "endpoint_host": ctx.assist.config.host,
                               "tables_shared": len(overview.tables), "status": "failed"}
    try:
        suggestion = await ctx.assist.translate(body.prompt, overview)
        details.update(status="answered", sandbox_ok=suggestion.sandbox_ok)
        return suggestion.to_json()
    finally:
        # The tenant's schema and sample rows went to an outside endpoint: worth an audit row either way.
        async with ctx.pool.connection() as conn:
            await audit.record(
                conn, principal, "query.translate", "tenant", str(principal.tenant_id), details, trace_id
            )
