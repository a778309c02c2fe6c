from __future__ import annotations

import psycopg

from duckmesh.catalog import migrate

CONTRACT_TABLES = {
    "tenant", "tenant_counter", "tenant_head", "api_key", "table_def", "table_schema_version", "ingest_event",
    "ingest_claim_batch", "snapshot", "snapshot_table_watermark", "data_file", "snapshot_file", "file_live_range",
    "snapshot_pin", "snapshot_lease", "job_lease", "compaction_run", "gc_run", "integrity_run", "query_audit",
    "admin_audit", "token_reservation", "write_intent", "read_only_switch",
}


def _relations(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_migrating_up_from_zero_gives_the_whole_catalog(empty_dsn: str) -> None:
    assert migrate.upgrade(empty_dsn) == [m.version for m in migrate.available()]
    relations = _relations(empty_dsn)
    assert CONTRACT_TABLES | {"ingest_claim_item", "schema_migrations"} <= relations
    status = migrate.status(empty_dsn)
    assert status["current"] == status["latest"] and status["pending"] == []
    assert migrate.upgrade(empty_dsn) == [], "a second run applies nothing"


def test_migrating_down_removes_everything_and_up_again_restores_it(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn)
    migrate.downgrade(empty_dsn, 0)
    assert _relations(empty_dsn) == {"schema_migrations"}
    migrate.upgrade(empty_dsn)
    assert _relations(empty_dsn) >= CONTRACT_TABLES


def test_required_indexes_exist(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        indexes = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    assert "(state, lease_until)" in indexes["ingest_event_claim_path"]
    assert "UNIQUE" in indexes["ingest_event_idempotency"]
    assert "snapshot_id DESC" in indexes["snapshot_tenant_desc"]
