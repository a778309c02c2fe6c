"""Background sampler keeping the freshness gauges current (not only when someone asks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from duckmesh.observability import metrics

log = logging.getLogger(__name__)

# Returns rows of {tenant_id, pending_events, oldest_pending_age_s, watermark}.
LagSource = Callable[[], Awaitable[list[dict[str, Any]]]]
# Returns rows of {tenant_id, table_name, pending_events, oldest_pending_age_s, watermark}, at most
# metrics.TABLE_SERIES_LIMIT of them (the label set stays bounded).
TableLagSource = Callable[[int], Awaitable[list[dict[str, Any]]]]
Refresh = Callable[[], Awaitable[None]]

_TABLE_GAUGES = (metrics.TABLE_LAG_EVENTS, metrics.TABLE_VISIBILITY_LAG, metrics.TABLE_VISIBILITY_TOKEN)


class _TableSeries:
    """The per-table gauges: set from each sample; series of tables no longer reported (dropped)
    are removed, so a long-running process does not export stale tables."""

    def __init__(self) -> None:
        self._exported: set[tuple[str, str]] = set()

    def update(self, rows: Sequence[dict[str, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        for row in rows[: metrics.TABLE_SERIES_LIMIT]:
            labels = (str(row["tenant_id"]), str(row["table_name"]))
            seen.add(labels)
            metrics.TABLE_LAG_EVENTS.labels(*labels).set(row["pending_events"])
            metrics.TABLE_VISIBILITY_LAG.labels(*labels).set(row["oldest_pending_age_s"] or 0.0)
            metrics.TABLE_VISIBILITY_TOKEN.labels(*labels).set(row["watermark"])
        for labels in self._exported - seen:
            for gauge in _TABLE_GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._exported = seen


async def run_lag_sampler(
    source: LagSource, stop: asyncio.Event, interval: float = 5.0,
    on_pending: Callable[[Any, int], None] | None = None,
    tables: TableLagSource | None = None,
    refresh: Sequence[Refresh] = (),
) -> None:
    """Every ``interval``: the tenant gauges from ``source``, the table gauges from ``tables``, and
    each ``refresh`` (other state whose gauges must stay current, e.g. the read-only switches)."""
    series = _TableSeries()
    while not stop.is_set():
        try:
            for row in await source():
                if on_pending is not None:
                    on_pending(row["tenant_id"], int(row["pending_events"]))
                tenant = str(row["tenant_id"])
                metrics.INGEST_LAG_EVENTS.labels(tenant).set(row["pending_events"])
                metrics.VISIBILITY_LAG.labels(tenant).set(row["oldest_pending_age_s"] or 0.0)
                metrics.LATEST_VISIBILITY_TOKEN.labels(tenant).set(row["watermark"])
            if tables is not None:
                series.update(await tables(metrics.TABLE_SERIES_LIMIT))
            for job in refresh:
                await job()
        except Exception:
            log.warning("lag_sampler_failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
