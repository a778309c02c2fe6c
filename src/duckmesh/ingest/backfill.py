"""Backfill: bulk-load rows (NDJSON or Parquet) as ONE ``backfill`` snapshot with its own token range.

Steps: validate the whole file like ingest (every bad row reported, up to a cap) → reserve a
gap-free token range (counted as unresolved by the watermark until published; an abandoned
reservation expires and is failed, so a crash never holds the watermark back) → write Parquet
→ publish in one transaction that also commits the reservation. A caller-supplied backfill id
makes retries safe: the same id with the same content returns the original result, with other
content it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckmesh.bus.base import IngestBus
from duckmesh.bus.operations import commit_reservation, reserve_tokens
from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import NewDataFile, PublishPlan
from duckmesh.catalog.tables import TableDef
from duckmesh.columnar import canonical_table
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN, Op, SnapshotKind, TenantId
from duckmesh.errors import IdempotencyKeyReused, RecordsRequired, ValidationFailed
from duckmesh.schema import PayloadValidator, TableSchema, arrow_type
from duckmesh.storage.base import ObjectStore

MAX_REPORTED_ERRORS = 100
RESERVATION_TTL_SECONDS = 600.0


@dataclass(frozen=True)
class BackfillResult:
    backfill_id: str
    status: str
    record_count: int
    min_visibility_token: int
    max_visibility_token: int
    snapshot_id: int | None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _ndjson_table(path: Path, schema: TableSchema) -> pa.Table:
    """Validate NDJSON rows (one payload object per line) with the ingest validator, then build
    the storage columns through Arrow's JSON reader over the canonical rows."""
    validator = PayloadValidator(schema)
    op = Op.UPSERT if schema.keyed else Op.INSERT
    canonical: list[str] = []
    problems: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.append({"index": index, "errors": ["line is not valid JSON"]})
                continue
            out, errors = validator.canonical(payload, op)
            if errors:
                problems.append({"index": index, "errors": errors})
            elif not problems:
                canonical.append(orjson.dumps(out).decode())
            if len(problems) >= MAX_REPORTED_ERRORS:
                break
    if problems:
        raise ValidationFailed(
            f"{len(problems)} invalid row(s) (at most {MAX_REPORTED_ERRORS} reported); nothing stored", errors=problems
        )
    return canonical_table(canonical, schema)


def _parquet_table(path: Path, schema: TableSchema) -> pa.Table:
    """Check a Parquet file's columns against the schema and cast them whole (no row loop)."""
    try:
        source = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationFailed("the body is not a readable Parquet file", reason=str(exc)[:200]) from None
    problems = [f"unknown column {name!r}" for name in source.column_names if name not in schema.by_name]
    columns = []
    for column in schema.columns:
        if column.name not in source.column_names:
            if not column.nullable:
                problems.append(f"column {column.name!r} is required")
            columns.append(pa.nulls(source.num_rows, arrow_type(column.type)))
            continue
        try:
            values = _cast(source.column(column.name), arrow_type(column.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(f"column {column.name!r}: cannot convert to {column.type}: {str(exc)[:120]}")
            continue
        if not column.nullable and values.null_count:
            problems.append(f"column {column.name!r} is required but has {values.null_count} null(s)")
        columns.append(values)
    if problems:
        raise ValidationFailed("the Parquet file does not match the table schema; nothing stored", errors=problems)
    return pa.table(columns, names=[c.name for c in schema.columns])


def _cast(values: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Cast a whole column, checked: an integer column may fill a decimal whose values fit."""
    if pa.types.is_decimal(target) and pa.types.is_integer(values.type):
        values = values.cast(pa.decimal128(38, target.scale))
    return values.cast(target)


class BackfillService:
    def __init__(self, pool: CatalogPool, bus: IngestBus, store: ObjectStore) -> None:
        self._pool = pool
        self._bus = bus
        self._store = store

    async def load(
        self, tenant_id: TenantId, table_name: str, backfill_id: str, body: Path, fmt: str, created_by: str
    ) -> BackfillResult:
        digest = await asyncio.to_thread(_file_hash, body)
        async with self._pool.connection() as conn:
            table = await tables.get_table(conn, tenant_id, table_name)
        reader = _parquet_table if fmt == "parquet" else _ndjson_table
        rows = await asyncio.to_thread(reader, body, table.schema)
        if rows.num_rows == 0:
            raise RecordsRequired("the backfill has no rows")
        reservation, created = await reserve_tokens(
            self._pool, tenant_id, table.table_id, backfill_id, digest, rows.num_rows, RESERVATION_TTL_SECONDS
        )
        if not created:
            return self._existing(reservation, digest)
        data_file = await asyncio.to_thread(self._write, tenant_id, table, rows, reservation.min_token)
        async with self._pool.transaction() as tx:
            head = await snapshots.lock_head(tx, tenant_id)
            snapshot_id = await snapshots.reserve_snapshot_id(tx)
            await commit_reservation(tx, reservation, snapshot_id)
            marks = await self._bus.resolved_watermarks(tx, tenant_id)
            plan = PublishPlan(tenant_id, SnapshotKind.BACKFILL, created_by, add=[data_file])
            await snapshots.publish(tx, head, snapshot_id, plan, marks.tenant, marks.tables)
        return BackfillResult(backfill_id, "visible", rows.num_rows, reservation.min_token, reservation.max_token,
                              snapshot_id)

    def _existing(self, reservation: Any, digest: bytes) -> BackfillResult:
        if reservation.payload_hash != digest:
            raise IdempotencyKeyReused("backfill id reused with different content", backfill_id=reservation.backfill_id)
        status = {"committed": "duplicate", "pending": "in_progress", "failed": "failed"}[reservation.state]
        return BackfillResult(reservation.backfill_id, status, reservation.record_count, reservation.min_token,
                              reservation.max_token, reservation.snapshot_id)

    def _write(self, tenant_id: TenantId, table: TableDef, rows: pa.Table, first_token: int) -> NewDataFile:
        now = datetime.now(UTC)
        count = rows.num_rows
        full = rows.append_column(TOKEN_COLUMN, pa.array(range(first_token, first_token + count), pa.int64()))
        op = Op.UPSERT.value if table.schema.keyed else Op.INSERT.value
        full = full.append_column(OP_COLUMN, pa.array([op] * count, pa.string()))
        full = full.append_column(EVENT_TIME_COLUMN, pa.array([now] * count, pa.timestamp("us", tz="UTC")))
        full = full.cast(table.schema.arrow_schema())
        sink = io.BytesIO()
        pq.write_table(full, sink, compression="zstd", row_group_size=128 * 1024)
        data = sink.getvalue()
        name = f"part-b{first_token}-{uuid.uuid4().hex[:8]}.parquet"
        key = f"{tenant_id}/{table.table_id}/date={now.date().isoformat()}/{name}"
        self._store.put(key, data)
        tokens = pc.min_max(full.column(TOKEN_COLUMN)).as_py()
        return NewDataFile(
            table_id=table.table_id, path=key, record_count=count, file_size_bytes=len(data),
            content_hash=hashlib.sha256(data).hexdigest(), min_token=tokens["min"], max_token=tokens["max"],
            min_event_time=now, max_event_time=now, schema_version=table.schema_version,
        )


def _file_hash(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()
