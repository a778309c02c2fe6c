"""Lossless JSON encoding of result columns (documented in docs/reference.md "Query results").

- integers outside +-(2^53 - 1): strings; decimals: strings (exact digits); HUGEINT and UHUGEINT:
  integers by the same rule (UHUGEINT values above 2^127 too: Arrow carries them as 128-bit
  two's complement, which is undone here)
- NaN / Infinity / -Infinity: those strings
- dates: "YYYY-MM-DD"; timestamps: RFC 3339 (UTC ones end in "Z"), microseconds (nanoseconds for
  TIMESTAMP_NS) when not zero; times: "HH:MM:SS[.ffffff]". Values DuckDB allows beyond what RFC 3339
  can say are written as DuckDB itself prints them: "infinity" / "-infinity", years past 9999 with
  more digits ("20000-01-01"), years before 1 with " (BC)" ("0044-03-15 (BC)")
- blobs and bit strings: base64 strings; intervals: ISO 8601 durations "P<months>M<days>DT<seconds>S"
- lists, structs, maps and unions: JSON arrays / objects with the same rules inside

Encoding works on Arrow arrays by type, never through Python ``date`` / ``datetime`` objects, so
no value DuckDB can return makes it fail.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

_SAFE_INT = 2**53 - 1
_DATE_INFINITY = 2**31 - 1
_TIMESTAMP_INFINITY = 2**63 - 1
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def encode_value(value: Any) -> Any:  # noqa: C901 - one flat dispatch over value kinds
    """One Python value (as Arrow's ``to_pylist`` gives it) to its JSON form."""
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
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return f"P{value.days}DT{_seconds(value.seconds * 10**6 + value.microseconds, 6)}S"
    if isinstance(value, pa.MonthDayNano):
        return format_interval(value.months, value.days, value.nanoseconds)
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], tuple) and len(value[0]) == 2:  # map as key/value pairs
            return {str(encode_value(k)): encode_value(v) for k, v in value}
        return [encode_value(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------------------------
# dates, times, timestamps and intervals from their integer representation


def _civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day number since 1970-01-01, for any year
    (H. Hinnant's ``civil_from_days``)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _date_text(days: int) -> tuple[str, str]:
    """The date part and, for years before 1, the " (BC)" suffix DuckDB prints."""
    year, month, day = _civil(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d}", " (BC)"
    return f"{year:04d}-{month:02d}-{day:02d}", ""


def format_date(days: int) -> str:
    if days >= _DATE_INFINITY:
        return "infinity"
    if days <= -_DATE_INFINITY:
        return "-infinity"
    text, era = _date_text(days)
    return text + era


def _seconds(fraction: int, digits: int) -> str:
    """Whole seconds plus a fraction with ``digits`` digits, trailing zeros trimmed to 6 or 9."""
    whole, part = divmod(fraction, 10**digits)
    if not part:
        return str(whole)
    text = f"{part:0{digits}d}"
    if digits > 6 and text.endswith("000"):
        text = text[:6]
    return f"{whole}.{text}"


def _clock(value: int, unit: str) -> str:
    """HH:MM:SS[.ffffff] of an offset into a day in ``unit``."""
    per_second = _PER_SECOND[unit]
    seconds, fraction = divmod(value, per_second)
    hours, rest = divmod(seconds, 3600)
    minutes, second = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{second:02d}"
    if fraction:
        digits = 9 if unit == "ns" else 6
        scaled = fraction * 10**digits // per_second
        text += "." + (f"{scaled:0{digits}d}" if digits == 6 or scaled % 1000 else f"{scaled // 1000:06d}")
    return text


def format_timestamp(value: int, unit: str, utc: bool) -> str:
    if value >= _TIMESTAMP_INFINITY:
        return "infinity"
    if value <= -_TIMESTAMP_INFINITY:
        return "-infinity"
    days, within = divmod(value, 86_400 * _PER_SECOND[unit])
    date_text, era = _date_text(days)
    return f"{date_text}T{_clock(within, unit)}{'Z' if utc else ''}{era}"


def format_time(value: int, unit: str) -> str:
    return _clock(value, unit)


def format_interval(months: int, days: int, nanoseconds: int) -> str:
    sign = "-" if nanoseconds < 0 else ""
    return f"P{months}M{days}DT{sign}{_seconds(abs(nanoseconds), 9)}S"


# ---------------------------------------------------------------------------------------------
# arrays

Encoder = Callable[[pa.Array], list[Any]]


def _plain(array: pa.Array) -> list[Any]:
    return list(array.to_pylist())


def _integers(array: pa.Array) -> list[Any]:
    return [v if v is None or -_SAFE_INT <= v <= _SAFE_INT else str(v) for v in array.to_pylist()]


def _floats(array: pa.Array) -> list[Any]:
    return [encode_value(v) for v in array.to_pylist()]


def _decimals(array: pa.Array) -> list[Any]:
    return [None if v is None else format(v, "f") for v in array.to_pylist()]


def _huge(unsigned: bool) -> Encoder:
    def encode(array: pa.Array) -> list[Any]:
        out: list[Any] = []
        for v in array.to_pylist():
            if v is None:
                out.append(None)
                continue
            number = int(v)
            if unsigned and number < 0:
                number += 2**128  # a UHUGEINT above 2^127 arrives as a negative 128-bit integer
            out.append(number if -_SAFE_INT <= number <= _SAFE_INT else str(number))
        return out

    return encode


def _dates(array: pa.Array) -> list[Any]:
    if pa.types.is_date64(array.type):
        millis = array.view(pa.int64()).to_pylist()
        return [None if v is None else format_date(v // 86_400_000) for v in millis]
    return [None if v is None else format_date(v) for v in array.view(pa.int32()).to_pylist()]


def _timestamps(array: pa.Array) -> list[Any]:
    unit, utc = array.type.unit, array.type.tz is not None
    return [None if v is None else format_timestamp(v, unit, utc) for v in array.view(pa.int64()).to_pylist()]


def _times(array: pa.Array) -> list[Any]:
    unit = array.type.unit
    width = pa.int64() if pa.types.is_time64(array.type) else pa.int32()
    return [None if v is None else format_time(v, unit) for v in array.view(width).to_pylist()]


def _durations(array: pa.Array) -> list[Any]:
    unit = array.type.unit
    per_second = _PER_SECOND[unit]
    return [None if v is None else format_interval(0, 0, v * (10**9 // per_second))
            for v in array.view(pa.int64()).to_pylist()]


def _intervals(array: pa.Array) -> list[Any]:
    return [None if v is None else format_interval(v.months, v.days, v.nanoseconds) for v in array.to_pylist()]


def _binaries(array: pa.Array) -> list[Any]:
    return [None if v is None else base64.b64encode(v).decode() for v in array.to_pylist()]


def _lists(array: pa.Array) -> list[Any]:
    valid = array.is_valid().to_pylist()
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        values = encode_array(array.values.slice(array.offset * size, len(array) * size))
        return [values[i * size:(i + 1) * size] if ok else None for i, ok in enumerate(valid)]
    offsets = array.offsets.to_pylist()
    first = offsets[0]
    values = encode_array(array.values.slice(first, offsets[-1] - first))
    return [values[offsets[i] - first:offsets[i + 1] - first] if ok else None for i, ok in enumerate(valid)]


def _maps(array: pa.Array) -> list[Any]:
    valid = array.is_valid().to_pylist()
    offsets = array.offsets.to_pylist()
    first = offsets[0]
    keys = encode_array(array.keys.slice(first, offsets[-1] - first))
    items = encode_array(array.items.slice(first, offsets[-1] - first))
    return [
        {str(keys[j]): items[j] for j in range(offsets[i] - first, offsets[i + 1] - first)} if ok else None
        for i, ok in enumerate(valid)
    ]


def _structs(array: pa.Array) -> list[Any]:
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    children = [encode_array(child) for child in array.flatten()]
    valid = array.is_valid().to_pylist()
    return [{name: child[i] for name, child in zip(names, children, strict=True)} if ok else None
            for i, ok in enumerate(valid)]


def _unions(array: pa.Array) -> list[Any]:
    codes = array.type_codes.to_pylist()
    position = {code: index for index, code in enumerate(array.type.type_codes)}
    children = [encode_array(array.field(i)) for i in range(array.type.num_fields)]
    if array.type.mode == "dense":
        offsets = array.offsets.to_pylist()
        return [children[position[code]][offsets[i]] for i, code in enumerate(codes)]
    return [children[position[code]][i] for i, code in enumerate(codes)]


def _decoded(array: pa.Array) -> list[Any]:
    return encode_array(array.dictionary_decode())


def _extension(array: pa.Array) -> list[Any]:
    return encode_array(array.storage)


_BY_PREDICATE: tuple[tuple[Callable[[pa.DataType], bool], Encoder], ...] = (
    (lambda t: pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t), _plain),
    (lambda t: pa.types.is_integer(t) and t.bit_width <= 32, _plain),
    (pa.types.is_integer, _integers),
    (pa.types.is_floating, _floats),
    (pa.types.is_decimal, _decimals),
    (lambda t: pa.types.is_date32(t) or pa.types.is_date64(t), _dates),
    (pa.types.is_timestamp, _timestamps),
    (lambda t: pa.types.is_time32(t) or pa.types.is_time64(t), _times),
    (pa.types.is_duration, _durations),
    (lambda t: t == pa.month_day_nano_interval(), _intervals),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t),
     _binaries),
    (pa.types.is_map, _maps),
    (lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t), _lists),
    (pa.types.is_struct, _structs),
    (pa.types.is_union, _unions),
    (pa.types.is_dictionary, _decoded),
    (lambda t: isinstance(t, pa.ExtensionType), _extension),
    (pa.types.is_null, lambda array: [None] * len(array)),
)


def _encoder_for(arrow_type: pa.DataType) -> Encoder:
    for matches, encoder in _BY_PREDICATE:
        if matches(arrow_type):
            return encoder
    return lambda array: [encode_value(v) for v in array.to_pylist()]


def encode_array(array: pa.Array | pa.ChunkedArray, sql_type: str = "") -> list[Any]:
    """The JSON values of one column. ``sql_type`` is DuckDB's type name of the column (128-bit
    integers arrive as decimal(38, 0) and are integers)."""
    if isinstance(array, pa.ChunkedArray):
        return [value for chunk in array.chunks for value in encode_array(chunk, sql_type)]
    if sql_type in ("HUGEINT", "UHUGEINT"):
        return _huge(sql_type == "UHUGEINT")(array)
    return _encoder_for(array.type)(array)


def encode_rows(table: pa.Table | pa.RecordBatch, sql_types: list[str] | None = None) -> list[list[Any]]:
    types = sql_types or [""] * table.num_columns
    columns = [encode_array(table.column(i), types[i]) for i in range(table.num_columns)]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def text_column(array: pa.Array | pa.ChunkedArray, sql_type: str = "") -> pa.Array:
    """A column as text for CSV: values the CSV writer cannot print exactly (blobs, temporal values
    beyond RFC 3339, intervals, 128-bit integers, nested values) written as in JSON; nested values
    as JSON text."""

    def text(value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)

    return pa.array([text(v) for v in encode_array(array, sql_type)], pa.string())


def needs_text_for_csv(arrow_type: pa.DataType, sql_type: str) -> bool:
    simple = (pa.types.is_boolean(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
              or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))
    return sql_type in ("HUGEINT", "UHUGEINT") or not (simple or pa.types.is_decimal(arrow_type))

