"""CLI commands that could hurt refuse to, and every failure is one clear line (no traceback)."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg

from duckmesh.catalog.db import CatalogPool
from duckmesh.storage.local import LocalObjectStore
from tests.acceptance.conftest import LOOPBACK, Spawner, external_settings
from tests.conftest import QueryCtx, free_port
from tests.helpers import create_table, records


def one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr


def has_catalog(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('ingest_segment') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_migrate_down_needs_an_explicit_target_and_yes(spawn: Spawner, dsn: str) -> None:
    catalog = {"DUCKMESH_CATALOG_DSN": dsn}
    no_target = spawn.run("migrate", "down", "--yes", settings=catalog)
    assert no_target.returncode == 2 and "--target" in no_target.stderr
    no_yes = spawn.run("migrate", "down", "--target", "0", settings=catalog)
    assert no_yes.returncode == 1
    one_line_error(no_yes.stderr, "--yes")
    assert has_catalog(dsn)


def test_migrate_down_refuses_while_a_server_is_connected(spawn: Spawner, dsn: str, tmp_path: Path) -> None:
    api = spawn.start("api", settings=external_settings(dsn, tmp_path / "objects"))
    refused = spawn.run("migrate", "down", "--target", "0", "--yes", settings={"DUCKMESH_CATALOG_DSN": dsn})
    assert refused.returncode == 1
    one_line_error(refused.stderr, "connected", "duckmesh-api")
    assert has_catalog(dsn)
    assert api.terminate() == 0
    done = spawn.run("migrate", "down", "--target", "0", "--yes", settings={"DUCKMESH_CATALOG_DSN": dsn})
    assert done.returncode == 0, done.stderr
    assert not has_catalog(dsn)


def test_migrate_against_an_unreachable_catalog_is_one_clear_line(spawn: Spawner) -> None:
    nowhere = {"DUCKMESH_CATALOG_DSN": f"postgresql://nobody@{LOOPBACK}:{free_port()}/none"}
    for args in (("migrate", "up"), ("migrate", "status"), ("migrate", "down", "--target", "0", "--yes"),
                 ("tenant", "create", "x")):
        result = spawn.run(*args, settings=nowhere)
        assert result.returncode == 1, (args, result.stderr)
        one_line_error(result.stderr, "CATALOG_UNAVAILABLE")


def test_a_second_up_on_a_busy_port_fails_before_printing_a_banner(
    spawn: Spawner, dsn: str, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        addr = f"{LOOPBACK}:{busy.getsockname()[1]}"
        settings = {**external_settings(dsn, tmp_path / "objects"), "DUCKMESH_HTTP_ADDR": addr}
        result = spawn.run("up", settings=settings, timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""  # no banner, no key
    one_line_error(result.stderr, addr)


async def test_integrity_run_prints_each_bad_file_and_exits_1(
    spawn: Spawner, dsn: str, ctx: QueryCtx, pool: CatalogPool, object_dir: Path
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    response = await client.post("/v1/ingest/events", headers=headers, json={"records": records(0, 5)})
    assert response.status_code == 200, response.text
    await coordinator.run_once()
    store = LocalObjectStore(object_dir.as_uri())
    [stored] = [o.key for o in store.list("")]
    store.delete(stored)
    settings = {"DUCKMESH_CATALOG_DSN": dsn, "DUCKMESH_OBJECT_STORE_URL": object_dir.as_uri()}
    result = spawn.run("integrity", "run", "--tenant", "acme", settings=settings)
    assert result.returncode == 1
    assert f"bad file {stored}" in result.stderr and "missing" in result.stderr, result.stderr
    assert "error: INTEGRITY_CHECK_FAILED" in result.stderr and "Traceback" not in result.stderr
