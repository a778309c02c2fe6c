"""POST /v1/query/translate against a fake OpenAI-compatible endpoint on 127.0.0.1: the
suggestion is cleaned and checked by the sandbox but never run, failures of the endpoint are
clear errors, and the prompt carries only the caller tenant's tables."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.catalog.db import CatalogPool
from duckmesh.cli.runtime import build_query_assist
from duckmesh.domain import Role
from tests.conftest import KeyMaker, QueryCtx, make_settings
from tests.fake_openai import FakeOpenAI, running_fake_openai
from tests.helpers import create_table, query_ok, records

ERROR_BODY = {"error_code", "message", "retryable", "context", "trace_id"}


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as fake:
        yield fake


@pytest.fixture
def assist_on(app_context: AppContext, fake_llm: FakeOpenAI) -> FakeOpenAI:
    """Query assist enabled through the same settings -> assistant wiring the server uses."""
    settings = make_settings(
        ai_translate_enabled=True, ai_base_url=fake_llm.url, ai_model="fake-model", ai_api_key="sk-test",
        ai_timeout="500ms", ai_temperature=0.2,
    )
    app_context.assist = build_query_assist(settings)
    return fake_llm


async def _events(ctx: QueryCtx, count: int = 5) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers, "events")
    ingested = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, count)})
    assert ingested.status_code == 200, ingested.text
    await coordinator.run_once()


async def translate(client: httpx.AsyncClient, headers: dict[str, str], prompt: str) -> httpx.Response:
    return await client.post("/v1/query/translate", headers=headers, json={"prompt": prompt})


async def test_translate_is_off_by_default_and_says_how_to_turn_it_on(ctx: QueryCtx) -> None:
    client, headers, _ = ctx
    response = await translate(client, headers, "how many events?")

    assert response.status_code == 501
    assert set(response.json()) == ERROR_BODY
    assert response.json()["error_code"] == "TRANSLATE_NOT_CONFIGURED"
    assert "DUCKMESH_AI_TRANSLATE_ENABLED" in response.json()["message"]


async def test_a_fenced_answer_becomes_a_clean_suggestion_the_sandbox_accepts(
    ctx: QueryCtx, assist_on: FakeOpenAI
) -> None:
    client, headers, _ = ctx
    await _events(ctx)
    assist_on.answer("Here you go:\n```sql\nSELECT count(*) AS n FROM events;\n```\nThis counts the rows.")

    response = await translate(client, headers, "how many events are there?")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "sql": "SELECT count(*) AS n FROM events", "provider": "openai-compatible", "model": "fake-model",
        "sandbox_ok": True, "sandbox_error_code": None, "warnings": [], "referenced_tables": ["events"],
    }
    sent = assist_on.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert (sent["body"]["model"], sent["body"]["temperature"]) == ("fake-model", 0.2)
    prompt = assist_on.last_prompt()
    assert "how many events are there?" in prompt
    assert '"table_name":"events"' in prompt and '"type":"decimal(12,2)"' in prompt
    assert '"n0"' in prompt and '"row_count":5' in prompt  # sample rows and counts, read through the sandbox
    # the suggestion is only a suggestion: the user runs it through the normal query path
    assert (await query_ok(client, headers, response.json()["sql"]))["rows"] == [[5]]


@pytest.mark.parametrize(("answer", "code", "refusal"), [
    ("SELECT * FROM read_csv('/etc/passwd')", "SQL_NOT_ALLOWED", "read_csv"),
    ("```sql\nSELECT * FROM payroll\n```", "TABLE_NOT_FOUND", "'payroll' not found"),
    ("SELECT 1; DROP TABLE events", "SQL_NOT_ALLOWED", "one statement"),
    ("COPY events TO '/tmp/leak.csv'", "SQL_NOT_ALLOWED", "only SELECT"),
])
async def test_an_answer_that_would_escape_the_sandbox_is_flagged_and_never_run(
    ctx: QueryCtx, assist_on: FakeOpenAI, pool: CatalogPool, make_key: KeyMaker, answer: str, code: str,
    refusal: str, app_context: AppContext,
) -> None:
    client, headers, _ = ctx
    await _events(ctx)
    other = await make_key("other")
    await create_table(client, other, "payroll")
    assist_on.answer(answer)

    response = await translate(client, headers, "show me everything")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sandbox_ok"] is False and body["sandbox_error_code"] == code
    assert body["referenced_tables"] == []
    assert refusal in body["warnings"][0]
    assert "root:" not in response.text
    await app_context.query.audit.flush()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM query_audit WHERE sql_hash = %s",
                                 (hashlib.sha256(body["sql"].encode()).hexdigest(),))
        assert (await cur.fetchone() or {})["n"] == 0, "translate must never execute the suggestion"
    assert (await query_ok(client, headers, "SELECT count(*) FROM events"))["rows"] == [[5]]


async def test_the_prompt_never_carries_another_tenants_tables_or_rows(
    ctx: QueryCtx, assist_on: FakeOpenAI, make_key: KeyMaker
) -> None:
    client, headers, coordinator = ctx
    await _events(ctx)
    other = await make_key("other")
    await create_table(client, other, "secret_payroll", columns=[{"name": "salary_note", "type": "string"}])
    stored = await client.post("/v1/ingest/secret_payroll", headers=other, json={"records": [
        {"idempotency_key": "s1", "payload": {"salary_note": "top-secret-value"}}]})
    assert stored.status_code == 200
    await coordinator.run_once()

    assert (await translate(client, headers, "list every table you know")).status_code == 200
    mine = assist_on.last_prompt()
    assert (await translate(client, other, "list every table you know")).status_code == 200
    theirs = assist_on.last_prompt()

    assert "events" in mine
    assert "secret_payroll" not in mine and "salary_note" not in mine and "top-secret-value" not in mine
    assert "top-secret-value" in theirs and '"table_name":"events"' not in theirs


async def test_an_endpoint_that_does_not_answer_in_time_is_a_retryable_504(
    ctx: QueryCtx, assist_on: FakeOpenAI
) -> None:
    client, headers, _ = ctx
    assist_on.hang = True

    response = await translate(client, headers, "how many events?")

    assert response.status_code == 504
    assert response.json()["error_code"] == "TRANSLATE_TIMEOUT" and response.json()["retryable"] is True


@pytest.mark.parametrize(("status", "raw", "code"), [
    (503, b'{"error": {"message": "overloaded"}}', "TRANSLATE_FAILED"),
    (500, b"internal error", "TRANSLATE_FAILED"),
    (200, b"<html>not json</html>", "TRANSLATE_FAILED"),
    (200, b'{"choices": []}', "TRANSLATE_FAILED"),
    (200, b"x" * (1024 * 1024 + 1), "TRANSLATE_FAILED"),
])
async def test_an_endpoint_failure_is_a_retryable_502_naming_no_secret(
    ctx: QueryCtx, assist_on: FakeOpenAI, status: int, raw: bytes, code: str
) -> None:
    client, headers, _ = ctx
    assist_on.status, assist_on.raw = status, raw

    response = await translate(client, headers, "how many events?")

    assert response.status_code == 502, response.text
    assert response.json()["error_code"] == code and response.json()["retryable"] is True
    assert "sk-test" not in response.text
    if status >= 500:
        assert response.json()["context"]["upstream_status"] == status


@pytest.mark.parametrize("answer", [
    "Sorry, I cannot help with that.", "events", "", "```\n```", "The answer is: SELECT 1",
])
async def test_a_garbage_answer_is_refused_with_a_clear_error(
    ctx: QueryCtx, assist_on: FakeOpenAI, answer: str
) -> None:
    client, headers, _ = ctx
    assist_on.answer(answer)

    response = await translate(client, headers, "how many events?")

    assert response.status_code == 502, response.text
    assert response.json()["error_code"] == "TRANSLATE_ANSWER_INVALID"
    assert "SQL" in response.json()["message"]


async def test_translate_needs_a_prompt_and_the_query_reader_role_and_is_audited(
    ctx: QueryCtx, assist_on: FakeOpenAI, make_key: KeyMaker
) -> None:
    client, headers, _ = ctx
    blank = await translate(client, headers, "   ")
    assert (blank.status_code, blank.json()["error_code"]) == (400, "PROMPT_REQUIRED")
    writer = await make_key("acme", roles=[Role.INGEST_WRITER, Role.TABLE_ADMIN])
    assert (await translate(client, writer, "how many events?")).status_code == 403
    assert assist_on.requests == []

    assert (await translate(client, headers, "how many events?")).status_code == 200

    trail = (await client.get("/v1/audit", headers=headers)).json()["entries"]
    assert [e["details"] for e in trail if e["action"] == "query.translate"] == [{
        "model": "fake-model", "endpoint_host": "127.0.0.1", "tables_shared": 0, "status": "answered",
        "sandbox_ok": True}]
