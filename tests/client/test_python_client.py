"""The Python client (``duckmesh.client``), sync and async, against a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from duckmesh.api.context import AppContext
from duckmesh.client import AsyncClient, Client, RetryPolicy
from duckmesh.client.files import file_identity
from duckmesh.errors import ClientConfigError, RemoteError
from tests.client.conftest import LiveServer, serve
from tests.helpers import create_table

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def payloads(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"n{i}", "amount": f"{i}.25", "at": "2024-05-01T12:00:00Z"}
            for i in range(start, start + count)]


async def make_table(live: LiveServer, primary_key: list[str] | None = None) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        await create_table(http, live.headers, primary_key=primary_key)


class LoseAnswers(httpx.AsyncBaseTransport):
    """Delivers ingest requests to the server, then drops the first ``count`` answers (a lost response)."""

    def __init__(self, count: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.count = count
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.startswith("/v1/ingest/") and self.lost < self.count:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_async_retries_after_a_lost_answer_store_each_row_once(live_server: LiveServer, tmp_path: Path) -> None:
    await make_table(live_server)
    source = tmp_path / "events.ndjson"
    source.write_text("".join(json.dumps(p) + "\n" for p in payloads(900)))
    transport = LoseAnswers(count=2)
    async with AsyncClient(live_server.url, live_server.key, retry=FAST_RETRY, transport=transport) as client:
        summary = await client.ingest_file("events", source, batch_rows=300)
        assert transport.lost == 2 and summary.retries == 2
        assert summary.rows == 900 and summary.accepted + summary.duplicates == 900
        # the first request's answer was lost twice: its two retries found all 300 rows already stored
        assert summary.duplicates == 300
        await client.wait_for_token(summary.last_token)
        result = await client.query("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM events")
    assert result.dicts() == [{"n": 900, "ids": 900}]


async def test_a_copy_of_a_loaded_file_is_recognized_by_its_content_and_stores_nothing(
    live_server: LiveServer, tmp_path: Path
) -> None:
    await make_table(live_server)
    source = tmp_path / "events.ndjson"
    source.write_text("".join(json.dumps(p) + "\n" for p in payloads(40)))
    copy = tmp_path / "elsewhere" / "renamed.ndjson"
    copy.parent.mkdir()
    copy.write_bytes(source.read_bytes())
    assert file_identity(source) == file_identity(copy)
    async with AsyncClient(live_server.url, live_server.key, retry=FAST_RETRY) as client:
        first = await client.ingest_file("events", source)
        second = await client.ingest_file("events", copy)
    assert (first.accepted, second.accepted, second.duplicates) == (40, 0, 40)
    assert second.last_token == first.last_token


async def test_the_sync_client_loads_queries_and_waits_like_the_async_one(
    live_server: LiveServer, tmp_path: Path
) -> None:
    await make_table(live_server, primary_key=["id"])

    def work() -> tuple[Any, ...]:
        with Client(live_server.url, live_server.key, retry=FAST_RETRY) as client:
            loaded = client.ingest_rows("events", payloads(25), key_prefix="job-1", op="upsert", batch_rows=10)
            again = client.ingest_rows("events", payloads(25), key_prefix="job-1", op="upsert", batch_rows=10)
            snapshot = client.wait_for_token(again.last_token, timeout=30)
            rows = client.query("SELECT count(*) FROM events").rows
            arrow = client.query_arrow("SELECT id FROM events ORDER BY id")
            tables = [t["table_name"] for t in client.tables()]
            return loaded, again, snapshot, rows, arrow, tables

    loaded, again, snapshot, rows, arrow, tables = await asyncio.to_thread(work)
    assert (loaded.requests, loaded.accepted, again.accepted, again.duplicates) == (3, 25, 0, 25)
    assert snapshot is not None and rows == [[25]] and tables == ["events"]
    assert arrow.column("id").to_pylist() == list(range(25))


async def test_a_batch_over_the_servers_body_limit_is_split_and_still_stored_once(
    live_server: LiveServer, context_with: Callable[..., AppContext]
) -> None:
    await make_table(live_server)
    async with serve(context_with(max_body_bytes=4096)) as small_url, \
            AsyncClient(small_url, live_server.key, retry=FAST_RETRY) as client:
        summary = await client.ingest_rows("events", payloads(120), key_prefix="big", batch_rows=120)
        assert summary.requests > 1 and summary.accepted == 120
        await client.wait_for_token(summary.last_token)
        assert (await client.query("SELECT count(*) FROM events")).rows == [[120]]


async def test_errors_carry_the_servers_code_status_and_context(live_server: LiveServer) -> None:
    await make_table(live_server)
    async with AsyncClient(live_server.url, live_server.key, retry=FAST_RETRY) as client:
        with pytest.raises(RemoteError) as bad:
            await client.ingest("events", [{"idempotency_key": "k", "payload": {"id": "x"}}])
        assert bad.value.server_code == "VALIDATION_FAILED" and bad.value.status == 400
        assert bad.value.context["errors"][0]["index"] == 0 and bad.value.trace_id
        with pytest.raises(RemoteError) as timeout:
            await client.wait_for_token(10**9, timeout=0.1)
        assert timeout.value.server_code == "VISIBILITY_TOKEN_INVALID"


async def test_query_pandas_needs_pandas_or_says_how_to_get_it(live_server: LiveServer) -> None:
    async with AsyncClient(live_server.url, live_server.key) as client:
        try:
            import pandas  # noqa: F401
        except ImportError:
            with pytest.raises(ClientConfigError, match="pandas is not installed"):
                await client.query_pandas("SELECT 1 AS one")
        else:
            frame = await client.query_pandas("SELECT 1 AS one")
            assert list(frame["one"]) == [1]
