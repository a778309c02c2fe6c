"""Column types, table schemas and payload validation (pure, no I/O).

A payload accepted by ingest is turned into its *canonical* form before it
enters the bus; the canonical form is what idempotency compares and what the
coordinator turns into Arrow columns:

=========  ============================  =====================================
type       accepted JSON                 canonical value
=========  ============================  =====================================
boolean    true / false                  bool
int32/64   integer in range              int
float32/64 number, "NaN", "Infinity"...  float, or the special string
decimal    string or number, exact       string (plain notation)
string     string                        str
binary     base64 string                 base64 string
date       "YYYY-MM-DD"                  int days since 1970-01-01
timestamp  RFC 3339 string (naive=UTC)   int microseconds since epoch (UTC);
           up to 9 fractional digits,    digits beyond the 6th are truncated
           or epoch seconds (|n| < 1e11)
           / milliseconds (otherwise)
json       any JSON value                compact JSON text (sorted keys)
=========  ============================  =====================================
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_FLOOR, Context, Decimal, InvalidOperation
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN, Op

NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # use fullmatch: "$" also matches before a final newline
_DECIMAL_PATTERN = re.compile(r"^decimal\((\d{1,2}),\s*(\d{1,2})\)\Z")
SIMPLE_TYPES = ("boolean", "int32", "int64", "float32", "float64", "string", "binary", "date", "timestamp", "json")
CompatibilityMode = Literal["backward", "forward", "full", "none"]
_EPOCH_DATE = date(1970, 1, 1)
_DATE_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
# Up to 9 fractional digits: Go's RFC3339Nano, Java's Instant and .NET's "o" format send 7-9.
# TIMESTAMP_PATTERN has no end anchor: Python needs \Z ("$" also matches before a final newline),
# Arrow's RE2 (the ingest fast path) needs "$" (it has no \Z).
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?"
_TIMESTAMP_SHAPE = re.compile(TIMESTAMP_PATTERN + r"\Z")
_SUB_MICROSECOND = re.compile(r"(\.\d{6})\d{1,3}")
_DECIMAL_CONTEXT = Context(prec=80)
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class SchemaError(ValueError):
    """A table definition is not valid (bad name, type, key...)."""


def normalize_type(raw: str) -> str:
    text = raw.strip().lower()
    if text in SIMPLE_TYPES:
        return text
    match = _DECIMAL_PATTERN.match(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if not 1 <= precision <= 38 or scale > precision:
            raise SchemaError(f"decimal precision must be 1..38 and scale <= precision, got {raw!r}")
        return f"decimal({precision},{scale})"
    raise SchemaError(f"unknown column type {raw!r}; allowed: {', '.join(SIMPLE_TYPES)}, decimal(p,s)")


def decimal_params(type_name: str) -> tuple[int, int]:
    match = _DECIMAL_PATTERN.match(type_name)
    if not match:
        raise SchemaError(f"not a decimal type: {type_name}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Column:
    """``field_id`` is stable for the column's life: a column dropped and later re-added under the
    same name gets a new id, so files written before the drop never lend it their values."""

    name: str
    type: str
    nullable: bool = True
    field_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "nullable": self.nullable, "field_id": self.field_id}


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @classmethod
    def build(
        cls,
        columns: Iterable[Mapping[str, Any]],
        primary_key: Sequence[str] = (),
        partition_by: Sequence[str] = (),
    ) -> TableSchema:
        """Validate a user-supplied definition; raises SchemaError naming every problem."""
        problems: list[str] = []
        built: list[Column] = []
        seen: set[str] = set()
        for spec in columns:
            name = str(spec.get("name", ""))
            if not NAME_PATTERN.fullmatch(name) or name.startswith("_dm_"):
                problems.append(f"column name {name!r} must match {NAME_PATTERN.pattern} and not start with _dm_")
                continue
            if name in seen:
                problems.append(f"column {name!r} is declared twice")
                continue
            seen.add(name)
            try:
                type_name = normalize_type(str(spec.get("type", "")))
            except SchemaError as exc:
                problems.append(f"column {name!r}: {exc}")
                continue
            nullable = bool(spec.get("nullable", True)) and name not in primary_key
            built.append(Column(name, type_name, nullable, len(built) + 1))
        if not built and not problems:
            problems.append("a table needs at least one column")
        problems += _key_problems(built, seen, primary_key, partition_by)
        if problems:
            raise SchemaError("; ".join(problems))
        return cls(tuple(built), tuple(primary_key), tuple(partition_by))

    def evolve(self, columns: Iterable[Mapping[str, Any]], last_field_id: int) -> TableSchema:
        """The next version from a whole new column list: a column that exists now keeps its field
        id, every other one gets a new id above ``last_field_id`` (the highest id the table ever
        used), so a re-added name never matches the old column's data."""
        # Partitioning is checked when a table is created; a later version only has to keep the
        # partition columns (tables from before the rules keep the partitioning they have).
        built = TableSchema.build(columns, self.primary_key)
        missing = [name for name in self.partition_by if name not in built.by_name]
        if missing:
            raise SchemaError("; ".join(f"partition column {name!r} cannot be dropped" for name in missing))
        next_id = max(last_field_id, *(c.field_id for c in self.columns))
        renumbered: list[Column] = []
        for column in built.columns:
            kept = self.by_name.get(column.name)
            if kept is None:
                next_id += 1
            renumbered.append(replace(column, field_id=kept.field_id if kept else next_id))
        return TableSchema(tuple(renumbered), built.primary_key, self.partition_by)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableSchema:
        return cls(
            tuple(Column(c["name"], c["type"], c["nullable"], c.get("field_id") or index)
                  for index, c in enumerate(data["columns"], start=1)),
            tuple(data.get("primary_key", ())),
            tuple(data.get("partition_by", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [c.to_json() for c in self.columns],
            "primary_key": list(self.primary_key),
            "partition_by": list(self.partition_by),
        }

    @property
    def keyed(self) -> bool:
        return bool(self.primary_key)

    def arrow_schema(self) -> pa.Schema:
        """Schema of data files: the user's columns, then the hidden bookkeeping columns. Only key
        columns are non-null in files: a delete marker carries just its key, whatever the table
        requires of an inserted row (validation enforces that at ingest)."""
        fields = [pa.field(c.name, arrow_type(c.type), nullable=c.name not in self.primary_key)
                  for c in self.columns]
        fields += [
            pa.field(TOKEN_COLUMN, pa.int64(), nullable=False),
            pa.field(OP_COLUMN, pa.string(), nullable=False),
            pa.field(EVENT_TIME_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False),
        ]
        return pa.schema(fields)


def _key_problems(
    columns: list[Column], names: set[str], primary_key: Sequence[str], partition_by: Sequence[str]
) -> list[str]:
    problems: list[str] = []
    types = {c.name: c.type for c in columns}
    for key in primary_key:
        if key not in names:
            problems.append(f"primary key column {key!r} is not a column")
        elif types.get(key) in ("json", "float32", "float64"):
            problems.append(f"primary key column {key!r} cannot be of a float or json type")
    if len(set(primary_key)) != len(primary_key):
        problems.append("primary key names a column twice")
    problems += _partition_problems(types, primary_key, partition_by)
    return problems


PARTITION_TYPES = ("boolean", "int32", "int64", "string", "date")
MAX_PARTITION_COLUMNS = 4


def _partition_problems(types: Mapping[str, str], primary_key: Sequence[str], partition_by: Sequence[str]) -> list[str]:
    """Files are written per distinct partition value and queries skip files by it: the columns must
    have exact, low-cardinality types (a timestamp or float would make a file per row)."""
    problems: list[str] = []
    if len(set(partition_by)) != len(partition_by):
        problems.append("partition_by names a column twice")
    if len(partition_by) > MAX_PARTITION_COLUMNS:
        problems.append(f"partition_by takes at most {MAX_PARTITION_COLUMNS} columns")
    for key in partition_by:
        kind = types.get(key)
        if kind is None:
            problems.append(f"partition column {key!r} is not a column")
        elif kind not in PARTITION_TYPES and not kind.startswith("decimal"):
            problems.append(f"partition column {key!r} is {kind}; partition by {', '.join(PARTITION_TYPES)}"
                            " or decimal columns (for time, partition by a date column)")
    return problems


def partitions_prunable(schema: TableSchema) -> bool:
    """Whether queries may skip files by partition value. In a keyed table only when every
    partition column is a key column: then all versions of a key share one partition, and
    skipping a partition can never uncover an older version of a key. (Tables created before the
    rules above may be partitioned by anything: their files are split, never skipped.)"""
    types = {c.name: c.type for c in schema.columns}
    if not schema.partition_by or _partition_problems(types, schema.primary_key, schema.partition_by):
        return False
    return not schema.primary_key or set(schema.partition_by) <= set(schema.primary_key)


def arrow_type(type_name: str) -> pa.DataType:
    simple: dict[str, pa.DataType] = {
        "boolean": pa.bool_(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "string": pa.string(),
        "binary": pa.binary(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "json": pa.string(),
    }
    if type_name in simple:
        return simple[type_name]
    precision, scale = decimal_params(type_name)
    return pa.decimal128(precision, scale)


def duckdb_type(type_name: str) -> str:
    """The SQL type a column has in query results."""
    names = {
        "boolean": "BOOLEAN", "int32": "INTEGER", "int64": "BIGINT", "float32": "FLOAT",
        "float64": "DOUBLE", "string": "VARCHAR", "binary": "BLOB", "date": "DATE",
        "timestamp": "TIMESTAMP WITH TIME ZONE", "json": "JSON",
    }
    if type_name in names:
        return names[type_name]
    precision, scale = decimal_params(type_name)
    return f"DECIMAL({precision},{scale})"


# ---------------------------------------------------------------------------
# value checks: each returns the canonical value or raises ValueError(reason)

Checker = Callable[[Any], Any]


def _check_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise ValueError("expected a boolean")


def _int_checker(type_name: str) -> Checker:
    low, high = _INT_RANGES[type_name]

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer ({type_name})")
        if not low <= value <= high:
            raise ValueError(f"integer out of range for {type_name}")
        return value

    return check


def _check_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in _SPECIAL_FLOATS:
        return value
    raise ValueError('expected a number (or "NaN", "Infinity", "-Infinity")')


def _decimal_checker(type_name: str) -> Checker:
    precision, scale = decimal_params(type_name)
    quantum = Decimal(1).scaleb(-scale)

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a decimal as string or number ({type_name})")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not a decimal number ({type_name})") from None
        if not number.is_finite():
            raise ValueError("decimal must be finite")
        try:
            quantized = number.quantize(quantum, context=_DECIMAL_CONTEXT)
        except InvalidOperation:  # needs more digits than any decimal column holds
            raise ValueError(f"too many digits for {type_name}") from None
        if quantized != number:
            raise ValueError(f"more than {scale} fractional digits ({type_name})")
        if len(quantized.as_tuple().digits) > precision:
            raise ValueError(f"too many digits for {type_name}")
        return format(quantized, "f")

    return check


def _check_string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _check_binary(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None
    return value


def _check_date(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected a date as YYYY-MM-DD")
    if not _DATE_SHAPE.match(value):
        raise ValueError("invalid date, expected YYYY-MM-DD")
    try:
        return (date.fromisoformat(value) - _EPOCH_DATE).days
    except ValueError:
        raise ValueError("invalid date, expected YYYY-MM-DD") from None


def parse_timestamp(value: Any) -> datetime:
    """RFC 3339 text to an aware UTC datetime (text without offset is taken as UTC).

    Timestamps are stored at microsecond precision: 7-9 fractional digits are accepted and
    truncated (never rounded, so a value never moves into the next second or day)."""
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    if not _TIMESTAMP_SHAPE.match(value):
        raise ValueError("invalid RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(_SUB_MICROSECOND.sub(r"\1", value, count=1))
    except ValueError:
        raise ValueError("invalid RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is in year 10000 in UTC
        raise ValueError("timestamp out of range: in UTC it must fall in the years 0001 to 9999") from None


def timestamp_micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# Numbers in a timestamp column are epoch time: seconds when their magnitude is below 10^11
# (until the year 5138), milliseconds from there on (from 1973 on). Years 1-9999 only.
EPOCH_MILLIS_FROM = 10**11
MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def epoch_micros(value: int | float) -> int:
    """Epoch seconds or milliseconds to microseconds; digits below a microsecond are dropped
    (floored, like RFC 3339 digits beyond the sixth)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("epoch time must be finite")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    scale = 1_000_000 if abs(number) < EPOCH_MILLIS_FROM else 1000
    micros = int((number * scale).to_integral_value(rounding=ROUND_FLOOR))
    if not MIN_MICROS <= micros <= MAX_MICROS:
        raise ValueError("epoch time outside the years 1-9999")
    return micros


def _check_timestamp(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return epoch_micros(value)
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string or epoch seconds / milliseconds")
    return timestamp_micros(parse_timestamp(value))


def _check_json(value: Any) -> Any:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise ValueError(f"JSON value cannot be stored: {exc}") from None


def checker_for(type_name: str) -> Checker:
    fixed: dict[str, Checker] = {
        "boolean": _check_bool, "float32": _check_float, "float64": _check_float,
        "string": _check_string, "binary": _check_binary, "date": _check_date,
        "timestamp": _check_timestamp, "json": _check_json,
    }
    if type_name in fixed:
        return fixed[type_name]
    if type_name in _INT_RANGES:
        return _int_checker(type_name)
    return _decimal_checker(type_name)


class PayloadValidator:
    """Validates payload dicts against one schema version; compiled once per schema."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self._checkers = [(c.name, c.nullable, checker_for(c.type)) for c in schema.columns]
        self._key_checkers = [(n, False, checker_for(schema.by_name[n].type)) for n in schema.primary_key]

    def canonical(self, payload: Any, op: Op) -> tuple[dict[str, Any], list[str]]:
        """Return (canonical payload, problems). Problems name the column and the reason."""
        if not isinstance(payload, dict):
            return {}, ["payload must be a JSON object"]
        problems = [f"unknown column {name!r}" for name in payload if name not in self.schema.by_name]
        checkers = self._key_checkers if op is Op.DELETE else self._checkers
        out: dict[str, Any] = {}
        for name, nullable, check in checkers:
            value = payload.get(name)
            if value is None:
                if not nullable:
                    problems.append(f"column {name!r} is required")
                continue
            try:
                out[name] = check(value)
            except ValueError as exc:
                problems.append(f"column {name!r}: {exc}")
        return out, problems


# ---------------------------------------------------------------------------
# whole Arrow columns (backfill from Parquet): the same rules as the JSON checks above

_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896  # 0001-01-01 and 9999-12-31
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799


def _within(values: pa.ChunkedArray, low: int, high: int, what: str) -> None:
    if values.null_count == len(values):
        return
    bounds = pc.min_max(values)
    if bounds["min"].as_py() < low or bounds["max"].as_py() > high:
        raise ValueError(f"{what} out of range (years 0001 to 9999)")


def _strict_json(values: pa.ChunkedArray) -> pa.ChunkedArray:
    out: list[str | None] = []
    bad: list[int] = []
    for index, text in enumerate(values.to_pylist()):
        if text is None:
            out.append(None)
            continue
        try:
            out.append(orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode())
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            bad.append(index)
    if bad:
        raise ValueError(f"not valid JSON text in rows {bad[:20]}")
    return pa.chunked_array([pa.array(out, pa.string())])


def strict_column(values: pa.ChunkedArray, type_name: str) -> pa.ChunkedArray:
    """A Parquet column converted to the column type, refused (ValueError) where a JSON payload
    would be: another kind of value (no "yes" to boolean, no text to number), numbers out of
    range, dates and timestamps outside the years 0001-9999, text that is not UTF-8 or not JSON."""
    source, target = values.type, arrow_type(type_name)
    kind = type_name.split("(")[0]
    accepted = {
        "boolean": pa.types.is_boolean(source),
        "int32": pa.types.is_integer(source), "int64": pa.types.is_integer(source),
        "float32": pa.types.is_floating(source) or pa.types.is_integer(source),
        "float64": pa.types.is_floating(source) or pa.types.is_integer(source),
        "decimal": pa.types.is_decimal(source) or pa.types.is_integer(source),
        "string": pa.types.is_string(source) or pa.types.is_large_string(source),
        "json": pa.types.is_string(source) or pa.types.is_large_string(source),
        "binary": pa.types.is_binary(source) or pa.types.is_large_binary(source),
        "date": pa.types.is_date(source),
        "timestamp": pa.types.is_timestamp(source),
    }
    if not accepted.get(kind, False):
        raise ValueError(f"a Parquet column of type {source} cannot fill a {type_name} column")
    try:
        if kind in ("string", "json"):
            values.validate(full=True)  # UTF-8
            return _strict_json(values) if kind == "json" else values.cast(target)
        if kind == "date":
            days = values.cast(pa.date32())
            _within(days.cast(pa.int32()), _FIRST_DAY, _LAST_DAY, "date")
            return days
        if kind == "timestamp":
            per_second = _UNIT_PER_SECOND[source.unit]
            _within(values.cast(pa.int64()), _FIRST_SECOND * per_second, (_LAST_SECOND + 1) * per_second - 1,
                    "timestamp")
            # digits beyond microseconds are truncated, as for JSON timestamps
            return values.cast(pa.timestamp(source.unit, tz="UTC")).cast(target, safe=False)
        if kind == "decimal" and pa.types.is_integer(source):
            values = values.cast(pa.decimal128(38, target.scale))
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"cannot convert to {type_name}: {str(exc)[:160]}") from None


def decode_special_float(value: Any) -> Any:
    return _SPECIAL_FLOATS.get(value, value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------
# schema evolution

_WIDENINGS = {("int32", "int64"), ("float32", "float64"), ("int32", "float64")}


def _is_decimal_widening(old: str, new: str) -> bool:
    if not (old.startswith("decimal") and new.startswith("decimal")):
        return False
    (p1, s1), (p2, s2) = decimal_params(old), decimal_params(new)
    return s2 >= s1 and p2 - s2 >= p1 - s1


def is_widening(old: str, new: str) -> bool:
    """Every value of ``old`` is exactly representable in ``new``."""
    return (old, new) in _WIDENINGS or _is_decimal_widening(old, new)


def compatibility_problems(old: TableSchema, new: TableSchema, mode: CompatibilityMode) -> list[str]:
    """Why ``new`` may not follow ``old`` under ``mode`` (empty list: allowed).

    backward: readers of the new schema read old data — add nullable columns, widen types.
    forward:  readers of the old schema read new data — add nullable columns, drop non-key columns.
    full:     both — add nullable columns only.
    none:     no compatibility promise — add, drop non-key, widen.
    In every mode the primary key is fixed, and a type change must be a widening: old files are
    always read as the current schema, so their values must convert exactly.
    """
    problems: list[str] = []
    if new.primary_key != old.primary_key:
        problems.append(f"the primary key cannot change ({list(old.primary_key)} -> {list(new.primary_key)})")
    for column in old.columns:
        replacement = new.by_name.get(column.name)
        if replacement is None:
            if column.name in old.primary_key:
                continue  # already reported as a key change
            if mode in ("backward", "full"):
                problems.append(f"dropping column {column.name!r} is not {mode} compatible")
            continue
        if replacement.type != column.type:
            if not is_widening(column.type, replacement.type):
                problems.append(f"column {column.name!r}: {column.type} -> {replacement.type} is not a widening")
            elif mode in ("forward", "full"):
                problems.append(
                    f"column {column.name!r}: widening {column.type} -> {replacement.type} is not {mode} compatible"
                )
        if column.nullable and not replacement.nullable and mode != "none":
            problems.append(f"column {column.name!r} cannot become required (old rows may hold nulls)")
    for column in new.columns:
        if column.name not in old.by_name and not column.nullable and mode != "none":
            problems.append(f"new column {column.name!r} must be nullable (old rows have no value)")
    return problems
