"""Validating an ingest body into columnar records, at C speed on the hot path.

Fast path: msgspec decodes the body straight into structs generated per table schema version
(types, integer ranges, unknown fields, strict JSON), pyarrow builds and checks the typed columns
(decimals, timestamps, required columns) — no per-value Python. When anything does not fit, the
slow path validates record by record with ``schema.PayloadValidator`` and reports every bad record
(the same report as always). Both paths produce the same Arrow table for the same records, and the
per-record digest (what idempotency compares) is computed from that table, so a retry is
recognised whichever path its first attempt took.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.columnar import canonical_table
from duckmesh.domain import EVENT_TIME_COLUMN, KEY_COLUMN, OP_COLUMN, Op
from duckmesh.errors import InvalidJson, OpNotSupported, PayloadTooLarge, RecordsRequired, ValidationFailed
from duckmesh.schema import (
    EPOCH_MILLIS_FROM,
    MAX_MICROS,
    MIN_MICROS,
    TIMESTAMP_PATTERN,
    Column,
    PayloadValidator,
    TableSchema,
    arrow_type,
    parse_timestamp,
)

MAX_KEY_LENGTH = 512
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_TIMESTAMP = pa.timestamp("us", tz="UTC")
# RFC 3339 forms pyarrow does not parse: more than 6 fractional digits (truncated), no offset (UTC),
# lower-case separators.
_NAIVE_END = r"([Tt ]\d\d:\d\d:\d\d(\.\d+)?)$"
_IRREGULAR_TIMESTAMP = r"\.\d{7,}|[tz]|" + _NAIVE_END
_OPS = pa.array([op.value for op in Op])


class BodyForm(StrEnum):
    OBJECT = "object"  # {"records": [{idempotency_key, op, payload, event_time}], ...}
    ARRAY = "array"  # [payload, ...]
    NDJSON = "ndjson"  # one payload per line


@dataclass(frozen=True)
class Records:
    """A request's records: user columns at their storage types plus op, event time and key."""

    table: pa.Table
    keys: list[str | None]
    digests: list[bytes]
    wait_for_visibility: bool | None = None
    visibility_timeout_ms: int | None = None

    @property
    def count(self) -> int:
        return int(self.table.num_rows)


def _field_type(column: Column) -> Any:
    kind = column.type
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        return Annotated[int, msgspec.Meta(ge=low, le=high)]
    simple: dict[str, Any] = {"boolean": bool, "float32": float, "float64": float, "string": str,
                              "binary": bytes, "date": datetime.date, "timestamp": str | int}
    return simple.get(kind, str)  # decimals: text, converted by Arrow (numbers: the slow path)


class _Decoders:
    """msgspec decoders for one schema version (payload fields renamed, so any column name works)."""

    def __init__(self, schema: TableSchema) -> None:
        fields: list[Any] = []
        rename = {}
        for index, column in enumerate(schema.columns):
            attr = f"c{index}"
            rename[attr] = column.name
            if column.type == "json":
                fields.append((attr, msgspec.Raw, msgspec.Raw(b"null")))
            else:
                fields.append((attr, _field_type(column) | None, None))
        payload = msgspec.defstruct("Payload", fields, forbid_unknown_fields=True, rename=rename)
        key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
        record = msgspec.defstruct("Record", [
            ("idempotency_key", key | None, None), ("op", str, "insert"), ("payload", payload),
            ("event_time", str | None, None),
        ], forbid_unknown_fields=True, kw_only=True)
        generic_list: Any = list  # the element types are made at run time
        request = msgspec.defstruct("Request", [
            ("records", generic_list[record]), ("wait_for_visibility", bool, False),
            ("visibility_timeout_ms", Annotated[int, msgspec.Meta(ge=0, le=600_000)], 3000),
        ], forbid_unknown_fields=True)
        self.request: msgspec.json.Decoder[Any] = msgspec.json.Decoder(request)
        self.payloads: msgspec.json.Decoder[Any] = msgspec.json.Decoder(generic_list[payload])
        self.payload: msgspec.json.Decoder[Any] = msgspec.json.Decoder(payload)
        self.getters = [attrgetter(f"c{index}") for index in range(len(schema.columns))]


