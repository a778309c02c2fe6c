"""Backup and the restore drill: the catalog at one instant plus a manifest of every retained file's
size and SHA-256; the drill restores into a scratch database and passes only if every check does."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import backup as catalog_backup
from duckmesh.catalog import pgtools
from duckmesh.catalog.db import CatalogPool
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.errors import BackupFailed
from duckmesh.maintenance import backup, drill
from duckmesh.maintenance.backup import Method
from duckmesh.maintenance.drill import DrillReport
from duckmesh.storage.retry import RetryingObjectStore
from tests.conftest import KeyMaker
from tests.helpers import create_table, records

KV = [{"name": "id", "type": "int64", "nullable": False}, {"name": "v", "type": "string"}]


async def _populate(client: httpx.AsyncClient, make_key: KeyMaker, coordinator: Coordinator) -> None:
    """Two tenants, several snapshots, a compaction (older snapshots keep the small files), a keyed
    table with a delete, a pin and a dead letter: every kind of catalog row a backup must carry."""
    for tenant in ("acme", "globex"):
        headers = await make_key(tenant)
        await create_table(client, headers)
        await create_table(client, headers, "kv", columns=KV, primary_key=["id"])
        for batch in range(3):
            response = await client.post("/v1/ingest/events", headers=headers,
                                         json={"records": records(batch * 10, 10, prefix=f"{tenant}{batch}")})
            assert response.status_code == 200, response.text
            await coordinator.run_once()
        ops = [{"idempotency_key": f"{tenant}-kv-{i}", "op": "upsert", "payload": {"id": i, "v": f"x{i}"}}
               for i in range(5)] + [{"idempotency_key": f"{tenant}-kv-del", "op": "delete", "payload": {"id": 2}}]
        assert (await client.post("/v1/ingest/kv", headers=headers, json={"records": ops})).status_code == 200
        await coordinator.run_once()
    headers = await make_key("acme")
    compacted = await client.post("/v1/compaction/run", headers=headers, json={"table": "events"})
    assert compacted.status_code == 200, compacted.text
    snapshots = (await client.get("/v1/snapshots", headers=headers)).json()["snapshots"]
    pinned = await client.post("/v1/snapshots/pin", headers=headers,
                               json={"snapshot_id": snapshots[-1]["snapshot_id"], "reason": "evidence"})
    assert pinned.status_code == 201, pinned.text


async def _backup(dsn: str, store: RetryingObjectStore, target: Path, method: Method) -> dict[str, Any]:
    return await asyncio.to_thread(backup.create_backup, dsn, store, target, method, "test")


async def _drill(directory: Path, dsn: str, store: RetryingObjectStore, **options: Any) -> DrillReport:
    return await asyncio.to_thread(drill.restore_drill, directory, dsn, store, **options)


def _failed(report: DrillReport) -> dict[str, Any]:
    return {c.name: c.detail for c in report.checks if not c.passed}


def _table_digests(dsn: str) -> dict[str, str]:
    """Every catalog table's full content, as one digest per table."""
    with psycopg.connect(dsn) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' AND table_name <> 'integrity_run'")]
        digests = {}
        for name in names:
            row = conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                                       " FROM {} t").format(sql.Identifier(name))).fetchone()
            digests[name] = row[0] if row else ""
    return digests


def _pg_dump_available(dsn: str) -> bool:
    with catalog_backup.connect(dsn) as conn:
        return pgtools.find("pg_dump", catalog_backup.server_major(conn)) is not None


@pytest.fixture
async def populated(client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus,
                    store: RetryingObjectStore) -> None:
    await _populate(client, make_key, Coordinator(pool, bus, store, CoordinatorConfig(owner="c")))


@pytest.mark.parametrize("method", [Method.LOGICAL, Method.PG_DUMP])
async def test_a_backup_passes_the_restore_drill_and_its_manifest_names_every_retained_file(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path, method: Method
) -> None:
    if method is Method.PG_DUMP and not _pg_dump_available(dsn):
        pytest.skip("no pg_dump as new as the server on PATH or bundled with pgserver")
    manifest = await _backup(dsn, store, tmp_path / "backup", method)
    assert manifest["catalog"]["method"] == method.value and manifest["problems"] == []
    with catalog_backup.connect(dsn) as conn:
        retained = catalog_backup.retained_objects(conn)
        counts = catalog_backup.row_counts(conn, [t.name for t in catalog_backup.tables(conn)])
    assert sorted(o["path"] for o in manifest["objects"]) == sorted(f["path"] for f in retained)
    assert {o["sha256"] for o in manifest["objects"]} == {f["content_hash"] for f in retained}
    assert manifest["catalog"]["row_counts"] == counts and counts["data_file"] > len(retained) / 2
    assert any(p.name == "catalog.pgdump" for p in (tmp_path / "backup").iterdir()) == (method is Method.PG_DUMP)

    report = await _drill(tmp_path / "backup", dsn, store)
    assert report.passed, _failed(report)
    assert [c.name for c in report.checks] == [
        "manifest", "backup problems", "scratch database", "restore", "schema version", "row counts",
        "relational consistency", "manifest matches the restored catalog", "integrity", "object hashes"]
    with psycopg.connect(dsn) as conn:
        leftovers = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'duckmesh_drill_%'").fetchall()
    assert not any(report.scratch_database and name in report.scratch_database for (name,) in leftovers), \
        "the scratch database is dropped"


