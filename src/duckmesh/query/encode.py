"""Lossless JSON encoding of result columns (documented in README "Query results").

- integers outside +-(2^53 - 1): strings; decimals: strings (exact digits)
- NaN / Infinity / -Infinity: those strings
- dates: "YYYY-MM-DD"; timestamps: RFC 3339 (UTC ones end in "Z"); times: "HH:MM:SS[.ffffff]"
- blobs: base64 strings; intervals: ISO 8601 durations
- lists, structs and maps: JSON arrays / objects with the same rules inside
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

_SAFE_INT = 2**53 - 1


def encode_value(value: Any) -> Any:  # noqa: C901 - one flat dispatch over value kinds
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_SAFE_INT <= value <= _SAFE_INT else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], tuple) and len(value[0]) == 2:  # map as key/value pairs
            return {str(encode_value(k)): encode_value(v) for k, v in value}
        return [encode_value(v) for v in value]
    return str(value)


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"P{value.days}DT{seconds - value.days * 86400:g}S"


def _plain(column: pa.ChunkedArray) -> list[Any]:
    return list(column.to_pylist())


def _as_integer(column: pa.ChunkedArray) -> list[Any]:
    return [None if v is None else encode_value(int(v)) for v in column.to_pylist()]


def _column_encoder(arrow_type: pa.DataType, sql_type: str) -> Callable[[pa.ChunkedArray], list[Any]]:
    """Fast path per column: types whose Python values are already JSON-safe skip the walk."""
    if sql_type in ("HUGEINT", "UHUGEINT"):
        # 128-bit integers arrive as decimal(38,0); they are integers, encoded like BIGINT (DuckDB
        # picks BIGINT or HUGEINT for sum() from file statistics, so this keeps results stable).
        return _as_integer
    if pa.types.is_boolean(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return _plain
    if pa.types.is_integer(arrow_type) and arrow_type.bit_width <= 32:
        return _plain
    return lambda column: [encode_value(v) for v in column.to_pylist()]


def encode_rows(table: pa.Table, sql_types: list[str] | None = None) -> list[list[Any]]:
    types = sql_types or [""] * table.num_columns
    columns = [_column_encoder(field.type, types[i])(table.column(i)) for i, field in enumerate(table.schema)]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []
