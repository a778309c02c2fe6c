"""SQL errors that help: DuckDB's own hints, missing tables with suggestions, hints for other dialects,
and a per-request query timeout (never above the server's cap, never marked retryable)."""

from __future__ import annotations

import dataclasses
from typing import Any

from duckmesh.api.context import AppContext
from tests.conftest import QueryCtx
from tests.helpers import create_table, post_query

BOMB = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


async def error_of(ctx: QueryCtx, sql: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    client, headers, _ = ctx
    response = await post_query(client, headers, sql, **extra)
    return response.status_code, dict(response.json())


async def test_a_missing_table_is_table_not_found_with_the_closest_names(ctx: QueryCtx) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, "events")
    status, body = await error_of(ctx, "SELECT * FROM evnts")
    assert (status, body["error_code"]) == (404, "TABLE_NOT_FOUND")
    assert body["context"]["suggestions"] == ["events"] and "did you mean 'events'" in body["message"]
    status, body = await error_of(ctx, "SELECT * FROM zzz")
    assert (status, body["context"]["suggestions"]) == (404, [])


async def test_duckdb_hints_and_the_parse_position_reach_the_caller(ctx: QueryCtx) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, "events")
    status, body = await error_of(ctx, "SELECT nme FROM events")
    assert (status, body["error_code"]) == (400, "QUERY_INVALID")
    assert "Candidate bindings" in body["message"] and '"name"' in body["message"]
    status, body = await error_of(ctx, "SELECT id FROM events WHERE")
    assert (status, body["error_code"]) == (400, "QUERY_INVALID")
    assert "Line 1, Col:" in body["context"]["reason"]  # where the parse failed


async def test_other_engines_syntax_answers_with_where_duckmesh_has_it(ctx: QueryCtx) -> None:
    client, headers, _ = ctx
    await create_table(client, headers, "events")
    for sql, code, hint in (
        ("SHOW TABLES", "SQL_NOT_ALLOWED", "/v1/tables"),
        ("DESCRIBE events", "SQL_NOT_ALLOWED", "/v1/tables/{table}"),
        ("SELECT * FROM events AT (VERSION => 3)", "SQL_NOT_ALLOWED", "snapshot_id"),
        ("SELECT * FROM events FORMAT CSV", "QUERY_INVALID", "?format="),
    ):
        status, body = await error_of(ctx, sql)
        assert (status, body["error_code"]) == (400, code), (sql, body)
        assert hint in body["context"]["hint"], (sql, body)


async def test_a_request_may_shorten_the_query_timeout_but_not_exceed_the_servers(
    ctx: QueryCtx, app_context: AppContext
) -> None:
    status, body = await error_of(ctx, BOMB, timeout_ms=200)
    assert (status, body["error_code"], body["retryable"]) == (408, "QUERY_TIMEOUT", False)
    assert body["context"]["timeout_ms"] == 200
    app_context.query.limits = dataclasses.replace(app_context.query.limits, timeout=0.3)
    status, body = await error_of(ctx, BOMB, timeout_ms=3_600_000)
    assert (status, body["context"]["timeout_ms"]) == (408, 300)
