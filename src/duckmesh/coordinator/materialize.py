"""Turn claimed events into Arrow tables and Parquet bytes (pure CPU; run off the event loop).

The fast path hands the canonical NDJSON payloads to Arrow's JSON reader with an explicit
schema, so no Python loop touches individual values; columns whose canonical form differs
from their storage type (timestamps as epoch micros, dates as epoch days, decimals as text,
binary as base64) are then cast as whole columns.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from duckmesh.bus.base import ClaimedEvent
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN
from duckmesh.schema import TableSchema, arrow_type, decode_special_float

_READ_AS = {
    "timestamp": pa.int64(), "date": pa.int32(), "binary": pa.string(), "json": pa.string(),
    "float32": pa.float64(),
}


@dataclass(frozen=True)
class ParquetFile:
    data: bytes
    record_count: int
    content_hash: str
    min_token: int
    max_token: int
    min_event_time: datetime
    max_event_time: datetime


def _read_type(type_name: str) -> pa.DataType:
    if type_name.startswith("decimal"):
        return pa.string()
    return _READ_AS.get(type_name, arrow_type(type_name))


def _cast_column(column: pa.ChunkedArray, type_name: str) -> pa.ChunkedArray | pa.Array:
    if type_name == "binary":
        values = column.to_pylist()
        return pa.array([None if v is None else base64.b64decode(v) for v in values], pa.binary())
    return column.cast(arrow_type(type_name))


def _payload_table(events: Sequence[ClaimedEvent], schema: TableSchema) -> pa.Table:
    read_schema = pa.schema([pa.field(c.name, _read_type(c.type)) for c in schema.columns])
    ndjson = "\n".join(e.payload_json for e in events).encode()
    try:
        raw = pa_json.read_json(
            io.BytesIO(ndjson),
            read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(ndjson) + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=read_schema, unexpected_field_behavior="error"),
        )
    except pa.ArrowInvalid:
        # Rare: special float strings ("NaN", "Infinity") the JSON reader cannot type.
        return _payload_table_slow(events, schema)
    columns = [_cast_column(raw.column(c.name), c.type) for c in schema.columns]
    return pa.table(columns, names=[c.name for c in schema.columns])


def _payload_table_slow(events: Sequence[ClaimedEvent], schema: TableSchema) -> pa.Table:
    rows = [orjson.loads(e.payload_json) for e in events]
    columns = []
    for column in schema.columns:
        values = [decode_special_float(r.get(column.name)) for r in rows]
        array = pa.array(values, _read_type(column.type))
        columns.append(_cast_column(pa.chunked_array([array]), column.type))
    return pa.table(columns, names=[c.name for c in schema.columns])


def build_table(events: Sequence[ClaimedEvent], schema: TableSchema) -> pa.Table:
    """Arrow table in the data-file schema: user columns plus the hidden token/op/time columns."""
    payload = _payload_table(events, schema)
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
