"""Every runbook's steps run: the ``bash runbook:<step>`` blocks of docs/runbooks/*.md are executed in
order, unchanged, by bash against real processes set up in the situation the runbook is for. Between
blocks the test plays the operator where the page says to (read a value off the output, restart a
process, repair the store) and checks that the situation is over at the end.

A changed command, option or endpoint in a runbook breaks its test; so does a renamed or missing step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool
from tests.acceptance.conftest import LOOPBACK, DuckMeshProcess, Spawner, external_settings, http_client
from tests.conftest import KeyMaker, free_port
from tests.helpers import create_table, records

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
_BLOCK = re.compile(r"^```bash runbook:([a-z0-9-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
STEP_TIMEOUT = 180.0


@dataclass(frozen=True)
class Step:
    name: str
    code: str


def steps(page: str) -> list[Step]:
    return [Step(name, code) for name, code in _BLOCK.findall((RUNBOOKS / page).read_text())]


@dataclass
class Operator:
    """Runs a runbook's steps with the environment an operator would have."""

    workdir: Path
    env: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)

    def run(self, step: Step) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step.code], env=self.env, cwd=self.workdir, capture_output=True,
            text=True, timeout=STEP_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"runbook step {step.name!r} failed ({result.returncode}):\n{step.code}\n{output}"
        self.outputs[step.name] = output
        return output

    def follow(self, page: str, before: dict[str, Callable[[], None]] | None = None,
               expected: list[str] | None = None) -> dict[str, str]:
        """Every step of ``page`` in order; ``before[name]`` is what the operator does first."""
        found = steps(page)
        assert [s.name for s in found] == expected, f"{page} steps changed: {[s.name for s in found]}"
        for step in found:
            (before or {}).get(step.name, lambda: None)()
            self.run(step)
        return self.outputs