class _Unfit(Exception):
    """The fast path cannot take this body; the slow path validates it and reports why."""


class RecordValidator:
    """Validates bodies for one table schema version; built once per version and reused."""

    def __init__(self, schema: TableSchema, *, max_records: int, max_payload_bytes: int) -> None:
        self.schema = schema
        self.max_records = max_records
        self.max_payload_bytes = max_payload_bytes
        self._decoders = _Decoders(schema)
        self._slow = PayloadValidator(schema)
        self._user_schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in schema.columns])

    def parse(self, body: bytes, form: BodyForm, *, default_op: Op, keys_required: bool) -> Records:
        """Raise InvalidJson, RecordsRequired, PayloadTooLarge, OpNotSupported or ValidationFailed
        (every bad record listed) — or return the records."""
        try:
            return self._fast(body, form, default_op, keys_required)
        except (_Unfit, msgspec.ValidationError, pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return self._slow_path(body, form, default_op, keys_required)
        except msgspec.DecodeError as exc:
            raise InvalidJson("the body is not valid JSON", reason=str(exc)) from None

    # --- fast path -----------------------------------------------------------------------------

    def _fast(self, body: bytes, form: BodyForm, default_op: Op, keys_required: bool) -> Records:
        wait: bool | None = None
        timeout: int | None = None
        if form is BodyForm.OBJECT:
            request = self._decoders.request.decode(body)
            wait, timeout = request.wait_for_visibility, request.visibility_timeout_ms
            entries = request.records
            self._check_count(len(entries))
            payloads = list(map(attrgetter("payload"), entries))
            keys: list[str | None] = list(map(attrgetter("idempotency_key"), entries))
            ops = pa.array(list(map(attrgetter("op"), entries)), pa.string())
            given_times: list[str | None] = list(map(attrgetter("event_time"), entries))
        else:
            payloads = (self._decoders.payloads.decode(body) if form is BodyForm.ARRAY
                        else self._decoders.payload.decode_lines(body))
            self._check_count(len(payloads))
            keys = [None] * len(payloads)
            ops = pa.array([default_op.value] * len(payloads), pa.string())
            given_times = [None] * len(payloads)
        if keys_required and any(k is None for k in keys):
            raise _Unfit
        key_array = pa.array(keys, pa.string())
        if pc.any(pc.match_substring(key_array, "\x00")).as_py():
            raise _Unfit
        self._check_ops(ops)
        columns = [self._column(c, [get(p) for p in payloads], ops)
                   for c, get in zip(self.schema.columns, self._decoders.getters, strict=True)]
        explicit = _instants(given_times)
        table = self._assemble(columns, ops, explicit, key_array)
        self._check_sizes(table)
        return Records(table, keys, _digests(table, explicit, any(k is not None for k in keys)), wait, timeout)

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise RecordsRequired("the request has no records")
        if count > self.max_records:
            raise PayloadTooLarge("too many records in one request", records=count, max_records=self.max_records)

    def _check_ops(self, ops: pa.Array) -> None:
        if not pc.all(pc.is_in(ops, _OPS)).as_py():
            raise _Unfit
        if not self.schema.keyed and not pc.all(pc.equal(ops, Op.INSERT.value)).as_py():
            indexes = [i for i, op in enumerate(ops.to_pylist()) if op != Op.INSERT.value]
            raise OpNotSupported("upsert and delete need a table with a primary key", indexes=indexes)

    def _column(self, column: Column, values: list[Any], ops: pa.Array) -> pa.Array:
        target = arrow_type(column.type)
        if column.type == "json":
            array = pa.array([_canonical_json(v) for v in values], pa.string())
        elif column.type == "timestamp":
            array = _instants(values)
        elif column.type.startswith("decimal"):
            array = pc.cast(pa.array(values, pa.string()), target)
        else:
            array = pa.array(values, target)
        deletes = pc.equal(ops, Op.DELETE.value)
        is_key = column.name in self.schema.primary_key
        if not is_key and pc.any(deletes).as_py():
            array = pc.if_else(deletes, pa.nulls(len(array), target), array)  # a delete carries only its key
        if array.null_count and (is_key or not column.nullable):
            required = pc.is_null(array) if is_key else pc.and_(pc.is_null(array), pc.invert(deletes))
            if pc.any(required).as_py():
                raise _Unfit
        return array

    def _assemble(self, columns: list[pa.Array], ops: pa.Array, explicit: pa.Array, keys: pa.Array) -> pa.Table:
        now = datetime.datetime.now(datetime.UTC)
        times = pc.fill_null(explicit, pa.scalar(now, _TIMESTAMP))
        return pa.table([*columns, ops, times, keys], schema=_segment_schema(self._user_schema))

    def _check_sizes(self, table: pa.Table) -> None:
        """A record's size (variable-length values plus 8 bytes per other value) within the limit."""
        sizes = pa.array([0] * table.num_rows, pa.int64())
        for column in self.schema.columns:
            values = table.column(column.name)
            if column.type in ("string", "binary", "json"):
                sizes = pc.add(sizes, pc.fill_null(pc.binary_length(values), 0).cast(pa.int64()))
            else:
                sizes = pc.add(sizes, 8)
        if table.num_rows and pc.max(sizes).as_py() > self.max_payload_bytes:
            raise _Unfit

    # --- slow path: record by record, every problem reported -----------------------------------

    def _slow_path(self, body: bytes, form: BodyForm, default_op: Op, keys_required: bool) -> Records:
        from duckmesh.ingest.models import envelope  # the pydantic shape report, only on this path

        try:  # strict JSON: NaN, Infinity and 1e400 are refused
            if form is BodyForm.NDJSON:
                parsed: Any = [msgspec.json.decode(line) for line in body.splitlines() if line.strip()]
            else:
                parsed = msgspec.json.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidJson("the body is not valid JSON", reason=str(exc)) from None
        wait, timeout, entries = envelope(parsed, form, default_op.value, keys_required)
        self._check_count(len(entries))
        rows: list[str] = []
        ops: list[str] = []
        times: list[datetime.datetime | None] = []
        problems: list[dict[str, Any]] = []
        unsupported: list[int] = []
        for index, entry in enumerate(entries):
            outcome = self._slow_record(entry, unsupported, index)
            if isinstance(outcome, list):
                problems.append({"index": index, "idempotency_key": entry.get("idempotency_key"), "errors": outcome})
                continue
            rows.append(outcome[0])
            ops.append(outcome[1])
            times.append(outcome[2])
        if unsupported:
            raise OpNotSupported("upsert and delete need a table with a primary key", indexes=unsupported)
        if problems:
            raise ValidationFailed(
                f"{len(problems)} of {len(entries)} records are invalid; nothing was stored", errors=problems
            )
        keys = [e.get("idempotency_key") for e in entries]
        user = canonical_table(rows, self.schema)
        explicit = pa.array(times, _TIMESTAMP)
        table = self._assemble(list(user.columns), pa.array(ops, pa.string()), explicit, pa.array(keys, pa.string()))
        return Records(table, keys, _digests(table, explicit, any(k is not None for k in keys)), wait, timeout)

    def _slow_record(
        self, entry: dict[str, Any], unsupported: list[int], index: int
    ) -> tuple[str, str, datetime.datetime | None] | list[str]:
        errors: list[str] = []
        key = entry.get("idempotency_key")
        if isinstance(key, str) and "\x00" in key:
            errors.append("idempotency_key must not contain NUL characters")
        try:
            op = Op(entry.get("op", Op.INSERT.value))
        except ValueError:
            return [f"unknown op {entry.get('op')!r}; use insert, upsert or delete"]
        if op is not Op.INSERT and not self.schema.keyed:
            unsupported.append(index)
            return []
        canonical, found = self._slow.canonical(entry.get("payload"), op)
        errors += found
        event_time = None
        if entry.get("event_time") is not None:
            try:
                event_time = parse_timestamp(entry["event_time"])
            except ValueError as exc:
                errors.append(f"event_time: {exc}")
        payload_json = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS).decode()
        if len(payload_json) > self.max_payload_bytes:
            errors.append(f"payload is larger than {self.max_payload_bytes} bytes")
        return errors if errors else (payload_json, op.value, event_time)


