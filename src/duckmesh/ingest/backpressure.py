"""Ingest admission: per-tenant rate limit (token bucket) and a cap on unresolved events.

Both act before anything is stored, so a refused request loses nothing and can be retried
as is (429 with Retry-After). The rate limit is per API process (N processes admit up to N
times the rate); the pending cap uses the per-tenant counts the lag sampler refreshes, so it
costs no catalog query per request.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from duckmesh.domain import TenantId
from duckmesh.errors import IngestBackpressure, RateLimited


@dataclass
class _Bucket:
    rate: float
    tokens: float
    updated: float


class Admission:
    def __init__(self, *, rate_limit: float = 0.0, max_pending: int = 0, burst_seconds: float = 1.0) -> None:
        self.rate_limit = rate_limit
        self.max_pending = max_pending
        self.burst_seconds = burst_seconds
        self._buckets: dict[TenantId, _Bucket] = {}
        self._pending: dict[TenantId, int] = {}
        self._lock = threading.Lock()

    def observe_pending(self, tenant_id: TenantId, pending: int) -> None:
        """Called by the lag sampler with the tenant's unresolved event count."""
        self._pending[tenant_id] = pending

    def admit(self, tenant_id: TenantId, records: int) -> None:
        """Raise IngestBackpressure / RateLimited (429) instead of accepting ``records`` more."""
        pending = self._pending.get(tenant_id, 0)
        if self.max_pending and pending >= self.max_pending:
            raise IngestBackpressure(
                "too many accepted events are not visible yet; retry shortly",
                pending_events=pending, max_pending_events=self.max_pending, retry_after_s=2,
            )
        if self.rate_limit <= 0:
            return
        with self._lock:
            now = time.monotonic()
            capacity = self.rate_limit * self.burst_seconds
            bucket = self._buckets.setdefault(tenant_id, _Bucket(self.rate_limit, capacity, now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * bucket.rate)
            bucket.updated = now
            if records <= bucket.tokens:
                bucket.tokens -= records
                return
            wait = (records - bucket.tokens) / bucket.rate
        raise RateLimited(
            "ingest rate limit reached for this tenant", limit_records_per_s=self.rate_limit,
            retry_after_s=math.ceil(wait),
        )
