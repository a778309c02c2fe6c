"""``duckmesh demo`` against a real server, and every SQL example of docs/examples.md on its data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from duckmesh.client import AsyncClient
from tests.client.conftest import LiveServer

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", EXAMPLES.read_text(), flags=re.S)


async def test_the_demo_streams_a_funnel_and_every_documented_example_query_runs_on_it(
    live_server: LiveServer, run_cli: Any
) -> None:
    result = await run_cli("demo", "--rate", "400", "--duration", "3", server=live_server)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    found = re.search(r"last tokens \(your key's tenant\) (\d+)", result.stdout)
    assert found, result.stdout
    token = int(found.group(1))
    async with AsyncClient(live_server.url, live_server.key) as client:
        await client.wait_for_token(token)
        assert {t["table_name"] for t in await client.tables()} == {"pageviews", "signups", "purchases", "users"}
        views = (await client.query("SELECT count(*), count(DISTINCT path) FROM pageviews")).rows[0]
        assert views[0] > 100 and views[1] >= 3
        blocks = sql_blocks()
        assert len(blocks) >= 5
        for sql in blocks:
            answer = await client.query(sql)
            assert answer.row_count >= 1, sql
        funnel = (await client.query(blocks[0])).dicts()[0]
        assert funnel["landed"] >= funnel["product"] >= funnel["pricing"] >= funnel["checkout"]


async def test_the_demo_creates_isolated_demo_tenants_through_the_catalog(
    live_server: LiveServer, run_cli: Any, dsn: str
) -> None:
    result = await run_cli("demo", "--tenants", "2", "--rate", "100", "--duration", "1", server=live_server,
                           env={"DUCKMESH_CATALOG_DSN": dsn})
    assert result.returncode == 0, result.stderr
    keys = dict(re.findall(r"tenant (demo_\d): key (\S+)", result.stdout))
    assert set(keys) == {"demo_1", "demo_2"}
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for key in keys.values():
            listed = await http.get("/v1/tables", headers={"Authorization": f"Bearer {key}"})
            assert {t["table_name"] for t in listed.json()["tables"]} == {"pageviews", "signups", "purchases", "users"}
        mine = await http.get("/v1/tables", headers=live_server.headers)
        assert json.loads(mine.text)["tables"] == []  # the key's own tenant got nothing