def _segment_schema(user: pa.Schema) -> pa.Schema:
    return pa.schema([*user, pa.field(OP_COLUMN, pa.string()), pa.field(EVENT_TIME_COLUMN, _TIMESTAMP),
                      pa.field(KEY_COLUMN, pa.string())])


def _timestamps(values: pa.Array) -> pa.Array:
    """RFC 3339 text to UTC microseconds: 7-9 fractional digits truncated, no offset = UTC."""
    if values.null_count == len(values):
        return pa.nulls(len(values), _TIMESTAMP)
    if not pc.all(pc.match_substring_regex(values, TIMESTAMP_PATTERN + "$")).as_py():
        raise _Unfit  # not RFC 3339 (the slow path says which record)
    if pc.any(pc.match_substring_regex(values, _IRREGULAR_TIMESTAMP)).as_py():
        values = pc.replace_substring_regex(values, r"(\.\d{6})\d+", r"\1")
        values = pc.utf8_upper(values)
        values = pc.replace_substring_regex(values, _NAIVE_END, r"\1Z")
    return pc.cast(values, _TIMESTAMP)


def _instants(values: list[Any]) -> pa.Array:
    """A timestamp column: all RFC 3339 text, or all epoch seconds / milliseconds as integers
    (anything else — a mix, fractions — is for the slow path)."""
    try:
        micros = _timestamps(pa.array(values, pa.string())).cast(pa.int64())
    except pa.ArrowTypeError:
        try:
            numbers = pa.array(values, pa.int64())
        except (pa.ArrowTypeError, pa.ArrowInvalid, OverflowError):
            raise _Unfit from None
        seconds = pc.less(pc.abs_checked(numbers), EPOCH_MILLIS_FROM)
        micros = pc.add_checked(pc.multiply_checked(pc.if_else(seconds, numbers, 0), 1_000_000),
                                pc.multiply_checked(pc.if_else(seconds, 0, numbers), 1000))
    if micros.null_count < len(micros) and (
        pc.min(micros).as_py() < MIN_MICROS or pc.max(micros).as_py() > MAX_MICROS
    ):
        raise _Unfit  # outside the years 1-9999 in UTC: the slow path says which record
    return micros.cast(_TIMESTAMP)


