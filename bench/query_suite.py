"""Query: a fixed set of queries over the same Parquet files through DuckMesh and through raw DuckDB,
before and after compaction, warm and cold; and compaction itself against a raw DuckDB COPY.

Datasets (each its own tenant, tables ``events`` and ``users``):
- micro: ``micro_rows`` events through ``POST /v1/ingest`` in requests of ``micro_file_rows`` records,
  with the coordinator's claim size set to the same number, so each claim is one file;
- big: ``big_rows`` events through ``POST /v1/tables/events/backfill`` in ``big_chunks`` Parquet chunks
  (one file each).
``users`` (10,000 rows) is ingested through HTTP for micro and backfilled for big.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import load
from baselines import DUCKDB_CONFIG, RawDuckDB
from context import Bench
from data import EVENT_COLUMNS, USER_COLUMNS, USERS, events_table, ingest_body, parquet_bytes, user_body, users_table
from harness import drop_page_cache
from load import percentile
from narrative import text
from report import divide, median, mib, ms, ratio, stat, table

WARMUP = 2  # runs of each query before the timed ones
QUERIES = {
    "point filter": "SELECT id, user_id, kind, amount, \"at\" FROM events WHERE id = {point}",
    "group-by": "SELECT kind, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind ORDER BY kind",
    "top-N": "SELECT id, amount FROM events ORDER BY amount DESC, id LIMIT 10",
    "join": "SELECT u.country, count(*) AS n, sum(e.amount) AS total FROM events e JOIN users u"
            " ON e.user_id = u.user_id GROUP BY u.country ORDER BY u.country",
}


@dataclass
class Timings:
    """Per repetition: p50/p95 of the warm samples; one cold sample."""

    client_p50: list[float] = field(default_factory=list)
    client_p95: list[float] = field(default_factory=list)
    server_p50: list[float] = field(default_factory=list)  # seconds
    server_p95: list[float] = field(default_factory=list)
    raw_p50: list[float] = field(default_factory=list)
    raw_p95: list[float] = field(default_factory=list)
    cold_client: list[float] = field(default_factory=list)
    cold_server: list[float] = field(default_factory=list)
    cold_raw: list[float] = field(default_factory=list)
    files: int = 0


@dataclass
class Dataset:
    name: str
    rows: int
    tenant: str
    key: str = ""
    load_seconds: float = 0.0
    load_rows: int = 0
    states: dict[str, dict[str, Timings]] = field(default_factory=dict)
    compaction: dict[str, list[float]] = field(default_factory=dict)
    compaction_info: dict[str, float] = field(default_factory=dict)


def live_files(bench: Bench, tenant: str, table_name: str) -> list[tuple[str, int]]:
    """(absolute path, bytes) of the table's files in the tenant's head snapshot."""
    rows = bench.cluster.query(
        "SELECT f.path, f.file_size_bytes FROM file_live_range r JOIN data_file f USING (file_id)"
        " JOIN table_def t ON t.table_id = r.table_id JOIN tenant n ON n.tenant_id = r.tenant_id"
        " WHERE n.name = %s AND t.table_name = %s AND t.dropped_at IS NULL"
        "   AND r.removed_snapshot_id IS NULL ORDER BY f.min_token",
        (tenant, table_name),
    )
    return [(str(bench.cluster.objects / path), size) for path, size in rows]


# --- loading ---------------------------------------------------------------------------------------


def load_micro(bench: Bench) -> Dataset:
    profile = bench.profile
    data = Dataset("micro", profile.micro_rows, "q-micro", bench.tenant("q-micro"))
    cluster = bench.cluster
    cluster.scale("coordinator", 1, coordinator_max_batch_events=str(profile.micro_file_rows))
    with bench.api(data.key) as api:
        api.create_table("events", EVENT_COLUMNS)
        api.create_table("users", USER_COLUMNS)
        for first in range(0, USERS, 5_000):
            api.ingest("users", user_body(first, 5_000))
        api.wait_drained()
        started = time.perf_counter()
        asyncio.run(_post_all(bench, data.key, profile.micro_rows, profile.micro_file_rows))
        api.wait_drained(timeout=900)
        data.load_seconds = time.perf_counter() - started
    data.load_rows = profile.micro_rows
    bench.bus_events += profile.micro_rows + USERS
    cluster.scale("coordinator", 1)
    bench.log(f"  micro: {data.load_rows:,} rows in {data.load_seconds:.1f} s"
              f" ({len(live_files(bench, data.tenant, 'events'))} files)")
    return data


async def _post_all(bench: Bench, key: str, rows: int, per_request: int, writers: int = 2) -> None:
    batches = iter(range(0, rows, per_request))
    headers = {"Authorization": f"Bearer {key}", **load.JSON}
    async with httpx.AsyncClient(base_url=bench.api_urls()[0], trust_env=False, timeout=120.0) as client:
        async def writer() -> None:
            for first in batches:
                body = ingest_body(first, min(per_request, rows - first), "m")
                response = await client.post("/v1/ingest/events", content=body, headers=headers)
                response.raise_for_status()
        await asyncio.gather(*(writer() for _ in range(writers)))


def load_big(bench: Bench) -> Dataset:
    profile = bench.profile
    data = Dataset("big", profile.big_rows, "q-big", bench.tenant("q-big"))
    chunk = profile.big_rows // profile.big_chunks
    with bench.api(data.key) as api:
        api.create_table("events", EVENT_COLUMNS)
        api.create_table("users", USER_COLUMNS)
        api.backfill("users", "users", parquet_bytes(users_table()))
        spent = 0.0
        for n in range(profile.big_chunks):
            body = parquet_bytes(events_table(n * chunk, chunk))  # generated outside the clock
            started = time.perf_counter()
            api.backfill("events", f"chunk-{n}", body)
            spent += time.perf_counter() - started
    data.load_seconds, data.load_rows = spent, chunk * profile.big_chunks
    bench.log(f"  big: {data.load_rows:,} rows backfilled in {spent:.1f} s")
    return data


# --- measuring ---------------------------------------------------------------------------------


def _sql(name: str, data: Dataset) -> str:
    return QUERIES[name].format(point=data.load_rows // 2 + 7)


def _timed(api_query: Callable[[], tuple[dict[str, object], float]]) -> tuple[float, float]:
    answer, client = api_query()
    stats = answer["stats"]
    assert isinstance(stats, dict)
    return client, float(stats["duration_ms"]) / 1000


def measure_state(bench: Bench, data: Dataset, state: str) -> None:
    profile = bench.profile
    files = {t: live_files(bench, data.tenant, t) for t in ("events", "users")}
    raw = RawDuckDB({t: [p for p, _ in f] for t, f in files.items()})
    results: dict[str, Timings] = {name: Timings(files=len(files["events"])) for name in QUERIES}
    with bench.api(data.key) as api:
        for name in QUERIES:  # warm-up: DuckDB binds the views, the OS caches the files
            for _ in range(WARMUP):
                api.query(_sql(name, data), row_limit=100)
                raw.run(_sql(name, data))
        for _ in range(profile.reps):
            for name, timing in results.items():
                sql = _sql(name, data)
                pairs = [_timed(lambda sql=sql: api.query(sql, row_limit=100)) for _ in range(profile.warm_samples)]
                raws = [raw.run(sql) for _ in range(profile.warm_samples)]
                clients, servers = [c for c, _ in pairs], [s for _, s in pairs]
                timing.client_p50.append(percentile(clients, 50))
                timing.client_p95.append(percentile(clients, 95))
                timing.server_p50.append(percentile(servers, 50))
                timing.server_p95.append(percentile(servers, 95))
                timing.raw_p50.append(percentile(raws, 50))
                timing.raw_p95.append(percentile(raws, 95))
    raw.close()
    _measure_cold(bench, data, results, files)
    data.states[state] = results
    summary = ", ".join(f"{n} {ms(median(t.server_p50))}/{ms(median(t.raw_p50))} ms" for n, t in results.items())
    bench.log(f"  {data.name} {state}: server/raw p50 {summary}")


def _measure_cold(bench: Bench, data: Dataset, results: dict[str, Timings],
                  files: dict[str, list[tuple[str, int]]]) -> None:
    """Per repetition: a fresh api process (new DuckDB database, no bound views), and before each
    query the OS page cache dropped (when permitted); raw DuckDB: a new connection per query."""
    cluster = bench.cluster
    for _ in range(bench.profile.reps):
        api_proc = cluster.running("api")[0]
        cluster.restart(api_proc)
        with bench.api(data.key) as api:
            for name, timing in results.items():
                bench.headline["page_cache_dropped"] = drop_page_cache() if bench.profile.drop_page_cache else False
                client, server = _timed(lambda name=name: api.query(_sql(name, data), row_limit=100))
                timing.cold_client.append(client)
                timing.cold_server.append(server)
        for name, timing in results.items():
            if bench.profile.drop_page_cache:
                drop_page_cache()
            cold = RawDuckDB({t: [p for p, _ in f] for t, f in files.items()})
            timing.cold_raw.append(cold.run(_sql(name, data)))
            cold.close()


# --- compaction ----------------------------------------------------------------------------------


def compaction(bench: Bench, data: Dataset) -> None:
    """Raw DuckDB copies of the live files (sorted like compaction, and unsorted), then DuckMesh
    compaction, repeated by restoring the pre-compaction snapshot (which makes the same input files
    live again) between runs."""
    files = live_files(bench, data.tenant, "events")
    paths = [p for p, _ in files]
    size = sum(s for _, s in files)
    data.compaction_info = {"files": len(files), "bytes": size, "rows": data.load_rows}
    work = bench.cluster.workdir / "raw-compaction"
    sorted_s, unsorted_s, mesh_s = [], [], []
    for rep in range(bench.profile.compaction_reps):
        sorted_s.append(RawDuckDB.copy(paths, work / f"s{rep}", sort=True))
        unsorted_s.append(RawDuckDB.copy(paths, work / f"u{rep}", sort=False))
    with bench.api(data.key) as api:
        for rep in range(bench.profile.compaction_reps):
            before = api.head_snapshot()
            started = time.perf_counter()
            summary = api.compact("events")["summary"]["tables"]["events"]
            mesh_s.append(time.perf_counter() - started)
            if summary.get("status") != "completed":
                raise RuntimeError(f"compaction did not complete: {summary}")
            data.compaction_info.update(out_files=summary["output_files"], out_bytes=summary["output_bytes"],
                                        in_files=summary["input_files"])
            if rep < bench.profile.compaction_reps - 1:
                api.restore(before)
    data.compaction = {"duckmesh": [size / s for s in mesh_s], "raw_sorted": [size / s for s in sorted_s],
                       "raw_unsorted": [size / s for s in unsorted_s], "duckmesh_s": mesh_s}
    bench.log(f"  compaction {data.name}: {size / 2**20:.1f} MiB in {median(mesh_s):.2f} s"
              f" (raw sorted {median(sorted_s):.2f} s)")


# --- the section ---------------------------------------------------------------------------------


def run(bench: Bench) -> tuple[str, str]:
    bench.log("query: loading the micro-batch dataset")
    micro = load_micro(bench)
    bench.log("query: loading the backfill dataset")
    big = load_big(bench)
    datasets = [micro, big]
    for data in datasets:
        measure_state(bench, data, "as loaded")
        compaction(bench, data)
        measure_state(bench, data, "compacted")
    _headline(bench, datasets)
    return _query_md(bench, datasets), _compaction_md(datasets)


def _headline(bench: Bench, datasets: list[Dataset]) -> None:
    micro = datasets[0].states["compacted"]
    worst = max(micro, key=lambda n: median(micro[n].client_p95))
    overhead = {f"{d.name}/{n}": median(divide(t.server_p50, t.raw_p50))
                for d in datasets for n, t in d.states["compacted"].items()}
    bench.results["query"] = {
        "micro_rows": datasets[0].load_rows, "big_rows": datasets[1].load_rows,
        "client_p95_compacted_worst": median(micro[worst].client_p95), "client_p95_worst_query": worst,
        "overhead": overhead,
        "fixed_ms": {f"{d.name}/{n}": 1000 * (median(t.server_p50) - median(t.raw_p50))
                     for d in datasets for n, t in d.states["compacted"].items()},
        "micro_load_rate": datasets[0].load_rows / datasets[0].load_seconds,
        "backfill_rate": datasets[1].load_rows / datasets[1].load_seconds,
    }
    bench.headline["compaction"] = {d.name: d.compaction for d in datasets}


def _query_md(bench: Bench, datasets: list[Dataset]) -> str:
    parts = []
    for data in datasets:
        how = (text("dataset_micro", rows=f"{data.load_rows:,}", per_request=f"{bench.profile.micro_file_rows:,}",
                    rate=f"{data.load_rows / data.load_seconds:,.0f}") if data.name == "micro" else
               text("dataset_big", rows=f"{data.load_rows:,}", chunks=str(bench.profile.big_chunks),
                    rate=f"{data.load_rows / data.load_seconds:,.0f}"))
        rows = []
        for state, results in data.states.items():
            for name, t in results.items():
                rows.append([
                    state, str(t.files), name,
                    stat(t.client_p50, ms), stat(t.client_p95, ms), stat(t.server_p50, ms), stat(t.server_p95, ms),
                    stat(t.raw_p50, ms), stat(t.raw_p95, ms), stat(divide(t.server_p50, t.raw_p50), ratio),
                    stat(t.cold_client, ms), stat(t.cold_server, ms), stat(t.cold_raw, ms),
                ])
        parts.append(f"### {data.name}: {how}\n\n" + table(
            ["state", "files", "query", "client p50 ms", "client p95 ms", "server p50 ms", "server p95 ms",
             "raw DuckDB p50 ms", "raw DuckDB p95 ms", "server/raw p50", "cold client ms", "cold server ms",
             "cold raw ms"], rows))
    dropped = bench.headline.get("page_cache_dropped")
    parts.append(
        "Queries: " + "; ".join(f"**{n}** `{q.format(point='N/2+7')}`" for n, q in QUERIES.items()) + ".\n\n"
        + text("query_method", warmup=str(WARMUP), samples=str(bench.profile.warm_samples),
               config=", ".join(f"{k}={v}" for k, v in DUCKDB_CONFIG.items()),
               dropped=text("cache_dropped" if dropped else "cache_kept"))
    )
    return "\n".join(parts)


def _compaction_md(datasets: list[Dataset]) -> str:
    rows = []
    for data in datasets:
        info, comp = data.compaction_info, data.compaction
        rows.append([
            data.name, f"{info['files']:,.0f} → {info.get('out_files', 0):,.0f}", mib(info["bytes"]),
            stat(comp["duckmesh_s"], lambda v: f"{v:.2f} s"), stat(comp["duckmesh"], mib) + "/s",
            stat(comp["raw_sorted"], mib) + "/s", stat(comp["raw_unsorted"], mib) + "/s",
            stat(divide(comp["duckmesh"], comp["raw_sorted"]), ratio),
            stat(divide(comp["duckmesh"], comp["raw_unsorted"]), ratio),
        ])
    return ("### Compaction\n\n" + table(
        ["dataset", "files", "input", "DuckMesh time", "DuckMesh", "raw DuckDB sorted", "raw DuckDB unsorted",
         "vs sorted", "vs unsorted"], rows) + "\n" + text("compaction") + "\n")
