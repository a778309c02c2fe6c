"""Backfill: bulk-load rows (NDJSON or Parquet) as ONE ``backfill`` snapshot with its own token range.

Steps: validate the whole file like ingest (every bad row reported, up to a cap) → reserve a
gap-free token range in an accepting transaction (counted as unresolved by the watermark until
published; an abandoned reservation expires and is failed, so a crash never holds the watermark
back) → write Parquet under a write intent → commit with the reservation still pending and the
table still live (both checked by the database clock; reservation and intent are kept alive
while the file is written). A caller-supplied backfill id makes retries safe: the same id with
the same content returns the original result, with other content it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckmesh.catalog import intents, tables, tokens
from duckmesh.catalog.commit import CommitPlan, TablesLive, commit
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tokens import Reservation, ReservationPending
from duckmesh.columnar import canonical_table
from duckmesh.datafiles import NewDataFile, backfill_key, partition_value, split_by, write_parquet
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN, Op, SnapshotKind, TenantId
from duckmesh.errors import IdempotencyKeyReused, PayloadTooLarge, RecordsRequired, ValidationFailed
from duckmesh.heartbeat import while_extending
from duckmesh.schema import PayloadValidator, TableSchema, arrow_type, strict_column
from duckmesh.storage.base import ObjectStore

MAX_REPORTED_ERRORS = 100


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


@dataclass(frozen=True)
class BackfillLimits:
    """What one backfill may decode to: the body is streamed and counted as it is read, so a small
    compressed file cannot make the server hold gigabytes (a decompression bomb)."""

    max_rows: int = 10_000_000
    max_decoded_bytes: int = 1024**3
    max_line_bytes: int = 1024 * 1024  # one NDJSON payload, as ingest's payload limit


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the backfill {what}; split it into several backfills", limit=limit)


def _ndjson_lines(path: Path, limits: BackfillLimits) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        index = 0
        while True:
            line = handle.readline(limits.max_line_bytes + 1)
            if not line:
                return
            if len(line) > limits.max_line_bytes:
                raise _too_large(f"has a line longer than {limits.max_line_bytes} bytes", limits.max_line_bytes)
            yield index, line
            index += 1


def _ndjson_table(path: Path, schema: TableSchema, limits: BackfillLimits) -> pa.Table:
    """Validate NDJSON rows (one payload object per line) with the ingest validator, then build
    the storage columns through Arrow's JSON reader over the canonical rows."""
    validator = PayloadValidator(schema)
    op = Op.UPSERT if schema.keyed else Op.INSERT
    canonical: list[str] = []
    problems: list[dict[str, Any]] = []
    decoded = 0
    for index, line in _ndjson_lines(path, limits):
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
            text = orjson.dumps(out).decode()
            decoded += len(text) + 64
            canonical.append(text)
            if len(canonical) > limits.max_rows:
                raise _too_large(f"has more than {limits.max_rows} rows", limits.max_rows)
            if decoded > limits.max_decoded_bytes:
                raise _too_large(f"decodes to more than {limits.max_decoded_bytes} bytes", limits.max_decoded_bytes)
        if len(problems) >= MAX_REPORTED_ERRORS:
            break
    if problems:
        raise ValidationFailed(
            f"{len(problems)} invalid row(s) (at most {MAX_REPORTED_ERRORS} reported); nothing stored", errors=problems
        )
    return canonical_table(canonical, schema)


def _parquet_source(path: Path, schema: TableSchema, limits: BackfillLimits) -> pa.Table:
    """The file's columns, read batch by batch within the limits: the footer's sizes are checked
    first, then what is really decoded (a footer can lie)."""
    try:
        # Text and binary columns stay dictionary-encoded while they are counted: a dictionary value
        # repeated a million times costs its size once until it is known to fit.
        texts = [f.name for f in pq.read_schema(path) if _is_text(f.type)]
        parquet = pq.ParquetFile(path, read_dictionary=texts)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationFailed("the body is not a readable Parquet file", reason=str(exc)[:200]) from None
    meta = parquet.metadata
    if meta.num_rows > limits.max_rows:
        raise _too_large(f"has more than {limits.max_rows} rows", limits.max_rows)
    declared = sum(meta.row_group(g).column(c).total_uncompressed_size
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    if declared > limits.max_decoded_bytes:
        raise _too_large(f"decodes to more than {limits.max_decoded_bytes} bytes", limits.max_decoded_bytes)
    wanted = [name for name in parquet.schema_arrow.names if name in schema.by_name]
    unknown = [f"unknown column {name!r}" for name in parquet.schema_arrow.names if name not in schema.by_name]
    if unknown:
        raise ValidationFailed("the Parquet file does not match the table schema; nothing stored", errors=unknown)
    batches, decoded, rows = [], 0, 0
    try:
        for batch in parquet.iter_batches(batch_size=65_536, columns=wanted):
            decoded += _decoded_bytes(batch)
            rows += batch.num_rows
            if decoded > limits.max_decoded_bytes or rows > limits.max_rows:
                raise _too_large(f"decodes to more than {limits.max_decoded_bytes} bytes or {limits.max_rows} rows",
                                 limits.max_decoded_bytes)
            batches.append(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationFailed("the body is not a readable Parquet file", reason=str(exc)[:200]) from None
    source_schema = pa.schema([parquet.schema_arrow.field(name) for name in wanted])
    table = pa.Table.from_batches(batches, schema=source_schema)
    return pa.table([_plain(table.column(i)) for i in range(table.num_columns)], names=table.column_names)


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind))


