"""The one writer of data files: Parquet options, content hash, token and event-time statistics,
and the object-key layout (DATA_MODEL.md "Object layout").

Keys use ids, never user-supplied names: ``{tenant_id}/{table_id}/date=YYYY-MM-DD/part-...parquet``.
The part name says who wrote the file: ``part-{claim}-{seq}`` (coordinator), ``part-b{token}-…``
(backfill), ``part-c{run}-{seq}-…`` (compaction). Files are immutable once written.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckmesh.domain import EVENT_TIME_COLUMN, TOKEN_COLUMN, TableId

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "row_group_size": 128 * 1024}
# The same options for DuckDB's COPY ... TO (compaction writes through DuckDB).
DUCKDB_PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072"


@dataclass(frozen=True)
class NewDataFile:
    """A written, not yet published data file, as the catalog records it."""

    table_id: TableId
    path: str
    record_count: int
    file_size_bytes: int
    content_hash: str
    min_token: int
    max_token: int
    min_event_time: datetime
    max_event_time: datetime
    schema_version: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParquetFile:
    data: bytes
    record_count: int
    content_hash: str
    min_token: int
    max_token: int
    min_event_time: datetime
    max_event_time: datetime

    def new_file(
        self, table_id: TableId, schema_version: int, path: str, partition: Mapping[str, Any] | None = None
    ) -> NewDataFile:
        return NewDataFile(
            table_id=table_id, path=path, record_count=self.record_count, file_size_bytes=len(self.data),
            content_hash=self.content_hash, min_token=self.min_token, max_token=self.max_token,
            min_event_time=self.min_event_time, max_event_time=self.max_event_time, schema_version=schema_version,
            stats={"partition": dict(partition)} if partition else {},
        )


def split_by(table: pa.Table, columns: Sequence[str]) -> list[tuple[tuple[Any, ...], pa.Table]]:
    """The rows grouped by the values of ``columns``: one table per distinct combination, rows in
    their original order, groups ordered by their first row. Columnar (one group-by, one take per
    group)."""
    if not columns or table.num_rows == 0:
        return [((), table)]
    rows = pa.array(range(table.num_rows), pa.int64())
    grouped = (table.select(list(columns)).append_column("__row", rows)
               .group_by(list(columns), use_threads=False).aggregate([("__row", "list")]))
    values = [grouped.column(name).to_pylist() for name in columns]
    return [(tuple(v[i] for v in values), table.take(grouped.column("__row_list")[i].values))
            for i in range(grouped.num_rows)]


def partition_value(value: Any) -> Any:
    """A partition value as the catalog stores it (JSON): dates as YYYY-MM-DD, decimals as text."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def write_parquet(table: pa.Table) -> ParquetFile:
    """Serialize a table in the data-file schema (user columns plus hidden token/op/time)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return _described(sink.getvalue(), table)


def describe(data: bytes) -> ParquetFile:
    """The statistics of a data file written elsewhere (compaction's DuckDB output)."""
    table = pq.read_table(io.BytesIO(data), columns=[TOKEN_COLUMN, EVENT_TIME_COLUMN])
    return _described(data, table)


def _described(data: bytes, table: pa.Table) -> ParquetFile:
    tokens = pc.min_max(table.column(TOKEN_COLUMN)).as_py()
    times = pc.min_max(table.column(EVENT_TIME_COLUMN)).as_py()
    return ParquetFile(
        data, table.num_rows, hashlib.sha256(data).hexdigest(),
        tokens["min"], tokens["max"], times["min"], times["max"],
    )


def partition_of(path: str) -> str:
    """The ``date=YYYY-MM-DD`` folder of a key ("" when it has none)."""
    return next((part for part in path.split("/") if part.startswith("date=")), "")


def _folder(tenant_id: int, table_id: int, partition: str) -> str:
    return f"{tenant_id}/{table_id}/{partition or 'date=unknown'}"


def ingest_key(tenant_id: int, table_id: int, day: date, claim_id: int, seq: int) -> str:
    return f"{_folder(tenant_id, table_id, f'date={day.isoformat()}')}/part-{claim_id}-{seq:04d}.parquet"


def backfill_key(tenant_id: int, table_id: int, day: date, first_token: int) -> str:
    name = f"part-b{first_token}-{uuid.uuid4().hex[:8]}.parquet"
    return f"{_folder(tenant_id, table_id, f'date={day.isoformat()}')}/{name}"


def compaction_key(tenant_id: int, table_id: int, partition: str, run_id: int, seq: int) -> str:
    return f"{_folder(tenant_id, table_id, partition)}/part-c{run_id}-{seq:04d}-{uuid.uuid4().hex[:8]}.parquet"
