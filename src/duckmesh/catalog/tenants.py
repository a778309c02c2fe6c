"""Tenants and API keys.

A key is shown once and stored as a salted hash: ``sha256(salt || sha256(key))`` with a random
per-key salt. Generated keys (``dm_<id>_<secret>``) carry 256 random bits, so a fast salted hash is
as strong as a slow KDF for them and costs microseconds per request; an operator-chosen key
(``DUCKMESH_BOOTSTRAP_API_KEY``) must be long and random in ``prod`` (``config.py``). Key ids are
random: a generated key carries its id, an operator key is found among the tenant's few operator
keys (never through anything derived from the key). Revocation NOTIFYs ``KEYS_CHANNEL`` in its
transaction so every process drops the key from its cache of verified keys at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from duckmesh.catalog.db import AsyncConn
from duckmesh.domain import Role, TenantId
from duckmesh.errors import KeyExists, NotFound, TenantExists, TenantNotFound, Unauthorized

_KEY_FORMAT = re.compile(r"dm_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})")
KEYS_CHANNEL = "duckmesh_keys"


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
    expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            row["key_id"], TenantId(row["tenant_id"]), tuple(Role(r) for r in row["roles"]),
            row["created_at"], row["revoked_at"], row["last_used_at"], row.get("expires_at"),
        )

    def to_json(self) -> dict[str, Any]:
        """What listings show: never the secret nor its hash."""
        def when(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {"key_id": self.key_id, "tenant_id": self.tenant_id, "roles": [r.value for r in self.roles],
                "created_at": when(self.created_at), "expires_at": when(self.expires_at),
                "revoked_at": when(self.revoked_at), "last_used_at": when(self.last_used_at)}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant always comes from the key."""

    tenant_id: TenantId
    key_id: str | None
    roles: frozenset[Role]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _salted(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + _digest(key)).digest()


def key_id_of(key: str) -> str | None:
    """The id a generated key carries; None for an operator-chosen key (its id is random)."""
    match = _KEY_FORMAT.fullmatch(key)
    return match.group(1) if match else None


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


_KEY_COLUMNS = ("k.key_id, k.tenant_id, k.key_hash, k.key_salt, k.roles, k.created_at, k.revoked_at,"
                " k.last_used_at, k.expires_at")


async def create_key(
    conn: AsyncConn, tenant_id: TenantId, roles: Iterable[Role], key: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key (a random one unless given) and return it with its secret, once. Never
    touches an existing key: a given key that is already stored (even revoked) is refused."""
    secret = key or new_key()
    carried = key_id_of(secret)
    if key is not None and await _matching(conn, tenant_id, secret, include_revoked=True) is not None:
        raise KeyExists("this key is already stored (revoked keys are never re-activated)")
    salt = secrets.token_bytes(16)
    try:
        cur = await conn.execute(
            "INSERT INTO api_key (key_id, tenant_id, key_hash, key_salt, roles, expires_at, key_format)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (carried or f"op{secrets.token_hex(7)}", tenant_id, _salted(salt, secret), salt,
             sorted({r.value for r in roles}), expires_at, "generated" if carried else "operator"),
        )
    except psycopg.errors.UniqueViolation:
        raise KeyExists("a different key with the same id already exists") from None
    row = await cur.fetchone()
    assert row is not None
    return ApiKey.from_row(row), secret


async def find_key(conn: AsyncConn, tenant_id: TenantId, secret: str) -> ApiKey | None:
    """The stored key (revoked or not) of the tenant whose secret is ``secret``."""
    row = await _matching(conn, tenant_id, secret, include_revoked=True)
    return None if row is None else ApiKey.from_row(row)


async def _matching(
    conn: AsyncConn, tenant_id: TenantId | None, secret: str, *, include_revoked: bool
) -> dict[str, Any] | None:
    """The row whose salted hash matches ``secret``: by the id a generated key carries, else among
    the operator keys (few: bootstrap keys), each compared in constant time."""
    carried = key_id_of(secret)
    where = ["k.key_id = %s" if carried else "k.key_format = 'operator'"]
    args: list[Any] = [carried] if carried else []
    if tenant_id is not None:
        where.append("k.tenant_id = %s")
        args.append(tenant_id)
    if not include_revoked:
        where += ["k.revoked_at IS NULL", "(k.expires_at IS NULL OR k.expires_at > now())", "t.status = 'active'"]
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_key k JOIN tenant t USING (tenant_id) WHERE {' AND '.join(where)}",
        args,
    )
    found = None
    for row in await cur.fetchall():
        if hmac.compare_digest(bytes(row["key_hash"]), _salted(bytes(row["key_salt"]), secret)):
            found = row
    return found


async def revoke_key(conn: AsyncConn, key_id: str, tenant_id: TenantId | None = None) -> ApiKey:
    """Revoke a key (of ``tenant_id`` when given) and tell every process to forget it at once."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            " AND (%s::bigint IS NULL OR tenant_id = %s) RETURNING *",
            (key_id, tenant_id, tenant_id),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no key {key_id!r}", key_id=key_id)
        await conn.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, key_id))
    return ApiKey.from_row(row)


