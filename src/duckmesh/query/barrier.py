"""The visibility barrier: wait until a tenant's watermark covers a token.

One LISTEN connection per process receives every publication (the NOTIFY payload carries
tenant, snapshot id and watermark), keeps the latest head per tenant in memory and wakes all
waiters; each waiter checks the in-memory head, so waiting costs no catalog query per request.
A slow poll (one head read per waiter per ``poll_interval``) is the safety net for a missed
notification.

A query waits only for the tables it reads: when the tenant watermark is behind the token (say a
backfill reservation on another table is pending), the per-table watermarks of the head snapshot
decide — read once per snapshot per process, shared by every waiter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from duckmesh.catalog import snapshots
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import SNAPSHOT_CHANNEL, Listener
from duckmesh.domain import SnapshotId, TableId, TenantId, VisibilityToken
from duckmesh.errors import ConsistencyTimeout, TenantNotFound, VisibilityTokenInvalid
from duckmesh.observability import metrics


@dataclass(frozen=True)
class VisibleHead:
    snapshot_id: SnapshotId | None
    watermark: VisibilityToken
    waited_ms: float


class VisibilityBarrier:
    def __init__(self, pool: CatalogPool, dsn: str, *, poll_interval: float = 1.0) -> None:
        self._pool = pool
        self._heads: dict[TenantId, tuple[SnapshotId, VisibilityToken]] = {}
        self._listener = Listener(dsn, (SNAPSHOT_CHANNEL,), self._on_publication)
        self._poll_interval = poll_interval
        self._table_marks: OrderedDict[SnapshotId, dict[TableId, VisibilityToken]] = OrderedDict()

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _on_publication(self, _channel: str, payload: str) -> None:
        try:
            tenant, snapshot, watermark = (int(part) for part in payload.split(":"))
        except ValueError:
            return
        self._remember(TenantId(tenant), SnapshotId(snapshot), VisibilityToken(watermark))

    def _remember(self, tenant_id: TenantId, snapshot_id: SnapshotId, watermark: VisibilityToken) -> None:
        known = self._heads.get(tenant_id)
        if known is None or snapshot_id > known[0]:
            self._heads[tenant_id] = (snapshot_id, watermark)

    async def _read_head(self, tenant_id: TenantId) -> tuple[SnapshotId | None, VisibilityToken, int]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT h.head_snapshot_id, h.max_visibility_token, c.next_visibility_token - 1 AS issued"
                " FROM tenant_head h JOIN tenant_counter c USING (tenant_id) WHERE h.tenant_id = %s",
                (tenant_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise TenantNotFound("tenant does not exist", tenant_id=tenant_id)
        if row["head_snapshot_id"] is not None:
            self._remember(tenant_id, SnapshotId(row["head_snapshot_id"]), VisibilityToken(row["max_visibility_token"]))
        return row["head_snapshot_id"], VisibilityToken(row["max_visibility_token"]), int(row["issued"])

    async def _covered(
        self, snapshot_id: SnapshotId | None, watermark: VisibilityToken, token: int, tables: Collection[TableId]
    ) -> bool:
        """Whether the head covers ``token`` for the tables read: the tenant watermark, else (when
        tables are named) each table's watermark in that snapshot."""
        if watermark >= token:
            return True
        if not tables or snapshot_id is None:
            return False
        marks = self._table_marks.get(snapshot_id)
        if marks is None:
            async with self._pool.connection() as conn:
                marks = self._table_marks[snapshot_id] = await snapshots.table_watermarks(conn, snapshot_id)
            while len(self._table_marks) > 256:
                self._table_marks.popitem(last=False)
        return all(marks.get(table_id, watermark) >= token for table_id in tables)

    async def wait(
        self, tenant_id: TenantId, token: int, timeout: float, tables: Collection[TableId] = ()
    ) -> VisibleHead:
        """Return the head once it covers ``token`` for ``tables`` (all of the tenant when none are
        named); raise ConsistencyTimeout after ``timeout`` seconds, VisibilityTokenInvalid for a
        token never issued to the tenant."""
        started = time.monotonic()
        snapshot_id, watermark, issued = await self._read_head(tenant_id)
        if token < 1 or token > issued:
            raise VisibilityTokenInvalid(
                "the token was never issued to this tenant", min_visibility_token=token, latest_issued_token=issued
            )
        deadline = started + timeout
        next_poll = started + self._poll_interval
        generation = self._listener.generation
        while not await self._covered(snapshot_id, watermark, token, tables):
            now = time.monotonic()
            if now >= deadline:
                metrics.CONSISTENCY_TIMEOUTS.labels(str(tenant_id)).inc()
                raise ConsistencyTimeout(
                    "the requested token did not become visible in time",
                    min_visibility_token=token, latest_visibility_token=watermark,
                    latest_snapshot_id=snapshot_id, waited_ms=round((now - started) * 1000),
                )
            generation = await self._listener.wait(generation, min(deadline, next_poll) - now)
            known = self._heads.get(tenant_id)
            if known is not None and (snapshot_id is None or known[0] > snapshot_id):
                snapshot_id, watermark = known
            if time.monotonic() >= next_poll:
                snapshot_id, watermark, _ = await self._read_head(tenant_id)
                next_poll = time.monotonic() + self._poll_interval
        waited = time.monotonic() - started
        metrics.BARRIER_WAIT.observe(waited)
        return VisibleHead(snapshot_id, watermark, waited * 1000)

    async def wait_for_ingest(
        self, tenant_id: TenantId, table_id: TableId, token: VisibilityToken, timeout: float
    ) -> SnapshotId:
        head = await self.wait(tenant_id, token, timeout, (table_id,))
        assert head.snapshot_id is not None
        return head.snapshot_id

    async def __aenter__(self) -> VisibilityBarrier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
