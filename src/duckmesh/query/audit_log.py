"""The query audit, written off the request path.

Every query leaves a ``query_audit`` row (DATA_MODEL.md). Writing it inside the request cost a
catalog round trip per query; instead rows are queued in memory and a background task inserts
them in batches (one COPY per batch) every ``flush_interval`` or as soon as ``max_batch`` are
waiting. Each row keeps the time of its query. If the catalog is unreachable, rows wait (up to
``max_pending``; beyond that the oldest are dropped, counted and logged) and are written when it
answers again. A process killed outright loses at most the rows of its last interval; a clean
stop writes everything first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import astuple, dataclass
from datetime import datetime

from duckmesh.catalog.db import CatalogPool
from duckmesh.observability import metrics

log = logging.getLogger(__name__)

_COPY = (
    "COPY query_audit (tenant_id, key_id, sql_hash, snapshot_id, duration_ms, row_count, status, error_code,"
    " trace_id, created_at) FROM STDIN"
)


@dataclass(frozen=True)
class QueryAuditRow:
    tenant_id: int
    key_id: str | None
    sql_hash: str
    snapshot_id: int | None
    duration_ms: float
    row_count: int | None
    status: str
    error_code: str | None
    trace_id: str | None
    created_at: datetime


class QueryAuditLog:
    def __init__(
        self, pool: CatalogPool, *, flush_interval: float = 0.5, max_batch: int = 1000, max_pending: int = 50_000
    ) -> None:
        self._pool = pool
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._pending: deque[QueryAuditRow] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, row: QueryAuditRow) -> None:
        """Queue a row; never waits for the catalog."""
        if len(self._pending) == self._pending.maxlen:
            metrics.QUERY_AUDIT_DROPPED.inc()
            log.warning("query_audit_dropped", extra={"pending": len(self._pending)})
        self._pending.append(row)
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="query-audit")
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    async def flush(self) -> int:
        """Write every queued row now; returns how many were written."""
        written = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
            try:
                async with self._pool.connection() as conn, conn.cursor() as cur, cur.copy(_COPY) as copy:
                    for row in batch:
                        await copy.write_row(astuple(row))
            except Exception:
                self._pending.extendleft(reversed(batch))  # kept for the next attempt, oldest first
                raise
            written += len(batch)
        return written

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("query_audit_write_failed", extra={"pending": len(self._pending)}, exc_info=True)
                await asyncio.sleep(self._flush_interval)

    async def close(self) -> None:
        """Stop the background writer and write what is left (best effort)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.warning("query_audit_lost_at_stop", extra={"pending": len(self._pending)}, exc_info=True)