async def list_keys(conn: AsyncConn, tenant_id: TenantId) -> list[ApiKey]:
    cur = await conn.execute("SELECT * FROM api_key WHERE tenant_id = %s ORDER BY created_at, key_id", (tenant_id,))
    return [ApiKey.from_row(row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class VerifiedKey:
    principal: Principal
    expires_at: datetime | None


async def authenticate(conn: AsyncConn, presented: str) -> Principal:
    """Resolve a presented key to its principal; any failure is the same 401."""
    return (await verify_key(conn, presented)).principal


async def verify_key(conn: AsyncConn, presented: str) -> VerifiedKey:
    row = await _matching(conn, None, presented, include_revoked=False)
    if row is None:
        raise Unauthorized("missing, invalid, expired or revoked API key")
    if row["last_used_at"] is None or (datetime.now(UTC) - row["last_used_at"]).total_seconds() > 60:
        await touch_key(conn, row["key_id"])
    principal = Principal(TenantId(row["tenant_id"]), row["key_id"], frozenset(Role(r) for r in row["roles"]))
    return VerifiedKey(principal, row["expires_at"])


async def touch_key(conn: AsyncConn, key_id: str) -> None:
    """Record a use (``last_used_at``), at most about once a minute per key and process."""
    await conn.execute("UPDATE api_key SET last_used_at = now() WHERE key_id = %s", (key_id,))


class VerifiedKeys:
    """Keys this process verified recently, so most requests skip the catalog. An entry lives at
    most ``ttl`` seconds and never past the key's expiry; a revocation (NOTIFY on ``KEYS_CHANNEL``,
    or one made in this process) drops it at once. Entries are keyed by the key's digest."""

    def __init__(self, ttl: float = 60.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[VerifiedKey, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, presented: str) -> tuple[VerifiedKey, bool] | None:
        """The cached verification and whether its use should be recorded now (once a minute)."""
        digest = _digest(presented)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            verified, cached_at, touched_at = entry
            expired = verified.expires_at is not None and verified.expires_at <= datetime.now(UTC)
            if expired or now - cached_at > self.ttl:
                del self._entries[digest]
                return None
            due = now - touched_at > 60
            if due:
                self._entries[digest] = (verified, cached_at, now)
            return verified, due

    def put(self, presented: str, verified: VerifiedKey) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._entries[_digest(presented)] = (verified, now, now)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (v, _, _) in self._entries.items() if v.principal.key_id == key_id]:
                del self._entries[digest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def on_notify(self, channel: str, payload: str) -> None:
        """A ``KEYS_CHANNEL`` notification: the payload is a revoked key's id."""
        if channel == KEYS_CHANNEL:
            self.forget(payload)

    def __len__(self) -> int:
        return len(self._entries)
