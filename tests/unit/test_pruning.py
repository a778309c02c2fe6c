"""Which WHERE terms may skip files of other partitions: only terms that no row of such a file
could pass, on a table scanned once; everything else prunes nothing."""

from __future__ import annotations

import pytest

from duckmesh.errors import QueryInvalid
from duckmesh.query import sandbox
from duckmesh.query.pruning import Literal, matches

TABLES = ("sales", "users")


def fixed(sql: str) -> dict[str, dict[str, list[set[str]]]]:
    """Per table and column, the literals of each term (one set per term)."""
    checked = sandbox.check(sql, TABLES)
    return {t: {c: [{v.text for v in term} for term in terms] for c, terms in cols.items()}
            for t, cols in checked.constraints.items()}


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM sales WHERE country = 'de'", {"sales": {"country": [{"de"}]}}),
    ("SELECT * FROM sales WHERE 'de' = country AND amount > 3", {"sales": {"country": [{"de"}]}}),
    ("SELECT * FROM sales s WHERE s.country IN ('de', 'fr') AND (s.day = DATE '2024-01-02')",
     {"sales": {"country": [{"de", "fr"}], "day": [{"2024-01-02"}]}}),
    # each term is kept on its own: typed per column later, never intersected as text
    ("SELECT * FROM sales WHERE day = DATE '2024-01-02' AND day IN ('2024-01-02', '2024-01-03')",
     {"sales": {"day": [{"2024-01-02"}, {"2024-01-02", "2024-01-03"}]}}),
    ("SELECT * FROM sales JOIN users u ON u.id = sales.id WHERE sales.country = 'de' AND u.tier = 2",
     {"sales": {"country": [{"de"}]}, "users": {"tier": [{"2"}]}}),
    ("SELECT * FROM sales LEFT JOIN users ON users.id = sales.id WHERE users.tier = -1",
     {"users": {"tier": [{"-1"}]}}),
    ("SELECT * FROM sales ANTI JOIN users USING (id) WHERE sales.country = 'de'", {"sales": {"country": [{"de"}]}}),
    ("WITH x AS (SELECT * FROM sales WHERE country = 'de') SELECT count(*) FROM x", {"sales": {"country": [{"de"}]}}),
    ("SELECT * FROM (SELECT * FROM sales WHERE country = 'de') t", {"sales": {"country": [{"de"}]}}),
])
def test_terms_that_fix_a_column_of_a_table_scanned_once(
    sql: str, expected: dict[str, dict[str, list[set[str]]]]
) -> None:
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
    # removing rows changes what the other side pairs with
    "SELECT * FROM users u ASOF JOIN sales s ON u.ts >= s.ts WHERE s.country = 'de'",
    "SELECT * FROM users POSITIONAL JOIN sales WHERE sales.country = 'de'",
    "SELECT * FROM users NATURAL JOIN sales WHERE sales.country = 'de'",
    # once aliased, the table's name is another source (here the aliased users table)
    "SELECT * FROM sales AS s, users AS sales WHERE sales.country = 'de'",
    "SELECT * FROM users AS sales WHERE EXISTS (SELECT 1 FROM sales AS s WHERE sales.country = 'de')",
    # the column in WHERE is not the stored column
    "SELECT * FROM sales AS t(id, region, country) WHERE country = 'de'",
    "SELECT * FROM sales UNPIVOT (country FOR k IN (country, city)) WHERE country = 'de'",
    # x.t.country: a field of the struct column t of source x, not the table's column
    "SELECT * FROM sales t, (SELECT {'country': 'de'} AS t) AS x WHERE x.t.country = 'de'",
    # a sample is drawn before WHERE
    "SELECT count(*) FROM sales USING SAMPLE 1 ROWS (reservoir, 1) WHERE country = 'de'",
    "SELECT count(*) FROM sales TABLESAMPLE (10 PERCENT) WHERE country = 'de'",
])
def test_anything_else_prunes_nothing(sql: str) -> None:
    assert "sales" not in fixed(sql)


def test_the_event_time_column_is_noticed_when_named() -> None:
    assert sandbox.check("SELECT max(_dm_event_time) FROM sales", TABLES).reads_event_time
    assert not sandbox.check("SELECT * FROM sales", TABLES).reads_event_time


def test_naming_the_event_time_refuses_a_natural_join_that_would_match_on_it() -> None:
    with pytest.raises(QueryInvalid, match="NATURAL JOIN"):
        sandbox.check("SELECT id FROM sales NATURAL JOIN users WHERE sales._dm_event_time IS NOT NULL", TABLES)
    assert sandbox.check("SELECT id FROM sales NATURAL JOIN users", TABLES).sql


@pytest.mark.parametrize(("column_type", "stored", "allowed", "expected"), [
    ("string", "de", {Literal("string", "de")}, True),
    ("string", "fr", {Literal("string", "de")}, False),
    ("string", None, {Literal("string", "de")}, False),
    ("string", "5", {Literal("number", "5")}, None),  # DuckDB would cast: keep the file
    ("int64", 5, {Literal("number", "5"), Literal("number", "6")}, True),
    ("int64", 7, {Literal("number", "5")}, False),
    ("int64", 5, {Literal("number", "5.5")}, None),
    ("decimal(10,2)", "12.50", {Literal("number", "12.5")}, True),
    ("decimal(10,2)", "12.50", {Literal("number", "12.4")}, False),
    ("decimal(10,2)", "1.51", {Literal("string", "1.505")}, None),  # DuckDB rounds the string to 1.51
    ("decimal(10,2)", "1.51", {Literal("number", "1.505")}, None),  # finer than the column's scale
    ("decimal(10,2)", "1.51", {Literal("number", "1.5100000000000000000000000000000000000001")}, None),  # a DOUBLE
    ("decimal(10,2)", "1.51", {Literal("number", "151e-2")}, None),
    # DuckDB counts leading zeros in a literal's width: 39 characters of digits make it a DOUBLE
    ("decimal(38,20)", "0.10000000000000000000", {Literal("number", "0" * 19 + ".1" + "0" * 19)}, None),
    ("decimal(38,2)", "1.50", {Literal("number", "0001.50")}, True),
    ("int64", 1, {Literal("string", "1")}, True),
    ("int64", 1, {Literal("string", "１")}, None),  # not an ASCII integer
    ("date", "2024-01-02", {Literal("string", "20240102")}, None),
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
