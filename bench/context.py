"""Sizes of a run (full or quick) and what every section shares: the cluster and a logger."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from apiclient import Api
from harness import Cluster


@dataclass(frozen=True)
class Profile:
    name: str
    reps: int
    ingest_seconds: float
    rates: tuple[int, ...] = (1_000, 5_000, 20_000)
    batch: int = 100
    closed_loops: tuple[tuple[int, int], ...] = ((4, 500), (8, 100))  # (writers, records per request)
    preencode_rate: float = 100_000.0  # closed loops encode bodies for this many rec/s before the clock starts
    probes_per_second: float = 15.0
    drain_events: int = 200_000  # pre-loaded bus for the coordinator drain test
    lone_requests: int = 200  # lone writer with wait_for_visibility
    lone_batch: int = 10
    catalog_events: int = 200_000  # per variant, for the catalog size per million events
    catalog_batch: int = 100
    peer_rows: int = 100_000  # DuckLake and delta-rs, in batches of peer_batch
    peer_batch: int = 500
    peer_writers: tuple[int, ...] = (1, 4)
    baseline_rows: int = 200_000
    micro_rows: int = 1_000_000  # HTTP ingest, one file per coordinator claim
    micro_file_rows: int = 5_000
    big_rows: int = 10_000_000  # backfill chunks
    big_chunks: int = 20
    warm_samples: int = 10
    compaction_reps: int = 3
    gc_files: int = 2_000
    profile_seconds: float = 12.0
    drop_page_cache: bool = True


FULL = Profile("full", reps=3, ingest_seconds=6.0, gc_files=1_000)
QUICK = Profile(
    "quick", reps=1, ingest_seconds=0.5, preencode_rate=30_000.0, drain_events=4_000, lone_requests=10,
    catalog_events=4_000, peer_rows=4_000, baseline_rows=10_000, micro_rows=20_000, micro_file_rows=1_000,
    big_rows=100_000, big_chunks=8, warm_samples=3, compaction_reps=1, gc_files=20, profile_seconds=2.0,
    drop_page_cache=False,
)

# Every process: maintenance loops parked (runs are triggered through the API so they can be
# timed and never land inside another measurement); retention as aggressive as allowed so GC
# and bus cleanup act on everything that is no longer the head. The GC safety age must stay
# at least 4x every lease (the server refuses less), so leases are short and GC waits it out.
GC_SAFETY_SECONDS = 4
CLUSTER_SETTINGS = {
    "maintenance_compaction_interval_s": "86400",
    "maintenance_retention_interval_s": "86400",
    "maintenance_integrity_interval_s": "86400",
    "maintenance_keep_snapshots": "1",
    "maintenance_snapshot_min_age": "PT0S",
    "maintenance_gc_safety_age": f"PT{GC_SAFETY_SECONDS}S",
    "coordinator_lease_seconds": str(GC_SAFETY_SECONDS / 4),
    "maintenance_job_lease_seconds": str(GC_SAFETY_SECONDS / 4),
    "backfill_lease_seconds": str(GC_SAFETY_SECONDS / 4),
    "idempotency_window": "PT0S",
}


@dataclass
class Bench:
    cluster: Cluster
    profile: Profile
    started: float = field(default_factory=time.perf_counter)
    notes: list[str] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)  # figures the summary and service levels use
    tenants: dict[str, str] = field(default_factory=dict)  # name -> key
    bus_events: int = 0  # records accepted through HTTP ingest (for the catalog-size figure)
    results: dict[str, Any] = field(default_factory=dict)  # every measurement, as plain JSON
    parts: dict[str, str] = field(default_factory=dict)  # rendered Markdown that a later section places
    segment_bus: bool = True  # the measured DuckMesh has the columnar segment bus (ADR 0008)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def api_urls(self) -> list[str]:
        return [p.url for p in self.cluster.running("api")]

    def tenant(self, name: str) -> str:
        key = self.cluster.create_tenant(name)
        self.tenants[name] = key
        return key

    def api(self, key: str) -> Api:
        return Api(self.api_urls()[0], key)
