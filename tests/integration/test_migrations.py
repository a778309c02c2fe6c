from __future__ import annotations

import psycopg
import pytest

from duckmesh.catalog import migrate

CONTRACT_TABLES = {
    "tenant", "tenant_counter", "tenant_head", "api_key", "table_def", "table_schema_version", "ingest_segment",
    "ingest_key", "ingest_request", "ingest_dead_letter", "write_intent", "ingest_claim_batch", "snapshot", "snapshot_table_watermark", "data_file", "snapshot_file", "file_live_range",
    "snapshot_pin", "snapshot_lease", "job_lease", "compaction_run", "gc_run", "integrity_run", "query_audit",
    "admin_audit", "token_reservation", "read_only_switch",
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
    assert CONTRACT_TABLES | {"schema_migrations"} <= relations
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
    assert "WHERE (state = 'accepted'::text)" in indexes["ingest_segment_ready"]  # the claim path
    assert "(lease_until) WHERE (state = 'claimed'::text)" in indexes["ingest_segment_expired"]  # lease recovery
    assert "(tenant_id, table_id, idempotency_key)" in indexes["ingest_key_pkey"]  # the idempotency key
    assert "snapshot_id DESC" in indexes["snapshot_tenant_desc"]


def _per_event_bus(dsn: str, *states: str) -> None:
    """A catalog at version 4 (the per-event bus) with one event per state given."""
    migrate.upgrade(dsn, 4)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant (tenant_id, name) VALUES (1, 'a')")
        conn.execute("INSERT INTO table_def (table_id, tenant_id, table_name) VALUES (1, 1, 't')")
        for token, state in enumerate(states, start=1):
            conn.execute(
                "INSERT INTO ingest_event (tenant_id, table_id, idempotency_key, op, payload, payload_hash,"
                " schema_version, event_time, visibility_token, state, failure_reason)"
                " VALUES (1, 1, %s, 'insert', %s, '\\x00', 1, now(), %s, %s, %s)",
                (f"k{token}", f'{{"id": {token}}}', token, state, "poison" if state == "failed" else None),
            )


def test_the_segment_bus_migration_keeps_idempotency_keys_and_dead_letters(empty_dsn: str) -> None:
    _per_event_bus(empty_dsn, "committed", "failed")
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        keys = conn.execute("SELECT idempotency_key, payload_hash, token FROM ingest_key ORDER BY token").fetchall()
        dead = conn.execute("SELECT visibility_token, payload::text, failure_reason FROM ingest_dead_letter").fetchall()
    assert keys == [("k1", None, 1), ("k2", None, 2)], "a carried-over key matches any retry"
    assert dead == [(2, '{"id": 2}', "poison")]


def test_the_segment_bus_migration_refuses_a_bus_that_still_holds_unresolved_events(empty_dsn: str) -> None:
    _per_event_bus(empty_dsn, "committed", "accepted")
    with pytest.raises(psycopg.errors.RaiseException, match="drain"):
        migrate.upgrade(empty_dsn)
    assert migrate.status(empty_dsn)["current"] == 4, "nothing of the migration stayed"
