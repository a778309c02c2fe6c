"""Tenants and API keys. Only a SHA-256 hash of a key is stored; the key is shown once."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import Role, TenantId
from duckmesh.errors import NotFound, TenantExists, TenantNotFound, Unauthorized

_KEY_FORMAT = re.compile(r"^dm_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})$")


@dataclass(frozen=True)
class Tenant:
    tenant_id: TenantId
    name: str
    status: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Tenant:
        return cls(TenantId(row["tenant_id"]), row["name"], row["status"], row["created_at"])


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant_id: TenantId
    roles: tuple[Role, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            row["key_id"], TenantId(row["tenant_id"]), tuple(Role(r) for r in row["roles"]),
            row["created_at"], row["revoked_at"], row["last_used_at"],
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant always comes from the key."""

    tenant_id: TenantId
    key_id: str | None
    roles: frozenset[Role]


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str:
    """Generated keys carry their id; an operator-chosen key is looked up by a hash prefix."""
    match = _KEY_FORMAT.match(key)
    return match.group(1) if match else "h" + hashlib.sha256(key.encode()).hexdigest()[:15]


def new_key() -> str:
    return f"dm_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


async def create_tenant(conn: AsyncConn, name: str) -> Tenant:
    try:
        async with conn.transaction():
            cur = await conn.execute("INSERT INTO tenant (name) VALUES (%s) RETURNING *", (name,))
            row = await cur.fetchone()
            assert row is not None
            await conn.execute("INSERT INTO tenant_counter (tenant_id) VALUES (%s)", (row["tenant_id"],))
            await conn.execute("INSERT INTO tenant_head (tenant_id) VALUES (%s)", (row["tenant_id"],))
    except psycopg.errors.UniqueViolation:
        raise TenantExists(f"tenant {name!r} already exists", tenant=name) from None
    return Tenant.from_row(row)


async def get_tenant(conn: AsyncConn, name: str) -> Tenant:
    cur = await conn.execute("SELECT * FROM tenant WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None:
        raise TenantNotFound(f"tenant {name!r} does not exist", tenant=name)
    return Tenant.from_row(row)


async def ensure_tenant(conn: AsyncConn, name: str) -> Tenant:
    try:
        return await get_tenant(conn, name)
    except TenantNotFound:
        try:
            return await create_tenant(conn, name)
        except TenantExists:  # created concurrently by another process starting up
            return await get_tenant(conn, name)


async def create_key(
    conn: AsyncConn, tenant_id: TenantId, roles: Iterable[Role], key: str | None = None
) -> tuple[ApiKey, str]:
    """Store a key (a new random one unless given) and return it with its secret, once."""
    secret = key or new_key()
    cur = await conn.execute(
        "INSERT INTO api_key (key_id, tenant_id, key_hash, roles) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (key_id) DO UPDATE SET roles = EXCLUDED.roles, revoked_at = NULL"
        " WHERE api_key.key_hash = EXCLUDED.key_hash AND api_key.tenant_id = EXCLUDED.tenant_id"
        " RETURNING *",
        (key_id_of(secret), tenant_id, _hash(secret), sorted({r.value for r in roles})),
    )
    row = await cur.fetchone()
    if row is None:
        raise TenantExists("a different key with the same id already exists")
    return ApiKey.from_row(row), secret


async def revoke_key(conn: AsyncConn, key_id: str) -> ApiKey:
    cur = await conn.execute(
        "UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING *", (key_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no key {key_id!r}", key_id=key_id)
    return ApiKey.from_row(row)


async def list_keys(conn: AsyncConn, tenant_id: TenantId) -> list[ApiKey]:
    cur = await conn.execute("SELECT * FROM api_key WHERE tenant_id = %s ORDER BY created_at", (tenant_id,))
    return [ApiKey.from_row(row) for row in await cur.fetchall()]


async def authenticate(conn: AsyncConn, presented: str) -> Principal:
    """Resolve a presented key to its principal; any failure is the same 401."""
    # One round trip: look the key up and touch last_used_at at most once a minute.
    cur = await conn.execute(
        "WITH k AS ("
        "  SELECT k.key_id, k.tenant_id, k.key_hash, k.roles, k.last_used_at"
        "  FROM api_key k JOIN tenant t USING (tenant_id)"
        "  WHERE k.key_id = %s AND k.revoked_at IS NULL AND t.status = 'active'),"
        " touched AS ("
        "  UPDATE api_key SET last_used_at = now() FROM k WHERE api_key.key_id = k.key_id"
        "  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds'))"
        " SELECT key_id, tenant_id, key_hash, roles FROM k",
        (key_id_of(presented),),
    )
    row = await cur.fetchone()
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), _hash(presented)):
        raise Unauthorized("missing, invalid or revoked API key")
    return Principal(TenantId(row["tenant_id"]), row["key_id"], frozenset(Role(r) for r in row["roles"]))