async def test_a_restored_catalog_equals_the_original_row_for_row(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path
) -> None:
    await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    report = await _drill(tmp_path / "backup", dsn, store, keep=True)
    assert report.passed, _failed(report)
    assert report.scratch_database is not None
    try:
        assert _table_digests(report.scratch_database) == _table_digests(dsn)
        with psycopg.connect(report.scratch_database) as conn:  # sequences continue past every restored id
            conn.execute("INSERT INTO tenant (name) VALUES ('after-restore')")
    finally:
        name = psycopg.conninfo.conninfo_to_dict(report.scratch_database)["dbname"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(name))))


async def test_a_changed_or_missing_object_makes_the_drill_fail_naming_it(
    populated: None, dsn: str, store: RetryingObjectStore, object_dir: Path, tmp_path: Path
) -> None:
    manifest = await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    altered, gone = manifest["objects"][0]["path"], manifest["objects"][-1]["path"]
    data = (object_dir / altered).read_bytes()
    (object_dir / altered).write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # same size, other bytes
    (object_dir / gone).unlink()

    report = await _drill(tmp_path / "backup", dsn, store)
    assert not report.passed
    failed = _failed(report)
    assert set(failed) == {"integrity", "object hashes"}, failed
    assert {p["path"]: p["problem"] for p in failed["object hashes"]} == {
        altered: "content differs from the manifest", gone: "missing"}
    assert [f["path"] for f in failed["integrity"]] == [gone], "shallow integrity sees the missing file"
    deep = await _drill(tmp_path / "backup", dsn, store, deep=True)
    assert sorted(f["path"] for f in _failed(deep)["integrity"]) == sorted([altered, gone])


async def test_a_backup_of_a_store_already_missing_a_file_records_the_problem_and_fails_its_drill(
    populated: None, dsn: str, store: RetryingObjectStore, object_dir: Path, tmp_path: Path
) -> None:
    with catalog_backup.connect(dsn) as conn:
        victim = catalog_backup.retained_objects(conn)[0]["path"]
    (object_dir / victim).unlink()
    manifest = await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    assert [(p["path"], p["problem"]) for p in manifest["problems"]] == [(victim, "missing")]
    report = await _drill(tmp_path / "backup", dsn, store)
    assert "backup problems" in _failed(report)


async def test_an_altered_backup_file_fails_the_restore_and_no_scratch_database_is_left(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path
) -> None:
    await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    victim = tmp_path / "backup" / "catalog" / "data_file.copy.gz"
    victim.write_bytes(victim.read_bytes()[:-8])
    report = await _drill(tmp_path / "backup", dsn, store)
    failed = _failed(report)
    assert "restore" in failed and "differs from the manifest" in failed["restore"]
    assert "row counts" not in {c.name for c in report.checks}, "nothing is checked against a failed restore"


async def test_a_directory_without_a_manifest_is_not_a_backup(dsn: str, store: RetryingObjectStore,
                                                              tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    report = await _drill(tmp_path / "half", dsn, store)
    assert not report.passed and "no manifest.json" in _failed(report)["manifest"]


async def test_backup_refuses_a_non_empty_directory_and_restore_a_non_empty_database(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path
) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("x")
    with pytest.raises(BackupFailed, match="not empty"):
        await _backup(dsn, store, tmp_path / "used", Method.LOGICAL)
    await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    with pytest.raises(BackupFailed, match="not empty"):
        await asyncio.to_thread(backup.restore_catalog, tmp_path / "backup", dsn)


def test_without_a_suitable_pg_dump_auto_falls_back_to_the_logical_export_and_pg_dump_says_why() -> None:
    assert backup._choose_tool(Method.AUTO, 999) is None
    with pytest.raises(BackupFailed, match="no pg_dump of version 999"):
        backup._choose_tool(Method.PG_DUMP, 999)
    assert pgtools.find("pg_dump", 0, search=[]) is None


async def test_restoring_a_pg_dump_backup_without_a_suitable_pg_restore_fails_with_one_clear_message(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path, empty_dsn: str
) -> None:
    if not _pg_dump_available(dsn):
        pytest.skip("no pg_dump as new as the server")
    await _backup(dsn, store, tmp_path / "backup", Method.PG_DUMP)
    path = tmp_path / "backup" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["catalog"]["tool_major"] = 999
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupFailed, match="needs pg_restore 999 or newer"):
        await asyncio.to_thread(backup.restore_catalog, tmp_path / "backup", empty_dsn)


async def test_backup_files_are_readable_by_their_owner_only(
    populated: None, dsn: str, store: RetryingObjectStore, tmp_path: Path
) -> None:
    await _backup(dsn, store, tmp_path / "backup", Method.LOGICAL)
    assert os.stat(tmp_path / "backup").st_mode & 0o077 == 0
