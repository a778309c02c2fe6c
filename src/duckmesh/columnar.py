"""Canonical payloads (see ``schema.py``) to Arrow columns, with no per-value Python loop.

The canonical NDJSON goes to Arrow's JSON reader with an explicit schema; columns whose
canonical form differs from their storage type (timestamps as epoch micros, dates as epoch
days, decimals as text, binary as base64) are then cast as whole columns.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import date, datetime

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from duckmesh.schema import TableSchema, arrow_type, decode_special_float, timestamp_micros

_EPOCH = date(1970, 1, 1)

_READ_AS = {
    "timestamp": pa.int64(), "date": pa.int32(), "binary": pa.string(), "json": pa.string(),
    "float32": pa.float64(),
}


def _read_type(type_name: str) -> pa.DataType:
    if type_name.startswith("decimal"):
        return pa.string()
    return _READ_AS.get(type_name, arrow_type(type_name))


def _cast_column(column: pa.ChunkedArray, type_name: str) -> pa.ChunkedArray | pa.Array:
    if type_name == "binary":
        values = column.to_pylist()
        return pa.array([None if v is None else base64.b64decode(v) for v in values], pa.binary())
    return column.cast(arrow_type(type_name))


def canonical_table(payloads: Sequence[str], schema: TableSchema) -> pa.Table:
    """Arrow columns (user columns only) from canonical JSON payloads, one per row."""
    read_schema = pa.schema([pa.field(c.name, _read_type(c.type)) for c in schema.columns])
    ndjson = "\n".join(payloads).encode()
    try:
        raw = pa_json.read_json(
            io.BytesIO(ndjson),
            read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(ndjson) + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=read_schema, unexpected_field_behavior="error"),
        )
    except pa.ArrowInvalid:
        # Rare: special float strings ("NaN", "Infinity") the JSON reader cannot type.
        return _canonical_table_slow(payloads, schema)
    columns = [_cast_column(raw.column(c.name), c.type) for c in schema.columns]
    return pa.table(columns, names=[c.name for c in schema.columns])


def _canonical_table_slow(payloads: Sequence[str], schema: TableSchema) -> pa.Table:
    rows = [orjson.loads(p) for p in payloads]
    columns = []
    for column in schema.columns:
        values = [decode_special_float(r.get(column.name)) for r in rows]
        array = pa.array(values, _read_type(column.type))
        columns.append(_cast_column(pa.chunked_array([array]), column.type))
    return pa.table(columns, names=[c.name for c in schema.columns])




def canonical_rows(table: pa.Table, schema: TableSchema) -> list[str]:
    """The inverse of ``canonical_table`` for the rows of a table in storage types: one canonical
    JSON payload per row (dead letters keep their records this way). Per-value Python: only the
    rare path of records that could not be materialized uses it."""
    names = [c.name for c in schema.columns]
    columns = {c.name: table.column(c.name).to_pylist() for c in schema.columns if c.name in table.column_names}
    rows = []
    for index in range(table.num_rows):
        payload = {}
        for column in schema.columns:
            value = columns.get(column.name, [None] * table.num_rows)[index]
            if value is not None:
                payload[column.name] = _canonical_value(value, column.type)
        rows.append(orjson.dumps({n: payload[n] for n in names if n in payload}, option=orjson.OPT_SORT_KEYS).decode())
    return rows


def _canonical_value(value: object, type_name: str) -> object:
    if type_name == "timestamp" and isinstance(value, datetime):
        return timestamp_micros(value)
    if type_name == "date" and isinstance(value, date):
        return (value - _EPOCH).days
    if type_name.startswith("decimal"):
        return format(value, "f")
    if type_name == "binary" and isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
