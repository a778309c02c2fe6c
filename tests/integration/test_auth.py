from __future__ import annotations

import asyncio

import httpx

from duckmesh.catalog import tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import Role
from tests.conftest import KeyMaker
from tests.helpers import accepted_records, create_table, records


async def test_missing_invalid_and_revoked_keys_get_401(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    missing = await client.get("/v1/tables")
    assert missing.status_code == 401 and missing.json()["error_code"] == "UNAUTHORIZED"
    invalid = await client.get("/v1/tables", headers={"Authorization": "Bearer dm_0123456789abcdef_notthekey000000000"})
    assert invalid.status_code == 401
    headers = await make_key()
    assert (await client.get("/v1/tables", headers=headers)).status_code == 200
    key = headers["Authorization"].removeprefix("Bearer ")
    key_id = tenants.key_id_of(key)
    assert key_id is not None
    async with pool.connection() as conn:  # revoked by another process (the CLI): NOTIFY reaches this one
        await tenants.revoke_key(conn, key_id)
    await until_refused(client, headers)
    assert (await client.get("/v1/tables", headers={"X-API-Key": key})).status_code == 401


async def until_refused(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Wait until the revocation's notification reached this process (far below the cache's minute)."""
    for _ in range(200):
        if (await client.get("/v1/tables", headers=headers)).status_code == 401:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the revoked key was still accepted")


async def test_x_api_key_header_is_accepted(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    key = headers["Authorization"].removeprefix("Bearer ")
    assert (await client.get("/v1/tables", headers={"X-API-Key": key})).status_code == 200


async def test_a_key_without_the_role_gets_403(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    admin = await make_key("acme", [Role.TABLE_ADMIN])
    writer = await make_key("acme", [Role.INGEST_WRITER])
    ops = await make_key("acme", [Role.OPS_ADMIN])
    await create_table(client, admin)
    assert (await client.post("/v1/tables", headers=writer, json={
        "table_name": "x", "columns": [{"name": "a", "type": "int64"}]})).status_code == 403
    denied = await client.post("/v1/ingest/events", headers=admin, json={"records": records(0, 1)})
    assert denied.status_code == 403 and denied.json()["error_code"] == "FORBIDDEN"
    assert (await client.post("/v1/ingest/events", headers=writer, json={"records": records(0, 1)})).status_code == 200
    assert (await client.get("/v1/tables", headers=ops)).status_code == 403, "ops_admin implies nothing else"
    assert (await client.get("/v1/lag", headers=ops)).status_code == 200
    assert (await client.get("/v1/lag", headers=admin)).status_code == 403


async def test_one_tenants_key_cannot_see_or_write_another_tenants_tables(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool
) -> None:
    acme = await make_key("acme")
    globex = await make_key("globex")
    await create_table(client, acme, "secrets")
    assert (await client.get("/v1/tables/secrets", headers=globex)).status_code == 404
    assert (await client.get("/v1/tables", headers=globex)).json()["tables"] == []
    write = await client.post("/v1/ingest/secrets", headers=globex, json={"records": records(0, 1)})
    assert write.status_code == 404
    async with pool.connection() as conn:
        acme_tenant = await tenants.get_tenant(conn, "acme")
    spoofed = {**globex, "X-Tenant-ID": "acme"}
    assert (await client.get("/v1/tables/secrets", headers=spoofed)).status_code == 404
    spoofed_id = {**globex, "X-Tenant-ID": str(acme_tenant.tenant_id)}
    assert (await client.post("/v1/ingest/secrets", headers=spoofed_id, json={"records": records(0, 1)})).status_code == 404
    assert await accepted_records(pool) == 0


async def test_error_bodies_do_not_leak_secrets_or_dsns(
    client: httpx.AsyncClient, make_key: KeyMaker, dsn: str
) -> None:
    response = await client.get("/v1/tables", headers={"Authorization": "Bearer dm_0123456789abcdef_secretsecretsecret"})
    assert "secretsecretsecret" not in response.text
    assert dsn not in response.text and "postgres" not in response.text.lower()
