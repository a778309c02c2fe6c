from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from duckmesh.api import audit
from duckmesh.api.auth import require
from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.api.write_guard import writable
from duckmesh.catalog import tables
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Role
from duckmesh.errors import SchemaIncompatible, ValidationFailed
from duckmesh.observability.logging import trace_id_var
from duckmesh.query.overview import OverviewReader
from duckmesh.schema import NAME_PATTERN, CompatibilityMode, SchemaError, TableSchema
from duckmesh.tables import lifecycle

router = api_router("tables")
Admin = Annotated[Principal, Depends(writable(Role.TABLE_ADMIN))]  # every Admin route changes tables
Reader = Annotated[Principal, Depends(require(Role.TABLE_ADMIN, Role.QUERY_READER))]


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    type: str
    nullable: bool = True


# Names people reach for that are not close in spelling to the field they mean.
_COMMON_NAMES = {"pk": "primary_key", "key": "primary_key", "keys": "primary_key", "name": "table_name",
                 "table": "table_name", "fields": "columns", "schema": "columns"}


class ReferenceAliases(BaseModel):
    """The reference implementation's names for the key and partition fields, read as aliases:
    ``primary_key_cols`` for ``primary_key`` and ``partition_spec`` (a list of column names
    here) for ``partition_by``. Giving a field and its alias together is refused."""

    primary_key: list[str] | None = None
    primary_key_cols: list[str] | None = None
    partition_by: list[str] | None = None
    partition_spec: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_columns(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schema_json" in data and "columns" not in data:
            raise ValueError("schema_json (an untyped name -> type map) is not read; "
                             "give columns: [{name, type, nullable}] with this server's types")
        for name in data if isinstance(data, dict) else ():
            close = [_COMMON_NAMES[name]] if name in _COMMON_NAMES else \
                difflib.get_close_matches(str(name), list(cls.model_fields), n=1, cutoff=0.6)
            if name not in cls.model_fields and close and close[0] in cls.model_fields:
                raise ValueError(f"unknown field {str(name)[:100]!r}: did you mean {close[0]!r}?")
        return data

    @field_validator("partition_spec", mode="before")
    @classmethod
    def _columns_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("partition_spec is a list of column names here (as partition_by); "
                             "transform objects such as {\"date\": \"day\"} are not supported")
        return value

    @model_validator(mode="after")
    def _one_name_each(self) -> ReferenceAliases:
        for name, alias in (("primary_key", "primary_key_cols"), ("partition_by", "partition_spec")):
            if {name, alias} <= self.model_fields_set:
                raise ValueError(f"give {name} or its alias {alias}, not both")
        return self

    def key_columns(self) -> list[str] | None:
        return self.primary_key_cols if "primary_key_cols" in self.model_fields_set else self.primary_key

    def partition_columns(self) -> list[str] | None:
        return self.partition_spec if "partition_spec" in self.model_fields_set else self.partition_by


class CreateTable(ReferenceAliases):
    model_config = ConfigDict(extra="forbid", strict=True)

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
    stats: dict[str, int | None]


class TableList(BaseModel):
    tenant_id: int
    tables: list[TableInfo]


@router.post("/v1/tables", status_code=201, response_model=TableInfo,
             responses={400: {}, 401: {}, 403: {}, 409: {}, 503: {}})
async def create_table(body: CreateTable, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    try:
        schema = TableSchema.build(
            [c.model_dump() for c in body.columns], body.key_columns() or [], body.partition_columns() or []
        )
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
    return {"tenant_id": principal.tenant_id, "tables": await _with_logical_rows(ctx, principal, found)}


@router.get("/v1/tables/{table}", response_model=TableInfo, responses={401: {}, 403: {}, 404: {}})
async def get_table(table: str, principal: Reader, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    async with ctx.pool.connection() as conn:
        found = await tables.get_table(conn, principal.tenant_id, table, with_stats=True)
    return (await _with_logical_rows(ctx, principal, [found]))[0]


async def _with_logical_rows(ctx: AppContext, principal: Principal, found: list[TableDef]) -> list[dict[str, Any]]:
    """Table infos whose stats say both what is stored (``rows``, ``physical_rows``: every version
    and delete marker of a keyed table) and what a query sees (``logical_rows``, counted through the
    query path for keyed tables, in one query)."""
    logical = await OverviewReader(ctx.pool, ctx.query).logical_rows(principal, found, trace_id_var.get())
    infos = []
    for table in found:
        info = table.to_info()
        info["stats"] = {**info["stats"], "physical_rows": table.stats.rows, "logical_rows": logical[table.table_name]}
        infos.append(info)
    return infos


class AlterTable(ReferenceAliases):
    """The primary key and partitioning never change; when a client sends them (e.g. the whole
    definition it read), they must equal the table's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    columns: list[ColumnSpec] = Field(min_length=1)
    compatibility_mode: CompatibilityMode | None = None


class DroppedTable(BaseModel):
    table_id: int
    table_name: str
    dropped: bool
    status: Literal["deleted"]
    snapshot_id: int


async def _check_fixed_fields(ctx: AppContext, principal: Principal, table: str, body: AlterTable) -> None:
    key, partitioning = body.key_columns(), body.partition_columns()
    if key is None and partitioning is None:
        return
    async with ctx.pool.connection() as conn:
        current = (await tables.get_table(conn, principal.tenant_id, table)).schema
    reasons = []
    if key is not None and tuple(key) != current.primary_key:
        reasons.append(f"the primary key cannot change ({list(current.primary_key)} -> {key})")
    if partitioning is not None and tuple(partitioning) != current.partition_by:
        reasons.append(f"the partitioning cannot change ({list(current.partition_by)} -> {partitioning})")
    if reasons:
        raise SchemaIncompatible("the change is not allowed", table=table, reasons=reasons)


@router.patch("/v1/tables/{table}", response_model=TableInfo,
              responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {}, 503: {}})
async def alter_table(table: str, body: AlterTable, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    await _check_fixed_fields(ctx, principal, table, body)
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


@router.delete("/v1/tables/{table}", response_model=DroppedTable, responses={401: {}, 403: {}, 404: {}, 503: {}})
async def drop_table(table: str, principal: Admin, request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    found, snapshot = await lifecycle.drop_table(
        ctx.pool, ctx.bus, principal.tenant_id, table, audit.created_by(principal),
        audit.entry(principal, "table.drop", "table", table, {"table_name": table}),
    )
    return {"table_id": found.table_id, "table_name": table, "dropped": True, "status": "deleted",
            "snapshot_id": snapshot.snapshot_id}
