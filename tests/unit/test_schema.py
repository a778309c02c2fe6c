"""Table definitions and payload validation (duckmesh.schema): table-driven."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from duckmesh.domain import Op
from duckmesh.schema import Column, PayloadValidator, SchemaError, TableSchema

Spec = list[dict[str, Any]]


def _cols(*pairs: tuple[str, str]) -> Spec:
    return [{"name": name, "type": type_name} for name, type_name in pairs]


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# ---------------------------------------------------------------------------
# TableSchema.build


@pytest.mark.parametrize(
    ("columns", "primary_key", "partition_by", "message"),
    [
        pytest.param(_cols(("Id", "int64")), [], [], "'Id'", id="upper-case name"),
        pytest.param(_cols(("1st", "int64")), [], [], "'1st'", id="name starts with a digit"),
        pytest.param(_cols(("a-b", "int64")), [], [], "'a-b'", id="dash in name"),
        pytest.param(_cols(("a b", "int64")), [], [], "'a b'", id="space in name"),
        pytest.param(_cols(("", "int64")), [], [], "''", id="empty name"),
        pytest.param(_cols(("a" * 64, "int64")), [], [], "a" * 64, id="name longer than 63"),
        pytest.param(_cols(("_dm_token", "int64")), [], [], "_dm_", id="reserved _dm_ prefix"),
        pytest.param(_cols(("_dm_x", "string")), [], [], "_dm_", id="any _dm_ name"),
        pytest.param(_cols(("a", "int64"), ("a", "string")), [], [], "declared twice", id="duplicate column"),
        pytest.param(_cols(("a", "varchar")), [], [], "unknown column type 'varchar'", id="unknown type"),
        pytest.param(_cols(("a", "")), [], [], "unknown column type", id="missing type"),
        pytest.param(_cols(("a", "decimal")), [], [], "unknown column type", id="decimal without params"),
        pytest.param(_cols(("a", "decimal(39,2)")), [], [], "precision", id="decimal precision above 38"),
        pytest.param(_cols(("a", "decimal(0,0)")), [], [], "precision", id="decimal precision zero"),
        pytest.param(_cols(("a", "decimal(5,6)")), [], [], "scale <= precision", id="decimal scale above precision"),
        pytest.param(_cols(("a", "decimal(x,2)")), [], [], "unknown column type", id="decimal non-numeric"),
        pytest.param(_cols(("a", "int64")), ["b"], [], "primary key column 'b' is not a column", id="pk unknown"),
        pytest.param(_cols(("a", "float64")), ["a"], [], "cannot be of a float", id="pk float64"),
        pytest.param(_cols(("a", "float32")), ["a"], [], "cannot be of a float", id="pk float32"),
        pytest.param(_cols(("a", "json")), ["a"], [], "json", id="pk json"),
        pytest.param(_cols(("a", "int64")), ["a", "a"], [], "names a column twice", id="pk repeats a column"),
        pytest.param(_cols(("a", "int64")), [], ["b"], "partition column 'b' is not a column", id="partition unknown"),
        pytest.param([], [], [], "at least one column", id="no columns"),
    ],
)
def test_an_invalid_table_definition_is_refused_naming_the_problem(
    columns: Spec, primary_key: list[str], partition_by: list[str], message: str
) -> None:
    with pytest.raises(SchemaError) as caught:
        TableSchema.build(columns, primary_key, partition_by)

    assert message in str(caught.value)


def test_every_problem_of_a_table_definition_is_reported_at_once() -> None:
    columns = [
        {"name": "Bad", "type": "int64"},
        {"name": "ok", "type": "int64"},
        {"name": "ok", "type": "string"},
        {"name": "price", "type": "decimal(40,2)"},
        {"name": "ratio", "type": "float64"},
    ]

    with pytest.raises(SchemaError) as caught:
        TableSchema.build(columns, primary_key=["ratio", "missing"], partition_by=["nowhere"])

    message = str(caught.value)
    for expected in ("'Bad'", "'ok' is declared twice", "'price'", "'ratio' cannot be of a float",
                     "'missing' is not a column", "partition column 'nowhere'"):
        assert expected in message


def test_a_valid_definition_normalizes_types_and_makes_key_columns_required() -> None:
    schema = TableSchema.build(
        [{"name": "id", "type": " INT64 "}, {"name": "price", "type": "Decimal(12, 2)", "nullable": False},
         {"name": "note", "type": "string"}, {"name": "a" * 63, "type": "boolean"}],
        primary_key=["id"], partition_by=["note"],
    )

    assert schema.columns == (
        Column("id", "int64", False, 1), Column("price", "decimal(12,2)", False, 2),
        Column("note", "string", True, 3), Column("a" * 63, "boolean", True, 4),
    )
    assert schema.primary_key == ("id",) and schema.keyed
    assert TableSchema.from_json(schema.to_json()) == schema


def test_a_column_keeps_its_field_id_and_a_re_added_name_gets_a_new_one() -> None:
    v1 = TableSchema.build([{"name": "id", "type": "int64"}, {"name": "email", "type": "string"}], ["id"])
    v2 = v1.evolve([{"name": "id", "type": "int64"}], last_field_id=2)  # email dropped
    v3 = v2.evolve([{"name": "id", "type": "int64"}, {"name": "email", "type": "string"},
                    {"name": "age", "type": "int32"}], last_field_id=2)

    assert [(c.name, c.field_id) for c in v3.columns] == [("id", 1), ("email", 3), ("age", 4)]
    assert v3.by_name["email"].field_id != v1.by_name["email"].field_id


# ---------------------------------------------------------------------------
# PayloadValidator.canonical: every type's accepted and rejected values

ACCEPTED: list[tuple[str, Any, Any]] = [
    ("boolean", True, True),
    ("boolean", False, False),
    ("int32", 0, 0),
    ("int32", 2**31 - 1, 2**31 - 1),
    ("int32", -(2**31), -(2**31)),
    ("int64", 2**63 - 1, 2**63 - 1),
    ("int64", -(2**63), -(2**63)),
    ("float64", 1.5, 1.5),
    ("float64", 3, 3.0),
    ("float32", -2.25, -2.25),
    ("float64", "NaN", "NaN"),
    ("float64", "Infinity", "Infinity"),
    ("float32", "-Infinity", "-Infinity"),
    ("decimal(10,2)", "12.5", "12.50"),
    ("decimal(10,2)", "12.50", "12.50"),
    ("decimal(10,2)", 12.5, "12.50"),
    ("decimal(10,2)", 7, "7.00"),
    ("decimal(10,2)", "-0.01", "-0.01"),
    ("decimal(10,2)", "1E+2", "100.00"),
    ("decimal(10,2)", "12345678.99", "12345678.99"),
    ("decimal(10,0)", "42", "42"),
    ("decimal(38,10)", "1234567890123456789012345678.0123456789", "1234567890123456789012345678.0123456789"),
    ("string", "", ""),
    ("string", "héllo ✓", "héllo ✓"),
    ("binary", "aGVsbG8=", "aGVsbG8="),
    ("binary", "", ""),
    ("date", "1970-01-01", 0),
    ("date", "2024-05-01", (date(2024, 5, 1) - date(1970, 1, 1)).days),
    ("date", "1969-12-31", -1),
    ("timestamp", "2024-05-01T12:00:00Z", _micros(datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ("timestamp", "2024-05-01T14:30:00+02:30", _micros(datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ("timestamp", "2024-05-01T07:00:00-05:00", _micros(datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ("timestamp", "2024-05-01T00:30:00+01:00", _micros(datetime(2024, 4, 30, 23, 30, tzinfo=UTC))),
    ("timestamp", "2024-05-01T12:00:00", _micros(datetime(2024, 5, 1, 12, tzinfo=UTC))),
    ("timestamp", "2024-05-01T12:00:00.123456Z", _micros(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))),
    ("timestamp", "1970-01-01T00:00:00Z", 0),
    ("timestamp", 1714564800, _micros(datetime(2024, 5, 1, 12, tzinfo=UTC))),  # epoch seconds
    ("timestamp", 1714564800123, _micros(datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC))),  # milliseconds
    ("timestamp", 1714564800.25, _micros(datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC))),  # fractions
    ("timestamp", "1969-12-31T23:59:59.999999Z", -1),
    # 7-9 fractional digits (Go RFC3339Nano, Java Instant, .NET "o") are truncated to microseconds
    ("timestamp", "2024-05-01T12:00:00.123456789Z", _micros(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))),
    ("timestamp", "2024-05-01T12:00:00.1234567+02:00", _micros(datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC))),
    ("timestamp", "2024-12-31T23:59:59.99999999Z", _micros(datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))),
    ("timestamp", "1969-12-31T23:59:59.9999999Z", -1),
    ("json", {"b": 1, "a": {"d": [1, 2], "c": None}}, '{"a":{"c":null,"d":[1,2]},"b":1}'),
    ("json", [3, "x", True], '[3,"x",true]'),
    ("json", "text", '"text"'),
    ("json", 0, "0"),
    ("json", False, "false"),
]

REJECTED: list[tuple[str, Any, str]] = [
    ("boolean", 1, "expected a boolean"),
    ("boolean", 0, "expected a boolean"),
    ("boolean", "true", "expected a boolean"),
    ("int32", True, "expected an integer"),
    ("int32", False, "expected an integer"),
    ("int32", 2**31, "out of range for int32"),
    ("int32", -(2**31) - 1, "out of range for int32"),
    ("int64", 2**63, "out of range for int64"),
    ("int64", 1.0, "expected an integer"),
    ("int64", "1", "expected an integer"),
    ("float64", True, "expected a number"),
    ("float64", "1.5", "expected a number"),
    ("float64", "nan", "expected a number"),
    ("float64", "inf", "expected a number"),
    ("float32", [1.0], "expected a number"),
    ("decimal(10,2)", "12.345", "more than 2 fractional digits"),
    ("decimal(10,2)", 0.125, "more than 2 fractional digits"),
    ("decimal(10,2)", "123456789.00", "too many digits"),
    ("decimal(4,2)", "100", "too many digits"),
    ("decimal(10,2)", "abc", "not a decimal number"),
    ("decimal(10,2)", "", "not a decimal number"),
    ("decimal(10,2)", "NaN", "finite"),
    ("decimal(10,2)", "Infinity", "finite"),
    ("decimal(10,2)", True, "expected a decimal"),
    ("decimal(10,2)", [1], "expected a decimal"),
    ("string", 5, "expected a string"),
    ("string", {"a": 1}, "expected a string"),
    ("binary", "not base64!", "invalid base64"),
    ("binary", "aGVsbG8", "invalid base64"),
    ("binary", 123, "expected base64"),
    ("date", "2024-02-30", "invalid date"),
    ("date", "2024-05-01T00:00:00", "invalid date"),
    ("date", "May 1 2024", "invalid date"),
    ("date", 19844, "expected a date"),
    ("timestamp", "2024-13-01T00:00:00Z", "invalid RFC 3339"),
    ("timestamp", "yesterday", "invalid RFC 3339"),
    ("timestamp", True, "expected an RFC 3339"),
    ("timestamp", 10**15, "years 1-9999"),
    ("timestamp", "2024-05-01T12:00:00.1234567891Z", "invalid RFC 3339"),
    ("timestamp", "2024-05-01T12:00:00.Z", "invalid RFC 3339"),
]


def _one_column(type_name: str, *, nullable: bool = True) -> PayloadValidator:
    return PayloadValidator(TableSchema.build([{"name": "v", "type": type_name, "nullable": nullable}]))


@pytest.mark.parametrize(("type_name", "value", "canonical"), ACCEPTED)
def test_an_accepted_value_becomes_its_canonical_form(type_name: str, value: Any, canonical: Any) -> None:
    out, problems = _one_column(type_name).canonical({"v": value}, Op.INSERT)

    assert problems == []
    assert out == {"v": canonical}
    assert type(out["v"]) is type(canonical)  # e.g. True stays a bool, 3 becomes 3.0


@pytest.mark.parametrize(("type_name", "value", "reason"), REJECTED)
def test_a_rejected_value_is_reported_with_its_column_and_reason(type_name: str, value: Any, reason: str) -> None:
    out, problems = _one_column(type_name).canonical({"v": value}, Op.INSERT)

    assert out == {}
    assert len(problems) == 1
    assert problems[0].startswith("column 'v': ")
    assert reason in problems[0]


@pytest.mark.parametrize(
    "payload",
    [{"v": 12.5}, {"v": "12.5"}, {"v": "12.50"}, {"v": "1.25E+1"}],
    ids=["number", "short string", "padded string", "exponent"],
)
def test_equal_decimals_written_differently_have_one_canonical_form(payload: dict[str, Any]) -> None:
    out, problems = _one_column("decimal(10,2)").canonical(payload, Op.INSERT)

    assert (out, problems) == ({"v": "12.50"}, [])


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        pytest.param("decimal(10,2)", "1E+100000", id="decimal with a huge exponent"),
        pytest.param("json", {"n": 2**64}, id="json integer beyond 64 bits"),
    ],
)
def test_an_unrepresentable_value_is_a_validation_problem_not_a_crash(type_name: str, value: Any) -> None:
    """A value no column can hold is reported like any other bad value (400, never a 500)."""
    out, problems = _one_column(type_name).canonical({"v": value}, Op.INSERT)

    assert out == {}
    assert len(problems) == 1 and problems[0].startswith("column 'v': ")


# ---------------------------------------------------------------------------
# PayloadValidator.canonical: whole payloads

KEYED = TableSchema.build(
    [
        {"name": "tenant", "type": "string"},
        {"name": "id", "type": "int64"},
        {"name": "name", "type": "string", "nullable": False},
        {"name": "score", "type": "float64"},
    ],
    primary_key=["tenant", "id"],
)


def test_a_valid_payload_keeps_its_columns_and_drops_nulls() -> None:
    out, problems = PayloadValidator(KEYED).canonical(
        {"tenant": "t", "id": 1, "name": "n", "score": None}, Op.UPSERT
    )

    assert problems == []
    assert out == {"tenant": "t", "id": 1, "name": "n"}


def test_unknown_columns_are_reported_by_name() -> None:
    out, problems = PayloadValidator(KEYED).canonical(
        {"tenant": "t", "id": 1, "name": "n", "colour": "red", "_dm_token": 5}, Op.INSERT
    )

    assert sorted(problems) == ["unknown column '_dm_token'", "unknown column 'colour'"]
    assert out == {"tenant": "t", "id": 1, "name": "n"}


@pytest.mark.parametrize("op", [Op.INSERT, Op.UPSERT])
def test_required_and_key_columns_must_be_present_and_not_null_on_a_write(op: Op) -> None:
    _, problems = PayloadValidator(KEYED).canonical({"tenant": None, "score": 1.0}, op)

    assert sorted(problems) == [
        "column 'id' is required", "column 'name' is required", "column 'tenant' is required",
    ]


def test_a_delete_needs_only_the_primary_key_columns() -> None:
    out, problems = PayloadValidator(KEYED).canonical({"tenant": "t", "id": 7}, Op.DELETE)

    assert (out, problems) == ({"tenant": "t", "id": 7}, [])


def test_a_delete_without_a_key_column_or_with_a_bad_key_is_reported() -> None:
    validator = PayloadValidator(KEYED)

    assert validator.canonical({"tenant": "t"}, Op.DELETE)[1] == ["column 'id' is required"]
    assert validator.canonical({"tenant": "t", "id": "7"}, Op.DELETE)[1] == [
        "column 'id': expected an integer (int64)"
    ]


def test_a_delete_ignores_non_key_columns_of_the_table() -> None:
    out, problems = PayloadValidator(KEYED).canonical({"tenant": "t", "id": 7, "score": "oops"}, Op.DELETE)

    assert (out, problems) == ({"tenant": "t", "id": 7}, [])


def test_every_problem_of_a_payload_is_reported_not_only_the_first() -> None:
    schema = TableSchema.build([
        {"name": "id", "type": "int32", "nullable": False},
        {"name": "ok", "type": "boolean"},
        {"name": "price", "type": "decimal(6,2)"},
        {"name": "at", "type": "timestamp"},
        {"name": "day", "type": "date"},
    ])

    out, problems = PayloadValidator(schema).canonical(
        {"ok": 1, "price": "1.234", "at": "noon", "day": "2024-05-01", "extra": 1}, Op.INSERT
    )

    assert out == {"day": (date(2024, 5, 1) - date(1970, 1, 1)).days}
    assert len(problems) == 5
    for expected in ("unknown column 'extra'", "column 'id' is required", "column 'ok': expected a boolean",
                     "column 'price': more than 2 fractional digits", "column 'at': invalid RFC 3339"):
        assert any(problem.startswith(expected) for problem in problems), expected


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None], ids=["list", "string", "number", "null"])
def test_a_payload_that_is_not_an_object_is_refused(payload: Any) -> None:
    assert PayloadValidator(KEYED).canonical(payload, Op.INSERT) == ({}, ["payload must be a JSON object"])
