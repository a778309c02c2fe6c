"""API keys (issue 11, finding 7, and key management): salted storage with random ids, expiry,
revocation that reaches every server at once, bootstrap that never re-activates, management over
HTTP for ops_admin (audited in the same transaction) and in the CLI."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext, OpsContext
from duckmesh.catalog import keys, migrate, tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.config import Settings, strong_key
from duckmesh.domain import ALL_ROLES, Role
from duckmesh.errors import Unauthorized
from tests.conftest import KeyMaker, make_settings


async def audit_actions(pool: CatalogPool, tenant_id: int) -> list[tuple[str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT action, object_id FROM admin_audit WHERE tenant_id = %s ORDER BY audit_id",
                                 (tenant_id,))
        return [(row["action"], row["object_id"]) for row in await cur.fetchall()]


async def test_ops_admin_creates_lists_and_revokes_keys_over_http_and_each_change_is_audited(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    ops = await make_key("acme", roles=[Role.OPS_ADMIN])
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    created = await client.post("/v1/keys", headers=ops, json={"roles": ["query_reader"], "expires_at": expires})
    assert created.status_code == 201, created.text
    new = created.json()
    reader = {"Authorization": f"Bearer {new['key']}"}
    assert (await client.post("/v1/query", headers=reader, json={"sql": "SELECT 1"})).status_code == 200
    listed = (await client.get("/v1/keys", headers=ops)).json()["keys"]
    mine = next(k for k in listed if k["key_id"] == new["key_id"])
    assert mine["roles"] == ["query_reader"] and mine["expires_at"] and mine["last_used_at"] and not mine["revoked_at"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    revoked = await client.delete(f"/v1/keys/{new['key_id']}", headers=ops)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert (await client.post("/v1/query", headers=reader, json={"sql": "SELECT 1"})).status_code == 401
    actions = await audit_actions(pool, new["tenant_id"])
    assert ("key.create", new["key_id"]) in actions and ("key.revoke", new["key_id"]) in actions


async def test_key_management_needs_ops_admin_and_stays_within_the_tenant(
    client: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    reader = await make_key("acme", roles=[Role.QUERY_READER])
    assert (await client.post("/v1/keys", headers=reader, json={"roles": ["ops_admin"]})).status_code == 403
    other = await make_key("globex", roles=[Role.OPS_ADMIN])
    theirs = (await client.post("/v1/keys", headers=other, json={"roles": ["query_reader"]})).json()
    acme_ops = await make_key("acme", roles=[Role.OPS_ADMIN])
    assert (await client.delete(f"/v1/keys/{theirs['key_id']}", headers=acme_ops)).status_code == 404
    assert theirs["key_id"] not in {k["key_id"] for k in (await client.get("/v1/keys", headers=acme_ops)).json()["keys"]}
    for body in ({"roles": []}, {"roles": ["root"]}, {"roles": ["query_reader"], "expires_at": "2001-01-01T00:00:00Z"},
                 {"roles": ["query_reader"], "extra": 1}):
        answer = await client.post("/v1/keys", headers=acme_ops, json=body)
        assert answer.status_code == 400, (body, answer.text)


async def test_an_expired_key_is_refused(client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool) -> None:
    ops = await make_key("acme", roles=[Role.OPS_ADMIN])
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    key = (await client.post("/v1/keys", headers=ops, json={"roles": ["query_reader"], "expires_at": soon})).json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert (await client.get("/v1/tables", headers=headers)).status_code == 200
    async with pool.connection() as conn:  # expire it now rather than wait
        await conn.execute("UPDATE api_key SET expires_at = now() - interval '1 second' WHERE key_id = %s",
                           (key["key_id"],))
    await asyncio.sleep(2.1)  # the cached verification also ends at the key's expiry
    assert (await client.get("/v1/tables", headers=headers)).status_code == 401


async def test_keys_are_stored_salted_and_no_key_id_derives_from_the_key(pool: CatalogPool) -> None:
    async with pool.connection() as conn:
        tenant = await tenants.ensure_tenant(conn, "acme")
        operator, _ = await tenants.create_key(conn, tenant.tenant_id, ALL_ROLES, "correct-horse-battery-staple-42")
        generated, secret = await tenants.create_key(conn, tenant.tenant_id, ALL_ROLES)
        cur = await conn.execute("SELECT key_id, key_hash, key_salt FROM api_key")
        rows = await cur.fetchall()
        same = await tenants.create_key(conn, tenant.tenant_id, [Role.QUERY_READER], "second-operator-key-0001")
        assert (await tenants.authenticate(conn, "correct-horse-battery-staple-42")).key_id == operator.key_id
        assert (await tenants.authenticate(conn, secret)).key_id == generated.key_id
    digest = hashlib.sha256(b"correct-horse-battery-staple-42").hexdigest()
    assert digest[:15] not in operator.key_id and operator.key_id.startswith("op")
    for row in rows:
        assert len(bytes(row["key_salt"])) == 16
        assert bytes(row["key_hash"]) != hashlib.sha256(b"correct-horse-battery-staple-42").digest()
    assert same[0].key_id != operator.key_id


async def test_migration_0006_salts_existing_keys_which_keep_working(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn, target=4)
    legacy = "legacy-operator-key"
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant (name) VALUES ('acme')")
        conn.execute("INSERT INTO api_key (key_id, tenant_id, key_hash, roles) SELECT %s, tenant_id, %s, %s FROM tenant",
                     ("h" + hashlib.sha256(legacy.encode()).hexdigest()[:15], hashlib.sha256(legacy.encode()).digest(),
                      ["query_reader"]))
    migrate.upgrade(empty_dsn)
    async with CatalogPool(empty_dsn, max_size=2) as pool, pool.connection() as conn:
        principal = await tenants.authenticate(conn, legacy)
        assert principal.key_id is not None and principal.key_id.startswith("op")
        cur = await conn.execute("SELECT key_hash FROM api_key")
        row = await cur.fetchone()
    assert row is not None and bytes(row["key_hash"]) != hashlib.sha256(legacy.encode()).digest()


async def test_a_revocation_reaches_another_servers_key_cache_at_once(
    app_context: AppContext, make_key: KeyMaker, dsn: str, pool: CatalogPool
) -> None:
    """Two API servers on one catalog: a key revoked through one is refused by the other at once,
    though the other had it cached for an hour."""
    headers = await make_key("acme")
    other_keys = tenants.VerifiedKeys(ttl=3600)
    listener = Listener(dsn, (tenants.KEYS_CHANNEL,), on_notify=other_keys.on_notify, on_connect=other_keys.clear)
    await listener.start()
    other = AppContext(**{**app_context.__dict__, "keys": other_keys})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(other)),
                                     base_url="http://other") as second:
            assert (await second.get("/v1/tables", headers=headers)).status_code == 200
            assert len(other_keys) == 1
            key_id = tenants.key_id_of(headers["Authorization"].removeprefix("Bearer "))
            assert key_id is not None
            async with pool.connection() as conn:
                await keys.revoke(conn, key_id, actor="cli")
            for _ in range(200):
                if len(other_keys) == 0:
                    break
                await asyncio.sleep(0.025)
            assert (await second.get("/v1/tables", headers=headers)).status_code == 401
    finally:
        await listener.stop()


async def test_a_revoked_bootstrap_key_stays_revoked_across_restarts(pool: CatalogPool, dsn: str, tmp_path: Any) -> None:
    from duckmesh.cli.runtime import ProcessRole, Runtime
    from duckmesh.cli.serve import _bootstrap
    from duckmesh.storage.local import LocalObjectStore

    bootstrap_key = "operator-bootstrap-key-for-this-test-0123456789"
    settings = make_settings(catalog_dsn=dsn, bootstrap_api_key=bootstrap_key)
    store = LocalObjectStore((tmp_path / "objects").as_uri())
    runtime = Runtime(ProcessRole.UP, settings, pool, store, OpsContext(settings, pool, store))
    await _bootstrap(runtime)
    async with pool.connection() as conn:
        principal = await tenants.authenticate(conn, bootstrap_key)
        assert principal.key_id is not None
        await keys.revoke(conn, principal.key_id, actor="cli")
    await _bootstrap(runtime)  # the next `duckmesh up`
    async with pool.connection() as conn:
        with pytest.raises(Unauthorized):
            await tenants.authenticate(conn, bootstrap_key)
    actions = await audit_actions(pool, int(principal.tenant_id))
    assert [a for a, _ in actions] == ["key.create", "key.revoke"]


def test_prod_refuses_a_weak_bootstrap_key() -> None:
    for weak in ("a", "password", "a" * 64, "abababababababababababababababab"):
        assert not strong_key(weak)
        with pytest.raises(ValueError, match="strong DUCKMESH_BOOTSTRAP_API_KEY"):
            Settings(profile="prod", catalog_dsn="postgresql://x", bootstrap_api_key=weak)
    strong = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert Settings(profile="prod", catalog_dsn="postgresql://x", bootstrap_api_key=strong).bootstrap_api_key == strong
    assert Settings(profile="dev", bootstrap_api_key="a").bootstrap_api_key == "a"  # dev keeps its shortcuts


def test_the_cli_creates_keys_with_an_expiry_lists_and_revokes_them_audited(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from duckmesh.cli import app

    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", dsn)
    runner = CliRunner()
    assert runner.invoke(app, ["tenant", "create", "acme"]).exit_code == 0
    created = runner.invoke(app, ["key", "create", "--tenant", "acme", "--role", "query_reader",
                                  "--expires-in", "2h", "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["expires_at"] and key["roles"] == ["query_reader"] and key["key"].startswith("dm_")
    listed = [json.loads(line) for line in runner.invoke(app, ["key", "list", "--tenant", "acme"]).output.splitlines()]
    assert [(k["key_id"], k["revoked_at"]) for k in listed] == [(key["key_id"], None)]
    assert "key" not in listed[0]
    assert runner.invoke(app, ["key", "revoke", key["key_id"]]).exit_code == 0
    bad = runner.invoke(app, ["key", "create", "--tenant", "acme", "--role", "query_reader", "--expires-in", "soon"])
    assert bad.exit_code != 0 and "--expires-in" in bad.output

    async def actions() -> list[tuple[str, str]]:
        async with CatalogPool(dsn, max_size=1) as pool, pool.connection() as conn:
            cur = await conn.execute("SELECT action, actor FROM admin_audit WHERE action LIKE 'key.%' ORDER BY audit_id")
            return [(row["action"], row["actor"]) for row in await cur.fetchall()]

    assert asyncio.run(actions()) == [("key.create", "cli"), ("key.revoke", "cli")]
