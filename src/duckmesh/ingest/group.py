"""Group commit per tenant: requests of one tenant that arrive while its accepting transaction is in
flight join the next one — one counter lock, one write, one commit for all of them.

The first request of an idle tenant is sent at once (no added latency); a request that arrives
while a transaction runs waits for it to finish and goes out with every other request that
queued meanwhile (up to ``max_records``). Each request keeps its own outcome: tokens in request
order, or the error that refused it alone (all-or-nothing per request, never per group).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from duckmesh.bus.base import IngestBus, NewSegment, PublishOutcome
from duckmesh.domain import TenantId
from duckmesh.observability import metrics


@dataclass
class _Pending:
    segment: NewSegment
    answer: asyncio.Future[PublishOutcome | Exception]


@dataclass
class _Queue:
    waiting: list[_Pending] = field(default_factory=list)
    running: asyncio.Task[None] | None = None


class GroupCommitter:
    def __init__(self, bus: IngestBus, *, max_records: int = 50_000) -> None:
        self._bus = bus
        self._max_records = max_records
        self._queues: dict[TenantId, _Queue] = {}

    async def submit(self, tenant_id: TenantId, segment: NewSegment) -> PublishOutcome | Exception:
        queue = self._queues.setdefault(tenant_id, _Queue())
        answer: asyncio.Future[PublishOutcome | Exception] = asyncio.get_running_loop().create_future()
        queue.waiting.append(_Pending(segment, answer))
        if queue.running is None or queue.running.done():
            queue.running = asyncio.create_task(self._drain(tenant_id, queue), name=f"group-commit-{tenant_id}")
        # Shielded: a client that goes away does not cancel a transaction other requests share.
        return await asyncio.shield(answer)

    async def _drain(self, tenant_id: TenantId, queue: _Queue) -> None:
        while queue.waiting:
            group = self._take(queue)
            metrics.INGEST_GROUP_SIZE.observe(len(group))
            try:
                outcomes: Sequence[PublishOutcome | Exception] = await self._bus.publish(
                    tenant_id, [p.segment for p in group])
            except Exception as exc:  # the whole transaction failed: every request of it did
                outcomes = [exc] * len(group)
            for pending, outcome in zip(group, outcomes, strict=True):
                if not pending.answer.done():
                    pending.answer.set_result(outcome)
        if not queue.waiting and self._queues.get(tenant_id) is queue:
            with contextlib.suppress(KeyError):
                del self._queues[tenant_id]

    def _take(self, queue: _Queue) -> list[_Pending]:
        group: list[_Pending] = []
        records = 0
        while queue.waiting and (not group or records + queue.waiting[0].segment.record_count <= self._max_records):
            pending = queue.waiting.pop(0)
            group.append(pending)
            records += pending.segment.record_count
        return group
