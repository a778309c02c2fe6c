"""Turn claimed events into Arrow tables and Parquet bytes (pure CPU; run off the event loop)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckmesh.bus.base import ClaimedEvent
from duckmesh.columnar import canonical_table
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN
from duckmesh.schema import TableSchema


@dataclass(frozen=True)
class ParquetFile:
    data: bytes
    record_count: int
    content_hash: str
    min_token: int
    max_token: int
    min_event_time: datetime
    max_event_time: datetime


def build_table(events: Sequence[ClaimedEvent], schema: TableSchema) -> pa.Table:
    """Arrow table in the data-file schema: user columns plus the hidden token/op/time columns."""
    payload = canonical_table([e.payload_json for e in events], schema)
    hidden = [
        pa.array([e.token for e in events], pa.int64()),
        pa.array([e.op.value for e in events], pa.string()),
        pa.array([e.event_time for e in events], pa.timestamp("us", tz="UTC")),
    ]
    table = pa.table(
        [*payload.columns, *hidden],
        names=[*payload.column_names, TOKEN_COLUMN, OP_COLUMN, EVENT_TIME_COLUMN],
    )
    return table.cast(schema.arrow_schema())


def write_parquet(table: pa.Table) -> ParquetFile:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=128 * 1024)
    data = sink.getvalue()
    tokens = table.column(TOKEN_COLUMN)
    times = table.column(EVENT_TIME_COLUMN)
    token_range = pc.min_max(tokens).as_py()
    time_range = pc.min_max(times).as_py()
    return ParquetFile(
        data, table.num_rows, hashlib.sha256(data).hexdigest(),
        token_range["min"], token_range["max"], time_range["min"], time_range["max"],
    )
