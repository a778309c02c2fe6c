"""Prometheus metrics (prefix ``duckmesh_``). Label sets are bounded: tenant, table, route
template, status, reason — never user-supplied free text.

Tenant ids and table names are the only labels a user influences (by creating tenants and
tables), so each has a budget per process: the first ``MAX_TENANT_LABELS`` tenants and
``MAX_TABLE_LABELS`` (tenant, table) pairs get their own series, later ones are counted under
``_other``. A tenant creating ten thousand tables therefore adds at most a fixed number of series.
These metrics name every tenant: they are served only on the metrics listener
(``DUCKMESH_METRICS_ADDR``, loopback by default), never on the public API.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MAX_TENANT_LABELS = 1_000
MAX_TABLE_LABELS = 5_000
OTHER = "_other"


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, value: str) -> bool:
        with self._lock:
            if value in self._seen:
                return True
            if len(self._seen) >= self.limit:
                return False
            self._seen.add(value)
            return True


_TENANTS = _Budget(MAX_TENANT_LABELS)
_TABLES = _Budget(MAX_TABLE_LABELS)


def bounded_labels(names: tuple[str, ...], values: tuple[Any, ...]) -> tuple[str, ...]:
    """The label values to use: tenant and table values past their budget become ``_other``."""
    given = dict(zip(names, (str(v) for v in values), strict=True))
    tenant = given.get("tenant")
    if tenant is not None and not _TENANTS.admit(tenant):
        given["tenant"] = OTHER
    if "table" in given and not _TABLES.admit(f"{given.get('tenant', '')}/{given['table']}"):
        given["table"] = OTHER
    return tuple(given[name] for name in names)


def _values(names: tuple[str, ...], values: tuple[Any, ...], named: dict[str, Any]) -> tuple[str, ...]:
    return bounded_labels(names, tuple(named[name] for name in names) if named else values)


class _Counter(Counter):
    def labels(self, *values: Any, **named: Any) -> _Counter:
        return Counter.labels(self, *_values(self._labelnames, values, named))


class _Gauge(Gauge):
    def labels(self, *values: Any, **named: Any) -> _Gauge:
        return Gauge.labels(self, *_values(self._labelnames, values, named))


class _Histogram(Histogram):
    def labels(self, *values: Any, **named: Any) -> _Histogram:
        return Histogram.labels(self, *_values(self._labelnames, values, named))


REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# ingest
INGEST_REQUESTS = _Counter("duckmesh_ingest_requests_total", "Ingest requests", ["tenant", "status"], registry=REGISTRY)
INGEST_RECORDS = _Counter("duckmesh_ingest_records_total", "Records accepted", ["tenant", "table"], registry=REGISTRY)
INGEST_DUPLICATES = _Counter(
    "duckmesh_ingest_duplicates_total", "Records recognised as duplicates", ["tenant", "table"], registry=REGISTRY
)
INGEST_REJECTED = _Counter(
    "duckmesh_ingest_rejected_total", "Records or requests rejected", ["tenant", "reason"], registry=REGISTRY
)
INGEST_ACK_LATENCY = _Histogram(
    "duckmesh_ingest_ack_latency_seconds", "Time to acknowledge an ingest request", ["tenant"],
    buckets=_LATENCY, registry=REGISTRY,
)

INGEST_GROUP_SIZE = Histogram(
    "duckmesh_ingest_group_size", "Requests accepted together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY,
)

# freshness
INGEST_LAG_EVENTS = _Gauge(
    "duckmesh_ingest_lag_events", "Accepted events not yet visible", ["tenant"], registry=REGISTRY
)
VISIBILITY_LAG = _Gauge(
    "duckmesh_visibility_lag_seconds", "Age of the oldest event not yet visible", ["tenant"], registry=REGISTRY
)
LATEST_VISIBILITY_TOKEN = _Gauge(
    "duckmesh_latest_visibility_token", "Watermark of the latest snapshot", ["tenant"], registry=REGISTRY
)
# Per live table, for at most TABLE_SERIES_LIMIT tables per process (the sampler's bound).
TABLE_SERIES_LIMIT = 1000
TABLE_LAG_EVENTS = Gauge(
    "duckmesh_table_lag_events", "Accepted or claimed events not yet visible, per table", ["tenant", "table"],
    registry=REGISTRY,
)
TABLE_VISIBILITY_LAG = Gauge(
    "duckmesh_table_visibility_lag_seconds", "Age of the table's oldest event not yet visible", ["tenant", "table"],
    registry=REGISTRY,
)
TABLE_VISIBILITY_TOKEN = Gauge(
    "duckmesh_table_latest_visibility_token", "The table's watermark in the head snapshot", ["tenant", "table"],
    registry=REGISTRY,
)
WRITE_TO_VISIBLE = _Histogram(
    "duckmesh_write_to_visible_latency_seconds", "From accept to published snapshot", ["tenant"],
    buckets=_LATENCY, registry=REGISTRY,
)
CONSISTENCY_TIMEOUTS = _Counter(
    "duckmesh_consistency_timeout_total", "Barrier waits that timed out", ["tenant"], registry=REGISTRY
)

# coordinator
CLAIM_BATCH_SIZE = Histogram(
    "duckmesh_claim_batch_size", "Events per claimed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000), registry=REGISTRY,
)
CLAIM_RETRIES = Counter("duckmesh_claim_retries_total", "Events handed back for another attempt", registry=REGISTRY)
COMMIT_BATCH_LATENCY = Histogram(
    "duckmesh_commit_batch_latency_seconds", "Claim to published snapshot, per batch",
    buckets=_LATENCY, registry=REGISTRY,
)
SNAPSHOT_PUBLISH_FAILURES = Counter(
    "duckmesh_snapshot_publish_failures_total", "Publications that failed", ["reason"], registry=REGISTRY
)
EVENTS_FAILED = _Counter("duckmesh_events_failed_total", "Events dead-lettered", ["tenant"], registry=REGISTRY)
SNAPSHOTS_PUBLISHED = _Counter(
    "duckmesh_snapshots_published_total", "Snapshots published", ["tenant", "kind"], registry=REGISTRY
)
STORAGE_RETRIES = Counter("duckmesh_storage_retries_total", "Object store retries", registry=REGISTRY)

# query
QUERY_REQUESTS = _Counter("duckmesh_query_requests_total", "Queries", ["tenant", "status"], registry=REGISTRY)
QUERY_AUDIT_DROPPED = Counter(
    "duckmesh_query_audit_dropped_total", "Query audit rows dropped (the catalog was unreachable too long)",
    registry=REGISTRY,
)
QUERY_LATENCY = _Histogram(
    "duckmesh_query_latency_seconds", "Query latency (server side, barrier wait included)", ["tenant"],
    buckets=_LATENCY, registry=REGISTRY,
)
QUERY_SCANNED_FILES = Histogram(
    "duckmesh_query_scanned_files", "Data files bound to a query", buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000),
    registry=REGISTRY,
)
QUERY_SCANNED_BYTES = Histogram(
    "duckmesh_query_scanned_bytes", "Bytes of data files bound to a query",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10), registry=REGISTRY,
)
QUERY_CACHE_HITS = Counter(
    "duckmesh_query_cache_hits_total", "Data files served from the local cache", registry=REGISTRY
)
QUERY_CACHE_MISSES = Counter(
    "duckmesh_query_cache_misses_total", "Data files fetched from the object store", registry=REGISTRY
)
BARRIER_WAIT = Histogram(
    "duckmesh_barrier_wait_seconds", "Time spent waiting for a visibility token", buckets=_LATENCY, registry=REGISTRY
)

# maintenance
COMPACTION_RUNS = Counter("duckmesh_compaction_runs_total", "Compaction runs", ["status"], registry=REGISTRY)
COMPACTION_BYTES = Counter(
    "duckmesh_compaction_bytes_rewritten_total", "Input bytes rewritten by compaction", registry=REGISTRY
)
GC_FILES_DELETED = Counter("duckmesh_gc_files_deleted_total", "Files deleted by GC", ["kind"], registry=REGISTRY)
GC_RUNS = Counter("duckmesh_gc_runs_total", "Retention/GC runs", ["status"], registry=REGISTRY)
INTEGRITY_RUNS = Counter("duckmesh_integrity_runs_total", "Integrity runs", ["status"], registry=REGISTRY)
INTEGRITY_FILES_CHECKED = Counter(
    "duckmesh_integrity_files_checked_total", "Files checked by integrity runs", registry=REGISTRY
)
INTEGRITY_MISSING = Counter(
    "duckmesh_integrity_missing_files_total", "Referenced files missing from the object store", registry=REGISTRY
)
INTEGRITY_SIZE_MISMATCH = Counter(
    "duckmesh_integrity_size_mismatch_files_total", "Referenced files whose size differs", registry=REGISTRY
)
INTEGRITY_CONTENT_MISMATCH = Counter(
    "duckmesh_integrity_content_mismatch_files_total", "Files whose hash or row count differs (deep)",
    registry=REGISTRY,
)

# emergency read-only mode
READ_ONLY_GLOBAL = Gauge(
    "duckmesh_read_only_global", "1 while the whole service is in read-only mode", registry=REGISTRY
)
READ_ONLY_TENANT = Gauge(
    "duckmesh_read_only_tenant", "1 while the tenant is in read-only mode (absent otherwise)", ["tenant"],
    registry=REGISTRY,
)
READ_ONLY_REJECTED = Counter(
    "duckmesh_read_only_rejected_total", "Writes refused with READ_ONLY", ["tenant", "scope"], registry=REGISTRY
)

# http
HTTP_REQUESTS = Counter(
    "duckmesh_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
HTTP_DURATION = Histogram(
    "duckmesh_http_request_duration_seconds", "HTTP request duration", ["method", "route"],
    buckets=_LATENCY, registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
