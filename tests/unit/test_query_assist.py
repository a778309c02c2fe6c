"""Query assist's pure parts: what counts as SQL in a model's answer, where requests go, and
how large the schema context may grow."""

from __future__ import annotations

import pytest

from duckmesh.errors import TranslateAnswerInvalid
from duckmesh.query.assist import AssistConfig, build_messages, extract_sql, sandbox_verdict
from duckmesh.query.overview import SchemaOverview, TableOverview
from duckmesh.schema import Column


def _overview(*names: str, samples: int = 0) -> SchemaOverview:
    tables = tuple(
        TableOverview(name, (Column("id", "int64", False), Column("note", "string")), ("id",), 7,
                      [[i, "x" * 100] for i in range(samples)])
        for name in names
    )
    return SchemaOverview(tables, None, None, 0)


@pytest.mark.parametrize(("answer", "sql"), [
    ("SELECT 1", "SELECT 1"),
    ("  SELECT 1;;  ", "SELECT 1"),
    ("```sql\nSELECT a\nFROM t;\n```", "SELECT a\nFROM t"),
    ("```\nSELECT 1\n```", "SELECT 1"),
    ("```duckdb\nFROM t\n```", "FROM t"),
    ("Here is the query:\n\n```sql\nWITH x AS (SELECT 1) SELECT * FROM x\n```\nIt uses a CTE.",
     "WITH x AS (SELECT 1) SELECT * FROM x"),
    ("```sql\nSELECT 2", "SELECT 2"),  # unterminated fence
    ("```sql\nSELECT 1\n```\n```sql\nSELECT 2\n```", "SELECT 1"),  # the first block wins
])
def test_the_sql_is_taken_out_of_code_fences_and_trailing_semicolons(answer: str, sql: str) -> None:
    assert extract_sql(answer) == sql


@pytest.mark.parametrize("answer", [
    "", "   ", "```\n```", "Sorry, I cannot help with that.", "events", "42", "x = 1",
    "The answer is: SELECT 1", "SELECT " + "1 + " * 10_000 + "1",
])
def test_an_answer_that_is_not_a_sql_statement_is_refused(answer: str) -> None:
    with pytest.raises(TranslateAnswerInvalid):
        extract_sql(answer)


def test_statements_the_sandbox_refuses_are_still_sql_and_get_a_verdict_instead() -> None:
    overview = _overview("events")
    for sql in ("DROP TABLE events", "SELECT * FROM read_csv('/etc/passwd')", "SELECT 1; SELECT 2"):
        assert extract_sql(sql) == sql
        allowed, code, warnings, read = sandbox_verdict(sql, overview)
        assert (allowed, code, read) == (False, "SQL_NOT_ALLOWED", ())
        assert warnings and warnings[0].startswith("the sandbox would refuse this query")
    assert sandbox_verdict("SELECT note FROM events", overview) == (True, None, (), ("events",))
    assert sandbox_verdict("SELECT * FROM other_tenants_table", overview)[0] is False


@pytest.mark.parametrize(("base", "endpoint"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://llm.internal/openai/v1/", "http://llm.internal/openai/v1/chat/completions"),
    ("http://llm.internal/v1/chat/completions", "http://llm.internal/v1/chat/completions"),
])
def test_the_base_url_may_name_the_host_the_v1_root_or_the_endpoint(base: str, endpoint: str) -> None:
    assert AssistConfig(base, "m").endpoint == endpoint


def test_the_audited_host_never_carries_credentials() -> None:
    assert AssistConfig("https://user:secret@llm.internal/v1", "m").host == "llm.internal"


def test_the_schema_context_is_bounded_dropping_samples_first_then_tables() -> None:
    overview = _overview(*(f"t{i}" for i in range(40)), samples=5)
    roomy = build_messages("q", overview, 1_000_000)[1]["content"]
    no_samples = build_messages("q", overview, 10_000)[1]["content"]
    few_tables = build_messages("q", overview, 2_000)[1]["content"]

    assert '"t39"' in roomy and "x" * 100 in roomy
    assert '"t39"' in no_samples and "x" * 100 not in no_samples
    assert '"t0"' in few_tables and '"t39"' not in few_tables
    assert len(few_tables) < 2_000 + 1_000  # the context plus the fixed instructions
