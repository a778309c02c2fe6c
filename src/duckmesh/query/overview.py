"""The tenant's tables as tools see them (the console's completion, the query assistant, the
CLI): typed columns, primary key, row count and a few sample rows.

Row counts and sample rows are ordinary queries through ``QueryService.execute`` — the same
sandbox, engine, limits and audit as ``POST /v1/query`` — so this never reads data any other
way and never sees another tenant's tables.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlglot import exp

from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import SnapshotId
from duckmesh.errors import DuckMeshError
from duckmesh.query.models import QueryRequest
from duckmesh.query.service import QueryOutcome, QueryService
from duckmesh.schema import Column

log = logging.getLogger(__name__)
MAX_SAMPLE_ROWS = 20
# Sample values are hints, not data exports: long text is shortened.
MAX_SAMPLE_TEXT = 256


class _CountCache:
    """(catalog, table id, snapshot id) -> rows a query sees, the most recent ``limit`` entries."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: OrderedDict[tuple[str, int, int], int] = OrderedDict()

    def get(self, catalog: str, table_id: int, snapshot_id: int | None) -> int | None:
        if snapshot_id is None or (catalog, table_id, snapshot_id) not in self._entries:
            return None
        self._entries.move_to_end((catalog, table_id, snapshot_id))
        return self._entries[(catalog, table_id, snapshot_id)]

    def put(self, key: tuple[str, int, int], rows: int) -> None:
        self._entries[key] = rows
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)


_LOGICAL_ROWS = _CountCache(10_000)


@dataclass(frozen=True)
class TableOverview:
    table_name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    row_count: int | None = None  # None: the count query failed (logged)
    sample_rows: list[list[Any]] = field(default_factory=list)  # aligned with ``columns``

    def to_json(self) -> dict[str, Any]:
        return {
            "table_name": self.table_name,
            "columns": [c.to_json() for c in self.columns],
            "primary_key": list(self.primary_key),
            "row_count": self.row_count,
            "sample_rows": self.sample_rows,
        }


@dataclass(frozen=True)
class SchemaOverview:
    tables: tuple[TableOverview, ...]
    snapshot_id: SnapshotId | None
    snapshot_time: datetime | None
    max_visibility_token: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tables": [t.to_json() for t in self.tables],
            "snapshot_id": self.snapshot_id,
            "snapshot_time": self.snapshot_time.isoformat() if self.snapshot_time else None,
            "max_visibility_token": self.max_visibility_token,
        }


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_SAMPLE_TEXT:
        return value[:MAX_SAMPLE_TEXT] + "…"
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


def _quoted(name: str) -> str:
    """A table name as a quoted identifier (a valid name may still be a keyword, e.g. ``order``)."""
    return str(exp.to_identifier(name, quoted=True).sql(dialect="duckdb"))


class OverviewReader:
    def __init__(self, pool: CatalogPool, query: QueryService) -> None:
        self._pool = pool
        self._query = query

    async def read(self, principal: Principal, sample_rows: int, trace_id: str | None) -> SchemaOverview:
        """Every live table of the caller's tenant; counts come from one query over the latest
        snapshot, whose id, time and watermark the overview reports."""
        sample_rows = max(0, min(sample_rows, MAX_SAMPLE_ROWS))
        async with self._pool.connection() as conn:
            defs = await tables.list_tables(conn, principal.tenant_id)
        counts, outcome = await self._counts(principal, defs, trace_id)
        if outcome is not None:
            snapshot_id, created_at, watermark = (outcome.snapshot.snapshot_id, outcome.snapshot.created_at,
                                                  outcome.snapshot.watermark)
        else:
            async with self._pool.connection() as conn:
                head, created_at = await snapshots.head_with_time(conn, principal.tenant_id)
            snapshot_id, watermark = head.snapshot_id, head.max_visibility_token
        found = []
        for table in defs:
            samples = await self._samples(principal, table, sample_rows, trace_id) if sample_rows else []
            found.append(TableOverview(
                table.table_name, table.schema.columns, table.schema.primary_key,
                counts.get(table.table_name) if outcome is not None else None, samples,
            ))
        return SchemaOverview(tuple(found), snapshot_id, created_at, watermark)

    async def logical_rows(
        self, principal: Principal, defs: list[TableDef], trace_id: str | None
    ) -> dict[str, int | None]:
        """Rows a query sees per table (a keyed table's live keys after the merge; an append-only
        table's stored rows, no query needed); None where the count query failed. A snapshot never
        changes, so a keyed table's count at the head snapshot is counted once per process."""
        keyed = [t for t in defs if t.schema.keyed]
        async with self._pool.connection() as conn:
            head = await snapshots.head(conn, principal.tenant_id)
        counts = {t.table_name: n for t in keyed
                  if (n := _LOGICAL_ROWS.get(self._pool.dsn, t.table_id, head.snapshot_id)) is not None}
        missing = [t for t in keyed if t.table_name not in counts]
        fresh, outcome = await self._counts(principal, missing, trace_id)
        if outcome is not None and outcome.snapshot.snapshot_id is not None:
            at = outcome.snapshot.snapshot_id
            for table in missing:
                _LOGICAL_ROWS.put((self._pool.dsn, table.table_id, at), fresh[table.table_name])
        counts.update(fresh)
        return {t.table_name: counts.get(t.table_name) if t.schema.keyed else t.stats.rows for t in defs}

    async def _run(self, principal: Principal, sql: str, row_limit: int, trace_id: str | None) -> QueryOutcome:
        return await self._query.execute(principal, QueryRequest(sql=sql, row_limit=row_limit), trace_id)

    async def counts(
        self, principal: Principal, defs: list[TableDef], trace_id: str | None, snapshot_id: int | None = None
    ) -> dict[str, int] | None:
        """Rows a query sees per table, in the head or in ``snapshot_id``; None if the query failed."""
        counts, outcome = await self._counts(principal, defs, trace_id, snapshot_id)
        return counts if outcome is not None or not defs else None

    async def _counts(
        self, principal: Principal, defs: list[TableDef], trace_id: str | None, snapshot_id: int | None = None
    ) -> tuple[dict[str, int], QueryOutcome | None]:
        """Row counts of every table in one query, hence from one snapshot."""
        if not defs:
            return {}, None
        sql = " UNION ALL ".join(
            f"SELECT {i} AS i, count(*) AS n FROM {_quoted(t.table_name)}" for i, t in enumerate(defs)
        )
        try:
            outcome = await self._query.execute(
                principal, QueryRequest(sql=sql, row_limit=len(defs), snapshot_id=snapshot_id), trace_id)
        except DuckMeshError as exc:
            log.warning("overview_count_failed", extra={"tenant_id": principal.tenant_id, "error_code": exc.error_code})
            return {}, None
        return {defs[int(i)].table_name: int(n) for i, n in outcome.result.rows()}, outcome

    async def _samples(
        self, principal: Principal, table: TableDef, limit: int, trace_id: str | None
    ) -> list[list[Any]]:
        sql = f"SELECT * FROM {_quoted(table.table_name)} LIMIT {limit}"
        try:
            outcome = await self._run(principal, sql, limit, trace_id)
        except DuckMeshError as exc:
            log.warning("overview_sample_failed", extra={
                "tenant_id": principal.tenant_id, "table": table.table_name, "error_code": exc.error_code})
            return []
        result = outcome.result
        names = [c["name"] for c in result.columns]
        rows = result.rows()
        # Align with the table's columns by name (a column added after the data was written reads null).
        return [
            [_shorten(dict(zip(names, row, strict=True)).get(c.name)) for c in table.schema.columns] for row in rows
        ]
