"""The ingest validator's two paths agree: the msgspec/Arrow fast path and the record-by-record
slow path build the same records and the same idempotency digests for the same body, so a retry
is recognised whichever path each attempt took; and anything the slow path refuses is refused."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from duckmesh.domain import EVENT_TIME_COLUMN, Op
from duckmesh.errors import OpNotSupported, RecordsRequired, ValidationFailed
from duckmesh.ingest.validate import BodyForm, Records, RecordValidator, _Unfit
from duckmesh.schema import TableSchema

COLUMNS = [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "small", "type": "int32"},
    {"name": "flag", "type": "boolean"},
    {"name": "ratio", "type": "float64"},
    {"name": "price", "type": "decimal(12,2)"},
    {"name": "label", "type": "string"},
    {"name": "blob", "type": "binary"},
    {"name": "day", "type": "date"},
    {"name": "at", "type": "timestamp"},
    {"name": "extra", "type": "json"},
]
SCHEMA = TableSchema.build(COLUMNS, primary_key=["id"])


def validator() -> RecordValidator:
    return RecordValidator(SCHEMA, max_records=1000, max_payload_bytes=1 << 20)


def both(body: bytes, form: BodyForm = BodyForm.OBJECT) -> tuple[Records, Records]:
    checker = validator()
    fast = checker._fast(body, form, Op.INSERT, False)  # raises if the fast path could not take it
    slow = checker._slow_path(body, form, Op.INSERT, False)
    return fast, slow


def comparable(records: Records) -> dict[str, Any]:
    """The records without the accept-time default (two calls stamp two different instants)."""
    return records.table.drop_columns([EVENT_TIME_COLUMN]).to_pydict()


_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_INSTANT = st.datetimes(min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1))
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=6)


@st.composite
def payloads(draw: st.DrawFn, index: int) -> dict[str, Any]:
    optional: dict[str, Any] = {
        "small": st.integers(-(2**31), 2**31 - 1),
        "flag": st.booleans(),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "price": st.decimals(min_value=-(10**9), max_value=10**9, places=2).map(str),
        "label": _TEXT,
        "blob": st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
        "day": st.dates(min_value=datetime.date(1, 1, 1)).map(lambda d: d.isoformat()),
        "at": st.tuples(_INSTANT, st.sampled_from(["Z", "+00:00", "", "+05:30"]))
        .map(lambda p: p[0].isoformat() + p[1])
        | st.integers(-62_135_596_800, 10**11 - 1)  # epoch seconds
        | st.integers(10**11, 253_402_300_799_999),  # epoch milliseconds
        "extra": _JSON,
    }
    payload: dict[str, Any] = {"id": index}
    for name, strategy in optional.items():
        if draw(st.booleans()):
            payload[name] = draw(st.none() | strategy)
    return payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(*(payloads(i) for i in range(n)))), st.booleans())
def test_both_paths_build_the_same_records_and_digests(rows: tuple[dict[str, Any], ...], keyed: bool) -> None:
    records = [{"payload": p, **({"idempotency_key": f"k{i}"} if keyed else {})} for i, p in enumerate(rows)]
    body = orjson.dumps({"records": records})
    checker = validator()
    slow = checker._slow_path(body, BodyForm.OBJECT, Op.INSERT, False)  # every generated record is valid
    try:
        fast = checker._fast(body, BodyForm.OBJECT, Op.INSERT, False)
    except (ValueError, ArithmeticError, _Unfit):  # the fast path may decline (the slow path took it above)
        event("fast path declined")
        return
    event("fast path")
    assert comparable(fast) == comparable(slow)
    assert fast.digests == slow.digests
    assert fast.keys == slow.keys


def test_the_fast_path_takes_a_typical_body() -> None:
    body = orjson.dumps({"records": [
        {"idempotency_key": f"k{i}", "payload": {
            "id": i, "small": 3, "flag": True, "ratio": 0.5, "price": "12.50", "label": "x",
            "blob": base64.b64encode(b"\x00\x01").decode(), "day": "2024-02-29",
            "at": "2024-05-01T12:00:00.123456789Z", "extra": {"b": 1, "a": [1, 2]},
        }} for i in range(3)]})
    fast, slow = both(body)
    assert comparable(fast) == comparable(slow)
    assert fast.table.column("at").to_pylist()[0] == datetime.datetime(2024, 5, 1, 12, 0, 0, 123456,
                                                                       tzinfo=datetime.UTC)
    assert fast.table.column("extra").to_pylist()[0] == '{"a":[1,2],"b":1}'


def test_equivalent_spellings_of_a_record_have_the_same_digest() -> None:
    """What idempotency compares is the canonical record: a decimal as text or number, an instant
    in any offset, json with keys in any order."""
    checker = validator()

    def digest(payload: dict[str, Any]) -> bytes:
        body = orjson.dumps({"records": [{"idempotency_key": "k", "payload": {"id": 1, **payload}}]})
        return checker.parse(body, BodyForm.OBJECT, default_op=Op.INSERT, keys_required=True).digests[0]

    assert digest({"price": 12.5}) == digest({"price": "12.50"})
    assert digest({"at": "2024-05-01T14:00:00+02:00"}) == digest({"at": "2024-05-01T12:00:00Z"})
    assert digest({"at": "2024-05-01T12:00:00"}) == digest({"at": "2024-05-01T12:00:00.0000001Z"})
    assert digest({"extra": {"a": 1, "b": 2}}) == digest({"extra": {"b": 2, "a": 1}})
    assert digest({"at": 1714564800}) == digest({"at": "2024-05-01T12:00:00Z"}), "epoch seconds"
    assert digest({"at": 1714564800250}) == digest({"at": "2024-05-01T12:00:00.25Z"}), "epoch milliseconds"
    assert digest({"at": 1714564800.25}) == digest({"at": "2024-05-01T12:00:00.25Z"}), "fractional seconds"
    assert digest({"label": None}) == digest({})
    assert digest({"label": ""}) != digest({})
    assert digest({"label": "a", "extra": "b"}) != digest({"label": "ab"})


@pytest.mark.parametrize(("payload", "complaint"), [
    ({"id": 1.5}, "id"),
    ({"id": True}, "id"),
    ({"small": 2**31}, "small"),
    ({"price": "1.234"}, "price"),
    ({"price": "NaN"}, "price"),
    ({"blob": "not base64!"}, "blob"),
    ({"day": "2024-02-30"}, "day"),
    ({"at": "yesterday"}, "at"),
    ({"at": 10**15}, "at"),  # milliseconds past the year 9999
    ({"at": True}, "at"),
    ({"flag": 1}, "flag"),
    ({"label": 5}, "label"),
    ({"nope": 1}, "nope"),
    ({}, "id"),
])
def test_a_bad_value_is_reported_with_its_record_and_column(payload: dict[str, Any], complaint: str) -> None:
    good = {"idempotency_key": "good", "payload": {"id": 0}}
    bad = {"idempotency_key": "bad", "payload": {"id": 1, **payload} if "id" not in payload and payload
           else payload}
    body = orjson.dumps({"records": [good, bad]})
    with pytest.raises(ValidationFailed) as failure:
        validator().parse(body, BodyForm.OBJECT, default_op=Op.INSERT, keys_required=True)
    errors = failure.value.context["errors"]
    assert [e["index"] for e in errors] == [1]
    assert any(complaint in reason for reason in errors[0]["errors"]), errors


def test_arrays_and_ndjson_carry_payloads_only() -> None:
    checker = validator()
    rows = [{"id": 1, "label": "a"}, {"id": 2, "label": "b"}]
    array = checker.parse(orjson.dumps(rows), BodyForm.ARRAY, default_op=Op.UPSERT, keys_required=False)
    lines = checker.parse(b"\n".join(orjson.dumps(r) for r in rows) + b"\n\n", BodyForm.NDJSON,
                          default_op=Op.UPSERT, keys_required=False)
    for records in (array, lines):
        assert records.keys == [None, None]
        assert records.table.column("label").to_pylist() == ["a", "b"]
        assert records.table.column("_dm_op").to_pylist() == ["upsert", "upsert"]
    bad_line = b'{"id": 1}\n{"id": "two"}\n'
    with pytest.raises(ValidationFailed) as failure:
        checker.parse(bad_line, BodyForm.NDJSON, default_op=Op.INSERT, keys_required=False)
    assert [e["index"] for e in failure.value.context["errors"]] == [1]


def test_missing_keys_ops_and_empty_bodies_are_refused() -> None:
    checker = validator()
    unkeyed = orjson.dumps({"records": [{"payload": {"id": 1}}]})
    with pytest.raises(ValidationFailed):
        checker.parse(unkeyed, BodyForm.OBJECT, default_op=Op.INSERT, keys_required=True)
    with pytest.raises(RecordsRequired):
        checker.parse(b"[]", BodyForm.ARRAY, default_op=Op.INSERT, keys_required=False)
    plain = RecordValidator(TableSchema.build([{"name": "id", "type": "int64"}]), max_records=10,
                            max_payload_bytes=1000)
    upsert = orjson.dumps({"records": [{"idempotency_key": "k", "op": "upsert", "payload": {"id": 1}}]})
    with pytest.raises(OpNotSupported):
        plain.parse(upsert, BodyForm.OBJECT, default_op=Op.INSERT, keys_required=True)
