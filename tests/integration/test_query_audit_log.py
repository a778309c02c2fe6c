"""The query audit is written off the request path in batches: rows keep the time of their query,
wait while the catalog is unreachable and are written when it answers, and a bounded queue drops
(and counts) the oldest rather than growing without limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duckmesh.catalog.db import CatalogPool
from duckmesh.errors import CatalogUnavailable
from duckmesh.observability import metrics
from duckmesh.query.audit_log import QueryAuditLog, QueryAuditRow


def row(n: int, at: datetime) -> QueryAuditRow:
    return QueryAuditRow(1, "key", f"{n:064x}", None, 1.5, n, "ok", None, f"trace-{n}", at)


class FlakyPool:
    """The real pool, unreachable while ``down`` is set (as during a catalog restart)."""

    def __init__(self, pool: CatalogPool) -> None:
        self.pool = pool
        self.down = True

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        if self.down:
            raise CatalogUnavailable("catalog database is not reachable")
        async with self.pool.connection() as conn:
            yield conn


async def _stored(pool: CatalogPool) -> list[tuple[str, datetime]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT trace_id, created_at FROM query_audit ORDER BY audit_id")
        return [(r["trace_id"], r["created_at"]) for r in await cur.fetchall()]


async def test_rows_are_written_in_one_batch_with_the_time_of_their_query(pool: CatalogPool) -> None:
    log = QueryAuditLog(pool, flush_interval=60)
    asked = datetime.now(UTC) - timedelta(minutes=5)
    for n in range(3):
        log.record(row(n, asked))
    assert await _stored(pool) == [], "nothing is written on the request path"
    assert await log.flush() == 3
    assert await _stored(pool) == [(f"trace-{n}", asked) for n in range(3)]
    await log.close()


async def test_rows_wait_while_the_catalog_is_unreachable_and_a_clean_stop_writes_them(pool: CatalogPool) -> None:
    flaky = FlakyPool(pool)
    log = QueryAuditLog(flaky, flush_interval=0.01)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    for n in range(5):
        log.record(row(n, now))
    with pytest.raises(CatalogUnavailable):
        await log.flush()
    assert log.pending == 5, "a failed write keeps every row, in order"
    flaky.down = False
    await log.close()
    assert [t for t, _ in await _stored(pool)] == [f"trace-{n}" for n in range(5)]


async def test_the_queue_is_bounded_and_counts_what_it_drops(pool: CatalogPool) -> None:
    flaky = FlakyPool(pool)
    log = QueryAuditLog(flaky, flush_interval=60, max_pending=3)  # type: ignore[arg-type]
    dropped = metrics.QUERY_AUDIT_DROPPED._value.get()
    now = datetime.now(UTC)
    for n in range(5):
        log.record(row(n, now))
    assert log.pending == 3
    assert metrics.QUERY_AUDIT_DROPPED._value.get() - dropped == 2
    flaky.down = False
    await log.close()
    assert [t for t, _ in await _stored(pool)] == ["trace-2", "trace-3", "trace-4"], "the newest are kept"
