"""Prometheus metrics (prefix ``duckmesh_``). Label sets are bounded: tenant, table, route
template, status, reason — never user-supplied free text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# ingest
INGEST_REQUESTS = Counter("duckmesh_ingest_requests_total", "Ingest requests", ["tenant", "status"], registry=REGISTRY)
INGEST_RECORDS = Counter("duckmesh_ingest_records_total", "Records accepted", ["tenant", "table"], registry=REGISTRY)
INGEST_DUPLICATES = Counter(
    "duckmesh_ingest_duplicates_total", "Records recognised as duplicates", ["tenant", "table"], registry=REGISTRY
)
INGEST_REJECTED = Counter(
    "duckmesh_ingest_rejected_total", "Records or requests rejected", ["tenant", "reason"], registry=REGISTRY
)
INGEST_ACK_LATENCY = Histogram(
    "duckmesh_ingest_ack_latency_seconds", "Time to acknowledge an ingest request", ["tenant"],
    buckets=_LATENCY, registry=REGISTRY,
)

INGEST_GROUP_SIZE = Histogram(
    "duckmesh_ingest_group_size", "Requests accepted together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY,
)

# freshness
INGEST_LAG_EVENTS = Gauge(
    "duckmesh_ingest_lag_events", "Accepted events not yet visible", ["tenant"], registry=REGISTRY
)
VISIBILITY_LAG = Gauge(
    "duckmesh_visibility_lag_seconds", "Age of the oldest event not yet visible", ["tenant"], registry=REGISTRY
)
LATEST_VISIBILITY_TOKEN = Gauge(
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
WRITE_TO_VISIBLE = Histogram(
    "duckmesh_write_to_visible_latency_seconds", "From accept to published snapshot", ["tenant"],
    buckets=_LATENCY, registry=REGISTRY,
)
CONSISTENCY_TIMEOUTS = Counter(
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
EVENTS_FAILED = Counter("duckmesh_events_failed_total", "Events dead-lettered", ["tenant"], registry=REGISTRY)
SNAPSHOTS_PUBLISHED = Counter(
    "duckmesh_snapshots_published_total", "Snapshots published", ["tenant", "kind"], registry=REGISTRY
)
STORAGE_RETRIES = Counter("duckmesh_storage_retries_total", "Object store retries", registry=REGISTRY)

# query
QUERY_REQUESTS = Counter("duckmesh_query_requests_total", "Queries", ["tenant", "status"], registry=REGISTRY)
QUERY_LATENCY = Histogram(
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
