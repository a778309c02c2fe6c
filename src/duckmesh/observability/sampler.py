"""Background sampler keeping the freshness gauges current (not only when someone asks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from duckmesh.observability import metrics

log = logging.getLogger(__name__)

# Returns rows of {tenant_id, pending_events, oldest_pending_age_s, watermark}.
LagSource = Callable[[], Awaitable[list[dict[str, Any]]]]


async def run_lag_sampler(
    source: LagSource, stop: asyncio.Event, interval: float = 5.0,
    on_pending: Callable[[Any, int], None] | None = None,
) -> None:
    while not stop.is_set():
        try:
            for row in await source():
                if on_pending is not None:
                    on_pending(row["tenant_id"], int(row["pending_events"]))
                tenant = str(row["tenant_id"])
                metrics.INGEST_LAG_EVENTS.labels(tenant).set(row["pending_events"])
                metrics.VISIBILITY_LAG.labels(tenant).set(row["oldest_pending_age_s"] or 0.0)
                metrics.LATEST_VISIBILITY_TOKEN.labels(tenant).set(row["watermark"])
        except Exception:
            log.warning("lag_sampler_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
