from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from duckmesh.api import audit
from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.catalog import tables
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import ValidationFailed
from duckmesh.schema import NAME_PATTERN, CompatibilityMode, SchemaError, TableSchema
from duckmesh.tables import lifecycle

router = api_router("tables")
Admin = Annotated[Principal, Depends(require(Role.TABLE_ADMIN))]
Reader = Annotated[Principal, Depends(require(Role.TABLE_ADMIN, Role.QUERY_READER))]


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    nullable: bool = True


class CreateTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table_name: str = Field(pattern=NAME_PATTERN.pattern)
    columns: list[ColumnSpec] = Field(min_length=1)
    primary_key: list[str] = Field(default_factory=list)
    partition_by: list[str] = Field(default_factory=list)
    compatibility_mode: CompatibilityMode = "backward"


class TableInfo(BaseModel):
    table_id: int
    tenant_id: int
    table_name: str
    schema_version: int
    columns: list[dict[str, Any]]
    primary_key: list[str]
    partition_by: list[str]
    compatibility_mode: str
    created_at: str
    updated_at: str
    stats: dict[str, int]


class TableList(BaseModel):
    tenant_id: int
    tables: list[TableInfo]


@router.post("/v1/tables", status_code=201, response_model=TableInfo, responses={400: {}, 401: {}, 403: {}, 409: {}})
async def create_table(body: CreateTable, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    try:
        schema = TableSchema.build([c.model_dump() for c in body.columns], body.primary_key, body.partition_by)
    except SchemaError as exc:
        raise ValidationFailed(str(exc), table=body.table_name) from None
    table = await lifecycle.create_table(
        ctx.pool, principal.tenant_id, body.table_name, schema, body.compatibility_mode, audit.created_by(principal),
        audit.entry(principal, "table.create", "table", body.table_name, {"table_name": body.table_name}),
    )
    return table.to_info()


@router.get("/v1/tables", response_model=TableList, responses={401: {}, 403: {}})
async def list_tables(principal: Reader, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await tables.list_tables(conn, principal.tenant_id, with_stats=True)
    return {"tenant_id": principal.tenant_id, "tables": [t.to_info() for t in found]}


@router.get("/v1/tables/{table}", response_model=TableInfo, responses={401: {}, 403: {}, 404: {}})
async def get_table(table: str, principal: Reader, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await tables.get_table(conn, principal.tenant_id, table, with_stats=True)
    return found.to_info()


class AlterTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: list[ColumnSpec] = Field(min_length=1)
    compatibility_mode: CompatibilityMode | None = None


class DroppedTable(BaseModel):
    table_id: int
    table_name: str
    dropped: bool
    snapshot_id: int


@router.patch("/v1/tables/{table}", response_model=TableInfo, responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {}})
async def alter_table(table: str, body: AlterTable, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    altered = await lifecycle.alter_table(
        ctx.pool, principal.tenant_id, table, [c.model_dump() for c in body.columns], body.compatibility_mode,
        audit.created_by(principal),
        audit.entry(principal, "table.alter", "table", table, {"table_name": table}),
    )
    return altered.to_info()


@router.get("/v1/tables/{table}/schemas", responses={401: {}, 403: {}, 404: {}})
async def table_schemas(table: str, principal: Reader, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await tables.get_table(conn, principal.tenant_id, table)
        history = await tables.schema_history(conn, found.table_id)
    return {"table_id": found.table_id, "table_name": table, "schema_version": found.schema_version,
            "schemas": history}


@router.delete("/v1/tables/{table}", response_model=DroppedTable, responses={401: {}, 403: {}, 404: {}})
async def drop_table(table: str, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    found, snapshot = await lifecycle.drop_table(
        ctx.pool, ctx.bus, principal.tenant_id, table, audit.created_by(principal),
        audit.entry(principal, "table.drop", "table", table, {"table_name": table}),
    )
    return {"table_id": found.table_id, "table_name": table, "dropped": True, "snapshot_id": snapshot.snapshot_id}
