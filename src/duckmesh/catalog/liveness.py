"""Connection-bound liveness: a process is alive for the catalog while its liveness connection is.

A coordinator holds a session advisory lock on a connection of its own for as long as it runs.
PostgreSQL releases the lock the moment that connection ends — the process was killed, crashed or
lost the network — so other coordinators can take its claims over within a recovery interval
instead of waiting out the whole lease. A process that is only paused (SIGSTOP, VM suspend) keeps
its connection and its lock: its claims are taken over when the lease expires, as before.

Safety never rests on liveness: a claim is committed only while its owner, claim id and lease
still match (checked by the database clock under the rows' locks), so a process that lost its
liveness connection and keeps working publishes nothing it no longer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import psycopg

log = logging.getLogger(__name__)

# The first half of every liveness lock key ("DMLV"): keeps them apart from any other advisory lock.
NAMESPACE = 0x444D4C56
_HEARTBEAT_SECONDS = 5.0

# Claimed rows whose owner is gone: their lease expired, or the liveness lock they were claimed
# under is no longer held by any session of this database. Needs a ``live_keys`` CTE (LIVE_KEYS).
LIVE_KEYS = (
    "live_keys AS MATERIALIZED (SELECT l.objid::bigint AS key FROM pg_locks l"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    f" AND l.classid::bigint = {NAMESPACE}"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)
ABANDONED = (
    "(lease_until < clock_timestamp()"
    " OR (liveness_key IS NOT NULL AND liveness_key NOT IN (SELECT key FROM live_keys)))"
)


class Liveness:
    """Holds a random liveness key on a dedicated connection; ``key`` is None while not held.
    A lost connection is replaced with a new key (claims under the old one count as abandoned)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.key: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._held = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="catalog-liveness")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._held.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.key = None

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name="duckmesh-liveness"
                ) as conn:
                    self.key = await _take_key(conn)
                    self._held.set()
                    backoff = 0.2
                    log.info("liveness_held", extra={"liveness_key": self.key})
                    while True:
                        await asyncio.sleep(_HEARTBEAT_SECONDS)
                        await conn.execute("SELECT 1")  # notices a dead connection
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.key is not None:
                    log.warning("liveness_lost", extra={"liveness_key": self.key}, exc_info=True)
                self.key = None
                self._held.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


async def _take_key(conn: psycopg.AsyncConnection[tuple[bool]]) -> int:
    while True:
        key = secrets.randbelow(2**31 - 1) + 1
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (NAMESPACE, key))
        row = await cur.fetchone()
        if row is not None and row[0]:
            return key
