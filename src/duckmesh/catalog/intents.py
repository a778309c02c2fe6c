"""Write intents: the catalog's record of object keys a writer is about to publish.

A writer (coordinator, compaction, backfill) records an intent for every key before it puts the
object and keeps the intents alive together with its own lease. The commit takes (deletes) the
intents of the files it adds and refuses expired ones (``commit._take_intents``); orphan cleanup
deletes an unknown object only after expiring its intent here, under a row lock that a commit in
flight holds. Together: no writer, however long it stalls, can publish a file that GC deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.domain import TenantId
from duckmesh.errors import LeaseLost


async def record(pool: CatalogPool, tenant_id: TenantId, owner: str, paths: Sequence[str], seconds: float) -> None:
    """Before putting ``paths``: they are ``owner``'s for ``seconds`` (database clock)."""
    if not paths:
        return
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO write_intent (path, tenant_id, owner, expires_at)"
            " SELECT p, %s, %s, clock_timestamp() + make_interval(secs => %s) FROM unnest(%s::text[]) AS p",
            (tenant_id, owner, seconds, list(paths)),
        )


async def extend(pool: CatalogPool, owner: str, seconds: float, expected: int) -> None:
    """Push ``owner``'s unexpired intents forward; LeaseLost unless all ``expected`` still live."""
    if expected == 0:
        return
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE write_intent SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE owner = %s AND expires_at > clock_timestamp()",
            (seconds, owner),
        )
        if cur.rowcount != expected:
            raise LeaseLost("a write intent expired", owner=owner)


async def release(pool: CatalogPool, paths: Sequence[str]) -> None:
    """After a writer deleted objects it will never publish (an aborted commit)."""
    if paths:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM write_intent WHERE path = ANY(%s)", (list(paths),))


@dataclass(frozen=True)
class IntentView:
    """What orphan cleanup may do with unknown objects: ``live`` keys still belong to a writer;
    ``expired`` keys' writers can no longer publish them (their intents are gone now)."""

    live: frozenset[str]
    expired: frozenset[str]


async def expire_for_gc(
    conn: AsyncConn, tenant_id: TenantId, candidates: Sequence[str], *, dry_run: bool
) -> IntentView:
    """Expired intents of the tenant are deleted (a dry run only reads them); the DELETE waits for
    any commit holding one of those rows, which then either published the path or gave up."""
    cur = await conn.execute(
        "SELECT path FROM write_intent WHERE path = ANY(%s) AND expires_at > clock_timestamp()", (list(candidates),)
    )
    live = frozenset(r["path"] for r in await cur.fetchall())
    verb = "SELECT path FROM" if dry_run else "DELETE FROM"
    cur = await conn.execute(
        f"{verb} write_intent WHERE tenant_id = %s AND expires_at <= clock_timestamp()"
        + ("" if dry_run else " RETURNING path"),
        (tenant_id,),
    )
    return IntentView(live, frozenset(r["path"] for r in await cur.fetchall()))