def operator_env(settings: dict[str, str], **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DUCKMESH_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    env.update(extra)
    return env


@dataclass
class Scene:
    api: DuckMeshProcess
    headers: dict[str, str]
    key: str
    operator: Operator
    settings: Callable[..., dict[str, str]]


@pytest.fixture
def scene(spawn: Spawner, dsn: str, make_key: KeyMaker, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``await scene(**settings)``: an API process, a tenant "acme" with an all-roles key and an
    ``events`` table, and an operator whose environment points at them."""
    objects = tmp_path / "objects"
    workdir = tmp_path / "operator"
    workdir.mkdir()

    def settings(**extra: str) -> dict[str, str]:
        return external_settings(dsn, objects, **extra)

    async def make(**extra: str) -> Scene:
        api = spawn.start("api", settings=settings(**extra), name="api")
        headers = await make_key("acme")
        async with http_client(api.base_url) as http:
            await create_table(http, headers)
        key = headers["Authorization"].removeprefix("Bearer ")
        env = operator_env({
            "DUCKMESH_SERVER": api.base_url, "DUCKMESH_API_KEY": key, "DUCKMESH_CATALOG_DSN": dsn,
            "API_METRICS": api.metrics_url,
            "DUCKMESH_OBJECT_STORE_URL": objects.as_uri(),
        }, TENANT="acme")
        return Scene(api, headers, key, Operator(workdir, env), settings)

    yield make
    pid_file = workdir / "coordinator-extra.pid"  # a coordinator a runbook step started
    if pid_file.exists():
        _stop(int(pid_file.read_text().strip()))


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


async def _ingest(scene: Scene, start: int, count: int) -> int:
    async with http_client(scene.api.base_url) as http:
        token = 0
        for offset in range(start, start + count, 500):
            response = await http.post("/v1/ingest/events", headers=scene.headers,
                                       json={"records": records(offset, min(500, start + count - offset))})
            assert response.status_code == 200, response.text
            token = response.json()["max_visibility_token"]
    return token


async def _lag(scene: Scene) -> dict[str, Any]:
    async with http_client(scene.api.base_url) as http:
        response = await http.get("/v1/lag", headers=scene.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _count(base_url: str, headers: dict[str, str], token: int | None = None) -> int:
    body: dict[str, Any] = {"sql": "SELECT count(*) FROM events"}
    if token:
        body.update(min_visibility_token=token, consistency_timeout_ms=30_000)
    async with http_client(base_url) as http:
        response = await http.post("/v1/query", headers=headers, json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["rows"][0][0])


# --- the runbooks ------------------------------------------------------------------------------


def test_every_runbook_is_linked_from_the_operations_guide_names_endpoints_and_has_runnable_steps() -> None:
    pages = sorted(p.name for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    assert set(pages) == set(TESTED), "each runbook has a test below"
    operations = (ROOT / "docs" / "operations.md").read_text()
    for page in pages:
        text = (RUNBOOKS / page).read_text()
        assert f"runbooks/{page}" in operations, f"{page} is not linked from docs/operations.md"
        assert re.search(r"`(GET|POST|PUT|DELETE) /v1/", text), f"{page} names no endpoint"
        assert steps(page), f"{page} has no runnable step"
    rules = (ROOT / "deploy" / "prometheus" / "rules.yml").read_text()
    linked = re.findall(r"runbook: (docs/[^\s#]+)", rules)
    assert "docs/runbooks/ingest-lag.md" in linked
    assert [path for path in linked if not (ROOT / path).is_file()] == [], "an alert links a missing runbook"


async def test_ingest_lag_runbook_finds_the_backlog_starts_a_coordinator_and_sees_it_drained(
    scene: Callable[..., Any], dsn: str
) -> None:
    s: Scene = await scene()
    token = await _ingest(s, 0, 2000)
    spare = f"{LOOPBACK}:{free_port()}"
    nowhere = f"http://{LOOPBACK}:{free_port()}"  # no coordinator runs there
    s.operator.env.update(COORDINATOR=nowhere, COORDINATOR_METRICS=nowhere, SPARE_ADDR=spare)
    out = s.operator.follow("ingest-lag.md", expected=["measure", "coordinators", "scale", "verify"])
    assert '"pending_events": 2000' in out["measure"] and '"events"' in out["measure"]
    assert "no ready coordinator" in out["coordinators"]
    lag = await _lag(s)
    assert lag["token_lag"] == 0 and lag["latest_visibility_token"] == token
    assert await _count(s.api.base_url, s.headers, token) == 2000


async def test_stuck_leases_runbook_names_the_hung_owner_and_releasing_it_lets_another_coordinator_publish(
    scene: Callable[..., Any], spawn: Spawner, pool: CatalogPool
) -> None:
    s: Scene = await scene()
    token = await _ingest(s, 0, 500)
    # The test is the hung coordinator: it claims every event under a long lease and never publishes.
    claim = await PostgresBus(pool).claim("hung-coordinator", max_events=10_000, max_bytes=1 << 30,
                                          lease_seconds=120)
    assert claim is not None and claim.record_count == 500
    spawn.start("coordinator", name="healthy",
                settings=s.settings(coordinator_id="healthy", coordinator_lease_seconds="2"))
    s.operator.env["OWNER"] = "hung-coordinator"
    out = s.operator.follow("stuck-leases.md", expected=["inspect", "release"])
    assert '"owner": "hung-coordinator"' in out["inspect"] and '"events": 500' in out["inspect"]
    assert '"expired": false' in out["inspect"]
    assert '"events": 500' in out["release"] and "hung-coordinator" not in out["release"].split("}", 1)[1]
    assert await _count(s.api.base_url, s.headers, token) == 500
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT action, object_id FROM admin_audit WHERE action = 'leases.expire'")
        assert [(r["action"], r["object_id"]) for r in await cur.fetchall()] == [("leases.expire", "hung-coordinator")]


async def test_snapshot_publish_failures_runbook_shows_the_storage_reason_and_the_backlog_publishes_after_the_fix(
    scene: Callable[..., Any], spawn: Spawner, tmp_path: Path
) -> None:
    s: Scene = await scene()
    objects = tmp_path / "objects"
    coordinator = spawn.start("coordinator", name="coordinator", settings=s.settings(coordinator_id="c1"))
    s.operator.env["COORDINATOR"] = coordinator.base_url
    s.operator.env["COORDINATOR_METRICS"] = coordinator.metrics_url
    # The outage: the store's directory is replaced by a file, so no object can be written.
    moved = tmp_path / "objects-away"
    objects.rename(moved)
    objects.write_text("not a directory")
    token = await _ingest(s, 0, 300)
    await _until_metric(coordinator.metrics_url, 'duckmesh_snapshot_publish_failures_total{reason="storage"}')

    def repair() -> None:
        objects.unlink()
        moved.rename(objects)

    out = s.operator.follow("snapshot-publish-failures.md", {"verify": repair},
                            expected=["diagnose", "verify"])
    assert 'reason="storage"' in out["diagnose"] and "not writable" in out["diagnose"]
    assert coordinator.returncode is None, "the coordinator recovered by itself"
    assert await _count(s.api.base_url, s.headers, token) == 300


async def _until_metric(base_url: str, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with http_client(base_url) as http:
        while True:
            text = (await http.get("/v1/metrics")).text
            if any(line.startswith(needle) and not line.endswith(" 0.0") for line in text.splitlines()):
                return
            assert time.monotonic() < deadline, f"{needle} never rose"
            await asyncio.sleep(0.1)


async def test_restore_runbook_restores_a_snapshot_and_then_the_whole_catalog_from_a_backup(
    scene: Callable[..., Any], spawn: Spawner, dsn: str, admin_dsn: str, tmp_path: Path
) -> None:
    s: Scene = await scene()
    coordinator = spawn.start("coordinator", name="coordinator", settings=s.settings(coordinator_id="c1"))
    good = await _ingest(s, 0, 100)
    assert await _count(s.api.base_url, s.headers, good) == 100
    async with http_client(s.api.base_url) as http:
        good_snapshot = (await http.get("/v1/snapshots", headers=s.headers)).json()["snapshots"][0]["snapshot_id"]
    bad = await _ingest(s, 1000, 50)  # the mistake to undo
    assert await _count(s.api.base_url, s.headers, bad) == 150
    new_catalog = f"dmrestore_{uuid.uuid4().hex[:10]}"
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = new_catalog
    new_dsn = psycopg.conninfo.make_conninfo(**info)
    s.operator.env.update(SNAPSHOT_ID=str(good_snapshot), BACKUP_DIR=str(tmp_path / "backup-1"),
                          NEW_CATALOG_DSN=new_dsn)
    restored: list[DuckMeshProcess] = []

    def switch_processes() -> None:
        """Step 3 of the page: every process restarts on the restored catalog."""
        coordinator.terminate()
        s.api.terminate()
        settings = {**s.settings(), "DUCKMESH_CATALOG_DSN": new_dsn}
        restored.append(spawn.start("api", settings=settings, name="api-restored"))
        spawn.start("coordinator", settings={**settings, "DUCKMESH_COORDINATOR_ID": "c2"}, name="c-restored")
        s.operator.env["DUCKMESH_SERVER"] = restored[0].base_url

    try:
        out = s.operator.follow("restore.md", {"after-restore": switch_processes}, expected=[
            "find-snapshot", "restore-snapshot", "backup", "restore-catalog", "after-restore"])
        assert "restore drill passed" in out["backup"]
        assert await _count(restored[0].base_url, s.headers) == 100, "the restored catalog serves the restore"
        async with http_client(restored[0].base_url) as http:
            head = (await http.get("/v1/snapshots", headers=s.headers)).json()["snapshots"][0]
        assert head["kind"] == "restore"
    finally:
        spawn.close()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(new_catalog)))


async def test_compaction_rollback_runbook_brings_back_the_pre_compaction_files_with_the_same_rows(
    scene: Callable[..., Any], spawn: Spawner, pool: CatalogPool
) -> None:
    s: Scene = await scene(maintenance_compaction_min_input_files="2")
    spawn.start("coordinator", name="coordinator", settings=s.settings(coordinator_id="c1"))
    token = 0
    for batch in range(4):  # four ingest snapshots, four small files
        token = await _ingest(s, batch * 100, 100)
        await _count(s.api.base_url, s.headers, token)
    async with http_client(s.api.base_url) as http:
        compacted = await http.post("/v1/compaction/run", headers=s.headers, json={"table": "events"})
        assert compacted.status_code == 200, compacted.text
        snapshots = (await http.get("/v1/snapshots", headers=s.headers)).json()["snapshots"]
    compaction = snapshots[0]
    assert compaction["kind"] == "compaction" and compaction["tables"]["events"]["files"] == 1
    before = compaction["parent_snapshot_id"]
    s.operator.env["BEFORE"] = str(before)
    s.operator.follow("compaction-rollback.md", expected=["find", "rollback"])
    async with http_client(s.api.base_url) as http:
        head = (await http.get("/v1/snapshots", headers=s.headers)).json()["snapshots"][0]
        old = (await http.get(f"/v1/snapshots/{before}", headers=s.headers)).json()
        now = (await http.get(f"/v1/snapshots/{head['snapshot_id']}", headers=s.headers)).json()
    assert head["kind"] == "restore" and head["pinned"] is False
    assert sorted(f["path"] for f in now["files"]["events"]) == sorted(f["path"] for f in old["files"]["events"])
    assert len(now["files"]["events"]) == 4
    assert await _count(s.api.base_url, s.headers) == 400


async def test_read_only_runbook_stops_writes_keeps_queries_and_lifts_both_switches(
    scene: Callable[..., Any]
) -> None:
    s: Scene = await scene()
    await _ingest(s, 0, 10)
    observed: dict[str, int] = {}

    def expect(name: str, status: int) -> Callable[[], None]:
        def check() -> None:
            observed[name] = _write_status(s, status)
        return check

    out = s.operator.follow("read-only.md", {
        "check": expect("tenant on", 503), "global-on": expect("tenant off", 200),
        "global-off": expect("global on", 503),
    }, expected=["tenant-on", "check", "tenant-off", "global-on", "global-off"])
    observed["global off"] = _write_status(s, 200)
    assert observed == {"tenant on": 503, "tenant off": 200, "global on": 503, "global off": 200}
    assert '"read_only": true' in out["tenant-on"] and "investigating bad writes" in out["tenant-on"]
    assert "duckmesh_read_only_rejected_total" in out["check"]
    assert '"mode": "read_only"' in out["global-on"]
    assert "storage migration" in out["global-off"]
    assert await _count(s.api.base_url, s.headers) >= 0


def _write_status(s: Scene, expected: int, timeout: float = 10.0) -> int:
    """A write's status once the API applied the switch (NOTIFY, at worst its 5 s cache), or the last seen."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=s.api.base_url, trust_env=False, timeout=30) as http:
        while True:
            response = http.post("/v1/ingest/events", headers=s.headers, json={"records": records(50, 1)})
            if response.status_code == 503:
                assert response.json()["error_code"] == "READ_ONLY", response.text
            if response.status_code == expected or time.monotonic() > deadline:
                return response.status_code
            time.sleep(0.05)


TESTED = {
    "ingest-lag.md", "stuck-leases.md", "snapshot-publish-failures.md", "restore.md", "compaction-rollback.md",
    "read-only.md",
}
