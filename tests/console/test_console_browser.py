"""The web console in a real browser: Debian's Chromium driven by Playwright, against a live server.

Never skipped: without /usr/bin/chromium (``make test`` installs it) the test fails. Screenshots go to
the test's tmp dir and to tests/artifacts/console/ (gitignored) for people to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from duckmesh.api.context import AppContext
from duckmesh.cli.runtime import build_query_assist
from duckmesh.domain import Role
from tests.client.conftest import LiveServer
from tests.conftest import KeyMaker, make_settings
from tests.fake_openai import running_fake_openai
from tests.helpers import create_table, records

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield launched
        await launched.close()


class Shots:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "screenshots"
        self.dir.mkdir()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Page, name: str) -> None:
        path = self.dir / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, ARTIFACTS / path.name)


async def ingest_visible(live: LiveServer, start: int, count: int) -> int:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        response = await http.post("/v1/ingest/events", headers=live.headers, json={
            "records": records(start, count), "wait_for_visibility": True, "visibility_timeout_ms": 20_000})
        assert response.status_code == 200 and response.json()["status"] == "visible", response.text
        return int(response.json()["visible_snapshot_id"])


async def run_sql(page: Page, sql: str) -> None:
    await page.fill("#sql", sql)
    await page.click("#run")


async def test_log_in_query_with_completion_time_travel_and_see_an_error(
    live_server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        await create_table(http, live_server.headers)
    first_snapshot = await ingest_visible(live_server, 0, 3)
    await ingest_visible(live_server, 3, 5)
    shots = Shots(tmp_path)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(live_server.url + "/")

    # a wrong key is refused with the server's error code; the right one logs in
    await page.fill("#key", "dm_wrong")
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_contain_text("UNAUTHORIZED")
    await page.fill("#key", live_server.key)
    await page.click("#login-form button")
    await expect(page.locator("#app")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('duckmesh.key')") == live_server.key
    await expect(page.locator("#assist")).to_be_hidden()  # query assist is off on this server

    # completion offers the tenant's tables and columns
    await page.fill("#sql", "")
    await page.type("#sql", "SELECT count(*) AS n FROM ev")
    await expect(page.locator("#complete li").first).to_contain_text("events")
    await page.keyboard.press("Tab")
    assert await page.input_value("#sql") == "SELECT count(*) AS n FROM events"
    await page.click("#run")
    await expect(page.locator("#result td")).to_have_text("8")
    await expect(page.locator("#result th")).to_contain_text("BIGINT")
    await expect(page.locator("#query-meta")).to_contain_text("1 row(s)")
    await shots.take(page, "1-query")

    # the snapshot timeline runs the query as of an older snapshot
    await page.click("nav button[data-tab=snapshots]")
    older = page.locator(f"#timeline li[data-snapshot='{first_snapshot}']")
    await expect(older).to_be_visible()
    await shots.take(page, "2-snapshots")
    await older.locator("button").click()
    await expect(page.locator("#result td")).to_have_text("3")
    await expect(page.locator("#query-meta")).to_contain_text(f"snapshot {first_snapshot}")
    await shots.take(page, "3-time-travel")

    # an error shows its error_code and message
    await page.select_option("#asof", "")
    await run_sql(page, "SELECT no_such_column FROM events")
    await expect(page.locator("#query-error")).to_contain_text("QUERY_INVALID")
    await shots.take(page, "4-error")

    # tables with schema history, freshness, dead letters, maintenance (the key has ops_admin)
    await page.click("nav button[data-tab=tables]")
    await expect(page.locator("#table-detail")).to_contain_text("Schema history")
    await shots.take(page, "5-tables")
    await page.click("nav button[data-tab=freshness]")
    await expect(page.locator("#freshness")).to_contain_text("token lag")
    await shots.take(page, "6-freshness")
    await page.click("nav button[data-tab=deadletters]")
    await expect(page.locator("#deadletters")).to_contain_text("No dead letters")
    await page.click("nav button[data-tab=maintenance]")
    await page.click("button[data-run=compaction][data-dry]")
    await expect(page.locator("#maintenance-out")).to_contain_text('"status": "completed"')
    await shots.take(page, "7-maintenance")
    assert problems == []
    assert sorted(p.name for p in shots.dir.iterdir()) == [
        "1-query.png", "2-snapshots.png", "3-time-travel.png", "4-error.png", "5-tables.png", "6-freshness.png",
        "7-maintenance.png"]


async def test_a_reader_asks_in_plain_words_sees_no_operator_tabs_and_the_console_is_self_contained(
    live_server: LiveServer, browser: Browser, make_key: KeyMaker, app_context: AppContext, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        page_html = await http.get("/")
        assert page_html.status_code == 200 and "Content-Security-Policy" in page_html.headers
        assert "http://" not in page_html.text and "https://" not in page_html.text  # no CDN
        assert (await http.get("/ui/app.js")).status_code == 200
        missing = await http.get("/ui/nope.js")
        assert missing.status_code == 404 and missing.json()["error_code"] == "NOT_FOUND"
        await create_table(http, live_server.headers)
    await ingest_visible(live_server, 0, 4)
    reader = (await make_key("acme", [Role.QUERY_READER]))["Authorization"].removeprefix("Bearer ")
    with running_fake_openai() as fake:
        app_context.assist = build_query_assist(make_settings(
            ai_translate_enabled=True, ai_base_url=fake.url, ai_model="fake-model", ai_timeout="5s"))
        fake.answer("```sql\nSELECT count(*) AS n FROM events;\n```")
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(live_server.url + "/ui/")
        await page.fill("#key", reader)
        await page.click("#login-form button")
        await expect(page.locator("#app")).to_be_visible()
        for operator_tab in ("maintenance", "freshness", "deadletters"):  # their endpoints need ops_admin
            await expect(page.locator(f"nav button[data-tab={operator_tab}]")).to_be_hidden()

        # the question becomes a suggestion in the editor, with the sandbox's verdict; the user runs it
        await page.fill("#prompt", "how many events are there?")
        await page.click("#ask")
        await expect(page.locator("#assist-meta")).to_contain_text("the sandbox accepts it")
        assert await page.input_value("#sql") == "SELECT count(*) AS n FROM events"
        assert "how many events are there?" in fake.last_prompt()
        await page.click("#run")
        await expect(page.locator("#result td")).to_have_text("4")
        await Shots(tmp_path).take(page, "8-assist")
