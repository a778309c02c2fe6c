"""Maintenance: GC time per file deleted, and the catalog's size per million events after bus cleanup.

GC datasets: per repetition a tenant whose table holds ``gc_files`` one-event files (the
coordinator's claim size set to 1), compacted into one file, so GC then deletes ``gc_files``
unreferenced files plus their catalog rows. Retention runs with keep 1 snapshot, minimum age 0
and safety age 0 (set on every process), so everything but the head is collectable at once.
"""

from __future__ import annotations

import time

from context import GC_SAFETY_SECONDS, Bench
from data import EVENT_COLUMNS, ingest_body
from harness import Cluster
from narrative import text
from report import count, divide, mib, secs, stat, table

GC_SCALE = 10_000  # GC time is reported per this many files
CATALOG_TABLES_SQL = (
    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC"
)


def database_size(cluster: Cluster) -> int:
    return int(cluster.query("SELECT pg_database_size(current_database())")[0][0])


def _sizes(cluster: Cluster) -> dict[str, int]:
    sizes = {name: int(size) for name, size in cluster.query(CATALOG_TABLES_SQL)}
    sizes["(database)"] = database_size(cluster)
    return sizes


def _gc_rep(bench: Bench, rep: int) -> dict[str, float]:
    files = bench.profile.gc_files
    key = bench.tenant(f"gc-{rep}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
        started = time.perf_counter()
        # One record per request: a claim never splits a request (one segment), so with the claim
        # size at one, each request becomes one file.
        for first in range(files):
            api.ingest("events", ingest_body(first, 1))
        api.wait_drained(timeout=900)
        create_s = time.perf_counter() - started
        live, dead = bench.cluster.query(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'ingest_segment'")[0]
        started = time.perf_counter()
        summary = api.compact("events")["summary"]["tables"]["events"]
        compact_s = time.perf_counter() - started
        time.sleep(GC_SAFETY_SECONDS + 0.5)  # the compacted inputs must leave the live set longer than the safety age
        started = time.perf_counter()
        gc = api.retain()["summary"]
        gc_s = time.perf_counter() - started
    bench.bus_events += files
    deleted = int(gc.get("files_deleted", 0))
    bench.log(f"  gc rep {rep + 1}: compacted {summary.get('input_files')} files in {compact_s:.2f} s,"
              f" retention deleted {deleted} files in {gc_s:.2f} s")
    return {"files": deleted, "seconds": gc_s, "compact_files": float(summary.get("input_files", 0)),
            "compact_s": compact_s, "snapshots": float(gc.get("snapshots_expired", 0)),
            "create_rate": files / create_s, "bus_live": float(live), "bus_dead": float(dead)}


def run(bench: Bench) -> str:
    cluster = bench.cluster
    bench.log(f"maintenance: GC of {bench.profile.gc_files:,} files per repetition")
    cluster.scale("coordinator", 1, coordinator_max_batch_events="1")
    tenants_before = set(bench.tenants)
    reps = [_gc_rep(bench, rep) for rep in range(bench.profile.reps)]
    cluster.scale("coordinator", 1)
    bench.log("maintenance: retention (bus cleanup) on every tenant, catalog sizes")
    before = _sizes(cluster)
    totals: dict[str, float] = {"events": 0, "files": 0, "seconds": 0, "snapshots": 0}
    for name in sorted(tenants_before):
        with bench.api(bench.tenants[name]) as api:
            started = time.perf_counter()
            summary = api.retain()["summary"]
            totals["seconds"] += time.perf_counter() - started
        totals["events"] += summary.get("events_deleted", 0)
        totals["files"] += summary.get("files_deleted", 0)
        totals["snapshots"] += summary.get("snapshots_expired", 0)
    after = _sizes(cluster)
    cluster.execute("VACUUM FULL")
    vacuumed = _sizes(cluster)
    counts = {name: int(cluster.query(f"SELECT count(*) FROM {name}")[0][0])
              for name in ("ingest_segment", "ingest_key", "snapshot", "data_file", "file_live_range", "snapshot_file",
                           "query_audit", "admin_audit")}
    bench.results["maintenance"] = {
        "gc_per_10k_files_s": divide([r["seconds"] * GC_SCALE for r in reps], [r["files"] for r in reps]),
        "gc_create_rate": [r["create_rate"] for r in reps], "bus_live": [r["bus_live"] for r in reps],
        "bus_dead": [r["bus_dead"] for r in reps], "catalog_before": before, "catalog_after": after,
        "catalog_vacuumed": vacuumed,
    }
    return _markdown(bench, reps, totals, before, after, vacuumed, counts, len(tenants_before))


def _markdown(bench: Bench, reps: list[dict[str, float]], totals: dict[str, float], before: dict[str, int],
              after: dict[str, int], vacuumed: dict[str, int], counts: dict[str, int], tenants: int) -> str:
    per = f"{GC_SCALE // 1000}k"
    gc_rows = [[
        text("gc_row", files=count(reps[0]["files"])),
        stat([r["seconds"] for r in reps], secs),
        stat(divide([r["seconds"] * GC_SCALE for r in reps], [r["files"] for r in reps]), secs),
        stat([r["compact_s"] for r in reps], secs),
    ]]
    if totals["files"]:
        gc_rows.append([text("gc_others", tenants=str(tenants), files=count(totals["files"]),
                             events=count(totals["events"])), secs(totals["seconds"]), "", ""])
    empty = int(bench.results.get("catalog_empty", 0))
    top = sorted((n for n in after if n != "(database)"), key=lambda n: -after[n])[:8]
    size_rows = [[n, mib(before.get(n, 0)), mib(after.get(n, 0)), mib(vacuumed.get(n, 0))] for n in top]
    size_rows.append([text("whole_catalog"), mib(before["(database)"] - empty), mib(after["(database)"] - empty),
                      mib(vacuumed["(database)"] - empty)])
    return (
        "### Garbage collection\n\n"
        + table(["GC run", "time", f"time per {per} files", "compaction before it"], gc_rows)
        + "\n" + text("gc", files=count(bench.profile.gc_files), per=per) + "\n\n"
        "### Catalog after the whole run\n\n"
        + text("catalog_after_run", events=count(bench.bus_events)) + "\n\n"
        + table(["table", "before cleanup", "after cleanup", "after VACUUM FULL"], size_rows)
        + "\n" + text("catalog_empty", empty=mib(empty)) + "\n\n"
        + text("rows_left", counts=", ".join(f"{n} {count(v)}" for n, v in counts.items())) + "\n"
    )
