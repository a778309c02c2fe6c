"""Which WHERE terms may skip files of other partitions: only terms that no row of such a file
could pass, on a table scanned once; everything else prunes nothing."""

from __future__ import annotations

import pytest

from duckmesh.query import sandbox
from duckmesh.query.pruning import Literal, matches

TABLES = ("sales", "users")


def fixed(sql: str) -> dict[str, dict[str, set[str]]]:
    checked = sandbox.check(sql, TABLES)
    return {t: {c: {v.text for v in values} for c, values in cols.items()} for t, cols in checked.constraints.items()}


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM sales WHERE country = 'de'", {"sales": {"country": {"de"}}}),
    ("SELECT * FROM sales WHERE 'de' = country AND amount > 3", {"sales": {"country": {"de"}}}),
    ("SELECT * FROM sales s WHERE s.country IN ('de', 'fr') AND (s.day = DATE '2024-01-02')",
     {"sales": {"country": {"de", "fr"}, "day": {"2024-01-02"}}}),
    ("SELECT * FROM sales WHERE country = 'de' AND country = 'fr'", {"sales": {"country": set()}}),
    ("SELECT * FROM sales JOIN users u ON u.id = sales.id WHERE sales.country = 'de' AND u.tier = 2",
     {"sales": {"country": {"de"}}, "users": {"tier": {"2"}}}),
    ("SELECT * FROM sales LEFT JOIN users ON users.id = sales.id WHERE users.tier = -1",
     {"users": {"tier": {"-1"}}}),
    ("WITH x AS (SELECT * FROM sales WHERE country = 'de') SELECT count(*) FROM x", {"sales": {"country": {"de"}}}),
    ("SELECT * FROM (SELECT * FROM sales WHERE country = 'de') t", {"sales": {"country": {"de"}}}),
])
def test_terms_that_fix_a_column_of_a_table_scanned_once(sql: str, expected: dict[str, dict[str, set[str]]]) -> None:
    assert fixed(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT * FROM sales WHERE country = 'de' OR amount > 3",  # not a conjunct
    "SELECT * FROM sales WHERE NOT country = 'de'",
    "SELECT * FROM sales WHERE country <> 'de'",
    "SELECT * FROM sales WHERE country IS NULL",
    "SELECT * FROM sales WHERE country = $1",  # a parameter
    "SELECT * FROM sales WHERE country = upper('de')",  # an expression
    "SELECT * FROM sales WHERE country IN (SELECT country FROM users)",
    "SELECT * FROM sales a JOIN sales b ON a.id = b.id WHERE a.country = 'de'",  # scanned twice
    "SELECT * FROM sales WHERE country = 'de' UNION ALL SELECT * FROM sales",
    "SELECT * FROM sales JOIN users ON users.id = sales.id WHERE country = 'de'",  # unqualified, two sources
    "SELECT * FROM users WHERE EXISTS (SELECT 1 FROM sales WHERE users.country = 'de')",  # another scan's column
    "WITH sales AS (SELECT 1 AS country) SELECT * FROM sales WHERE country = 1",  # a CTE, not the table
])
def test_anything_else_prunes_nothing(sql: str) -> None:
    assert "sales" not in fixed(sql)


def test_the_event_time_column_is_noticed_when_named() -> None:
    assert sandbox.check("SELECT max(_dm_event_time) FROM sales", TABLES).reads_event_time
    assert not sandbox.check("SELECT * FROM sales", TABLES).reads_event_time


@pytest.mark.parametrize(("column_type", "stored", "allowed", "expected"), [
    ("string", "de", {Literal("string", "de")}, True),
    ("string", "fr", {Literal("string", "de")}, False),
    ("string", None, {Literal("string", "de")}, False),
    ("string", "5", {Literal("number", "5")}, None),  # DuckDB would cast: keep the file
    ("int64", 5, {Literal("number", "5"), Literal("number", "6")}, True),
    ("int64", 7, {Literal("number", "5")}, False),
    ("int64", 5, {Literal("number", "5.5")}, None),
    ("decimal(10,2)", "12.50", {Literal("number", "12.5")}, True),
    ("date", "2024-01-02", {Literal("date", "2024-01-02")}, True),
    ("date", "2024-01-03", {Literal("string", "2024-01-02")}, False),
    ("date", "2024-01-03", {Literal("string", "yesterday")}, None),
    ("boolean", True, {Literal("bool", "true")}, True),
    ("boolean", False, {Literal("bool", "true")}, False),
])
def test_a_files_partition_value_against_the_allowed_literals(
    column_type: str, stored: object, allowed: set[Literal], expected: bool | None
) -> None:
    assert matches(column_type, stored, frozenset(allowed)) is expected