def _canonical_json(raw: msgspec.Raw) -> str | None:
    text = bytes(raw)
    if text == b"null":
        return None
    # msgspec keeps integers beyond 64 bits exact, so orjson refuses them rather than rounding.
    return orjson.dumps(msgspec.json.decode(text), option=orjson.OPT_SORT_KEYS).decode()


def _canonical_text(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One unambiguous text per value for the digest (instants as microseconds, days as numbers)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_timestamp(kind):
        values = values.cast(pa.int64())
    elif pa.types.is_date32(kind):
        values = values.cast(pa.int32())
    if pa.types.is_binary(kind):
        return values
    return values.cast(pa.string()).cast(pa.binary())


def _digests(table: pa.Table, explicit_times: pa.Array, needed: bool) -> list[bytes]:
    """Per record: 8 bytes of BLAKE2b over its op, its values and its explicit event time, each
    value length-prefixed (no two different records join to the same bytes)."""
    if not needed:
        return [b""] * table.num_rows
    parts = [_canonical_text(table.column(OP_COLUMN))]
    parts += [_canonical_text(column) for column in table.columns[: table.num_columns - 3]]
    parts.append(_canonical_text(explicit_times))
    lengths = [pc.binary_length(p).cast(pa.string()).cast(pa.binary()) for p in parts]
    joined = pc.binary_join_element_wise(*lengths, *parts, b"\x1f", null_handling="replace",
                                         null_replacement=b"")
    return [hashlib.blake2b(value, digest_size=8).digest() for value in joined.to_pylist()]