def _decoded_bytes(batch: pa.RecordBatch) -> int:
    """What the batch takes once its dictionary columns are decoded."""
    total = 0
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            lengths = pc.binary_length(column.dictionary)
            total += (pc.sum(pc.take(lengths, column.indices)).as_py() or 0) + 8 * len(column)
        else:
            total += column.nbytes
    return total


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_dictionary(column.type):
        return column
    return pa.chunked_array([chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type)


def _parquet_table(path: Path, schema: TableSchema, limits: BackfillLimits) -> pa.Table:
    """Check a Parquet file's columns against the schema and its values as strictly as ingest
    checks JSON (types, ranges, JSON text); cast whole columns (no row loop except for json)."""
    source = _parquet_source(path, schema, limits)
    problems: list[str] = []
    columns = []
    for column in schema.columns:
        if column.name not in source.column_names:
            if not column.nullable:
                problems.append(f"column {column.name!r} is required")
            columns.append(pa.nulls(source.num_rows, arrow_type(column.type)))
            continue
        try:
            values = strict_column(source.column(column.name), column.type)
        except ValueError as exc:
            problems.append(f"column {column.name!r}: {exc}")
            continue
        if not column.nullable and values.null_count:
            problems.append(f"column {column.name!r} is required but has {values.null_count} null(s)")
        columns.append(values)
    if problems:
        raise ValidationFailed("the Parquet file does not match the table schema; nothing stored", errors=problems)
    return pa.table(columns, names=[c.name for c in schema.columns])


class BackfillService:
    def __init__(
        self, pool: CatalogPool, store: ObjectStore, *, lease_seconds: float = 60.0,
        limits: BackfillLimits | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self.lease_seconds = lease_seconds
        self.limits = limits or BackfillLimits()

    async def load(
        self, tenant_id: TenantId, table_name: str, backfill_id: str, body: Path, fmt: str, created_by: str
    ) -> BackfillResult:
        digest = await asyncio.to_thread(_file_hash, body)
        async with self._pool.connection() as conn:
            table = await tables.get_table(conn, tenant_id, table_name)
        reader = _parquet_table if fmt == "parquet" else _ndjson_table
        rows = await asyncio.to_thread(reader, body, table.schema, self.limits)
        if rows.num_rows == 0:
            raise RecordsRequired("the backfill has no rows")
        reservation, created = await tokens.reserve_tokens(
            self._pool, tenant_id, table.table_id, backfill_id, digest, rows.num_rows, self.lease_seconds
        )
        if not created:
            return self._existing(reservation, digest)
        full = await asyncio.to_thread(_with_hidden_columns, table, rows, reservation.min_token)
        # One file per partition value (ADR 0009); all of them in the one backfill snapshot.
        columns = list(table.schema.partition_by)
        parts = await asyncio.to_thread(split_by, full, columns)
        today = datetime.now(UTC).date()
        keys = [backfill_key(tenant_id, table.table_id, today, pc.min(part.column(TOKEN_COLUMN)).as_py())
                for _, part in parts]
        owner = f"backfill:{reservation.reservation_id}"
        await intents.record(self._pool, tenant_id, owner, keys, self.lease_seconds)

        async def write() -> list[NewDataFile]:
            written = []
            for key, (values, part) in zip(keys, parts, strict=True):
                parquet = await asyncio.to_thread(write_parquet, part)
                await asyncio.to_thread(self._store.put, key, parquet.data)
                partition = {name: partition_value(v) for name, v in zip(columns, values, strict=True)}
                written.append(parquet.new_file(table.table_id, table.schema_version, key, partition))
            return written

        async def extend() -> None:
            await tokens.extend_reservation(self._pool, reservation, self.lease_seconds)
            await intents.extend(self._pool, owner, self.lease_seconds, len(keys))

        data_files = await while_extending(write(), extend, self.lease_seconds / 3)
        plan = CommitPlan(tenant_id, SnapshotKind.BACKFILL, created_by, add=data_files,
                          requires=[ReservationPending(reservation), TablesLive([table.table_id])])
        snapshot = await commit(self._pool, plan)
        return BackfillResult(backfill_id, "visible", rows.num_rows, reservation.min_token, reservation.max_token,
                              snapshot.snapshot_id)

    def _existing(self, reservation: Reservation, digest: bytes) -> BackfillResult:
        if reservation.payload_hash != digest:
            raise IdempotencyKeyReused("backfill id reused with different content", backfill_id=reservation.backfill_id)
        status = {"committed": "duplicate", "pending": "in_progress", "failed": "failed"}[reservation.state]
        return BackfillResult(reservation.backfill_id, status, reservation.record_count, reservation.min_token,
                              reservation.max_token, reservation.snapshot_id)


def _with_hidden_columns(table: TableDef, rows: pa.Table, first_token: int) -> pa.Table:
    """The data-file schema: the rows plus tokens from the reservation, the table's op and the
    load time as event time."""
    now = datetime.now(UTC)
    count = rows.num_rows
    full = rows.append_column(TOKEN_COLUMN, pa.array(range(first_token, first_token + count), pa.int64()))
    op = Op.UPSERT.value if table.schema.keyed else Op.INSERT.value
    full = full.append_column(OP_COLUMN, pa.array([op] * count, pa.string()))
    full = full.append_column(EVENT_TIME_COLUMN, pa.array([now] * count, pa.timestamp("us", tz="UTC")))
    return full.cast(table.schema.arrow_schema())


def _file_hash(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()
