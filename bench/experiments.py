"""What-if measurements for the proposed fixes that can be tried without touching src/.

TCP_NODELAY: ``duckmesh.cli._bind`` creates its listening socket with ``proto=0``, so asyncio
never sets TCP_NODELAY on accepted connections; on a keep-alive connection a response written
in two parts (headers, then body) waits for the client's delayed ACK (~40 ms on Linux). The
experiment runs the same measurements against an api started as shipped and against one started
with ``bench/patches/tcp_nodelay`` on PYTHONPATH (the same effect as the one-line fix).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import load
from context import Bench
from data import EVENT_COLUMNS
from harness import HERE
from load import percentile
from report import count, ms, stat, table

PATCH = str(HERE / "patches" / "tcp_nodelay")
RATE = 5_000  # the open-loop rate of the service levels
QUERY = "SELECT kind, count(*) AS n, sum(amount) AS total FROM events GROUP BY kind ORDER BY kind"


async def _health(url: str, samples: int = 30) -> float:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        await client.get("/v1/health")
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            await client.get("/v1/health")
            times.append(time.perf_counter() - started)
    return percentile(times, 50)


def run(bench: Bench, query_key: str) -> str:
    cluster = bench.cluster
    cluster.scale("coordinator", 1)
    results: dict[str, dict[str, list[float]]] = {}
    bench.log("experiment: TCP_NODELAY on the api's connections")
    for rep in range(bench.profile.reps):
        for variant, path in (("as shipped", None), ("TCP_NODELAY shim", PATCH)):
            for proc in cluster.running("api"):
                cluster.stop(proc)
            api = cluster.start("api", "api-1", python_path=path)
            got = results.setdefault(variant, {})
            got.setdefault("health", []).append(asyncio.run(_health(api.url)))
            key = bench.tenant(f"nodelay-{len(bench.tenants)}")
            with bench.api(key) as client:
                client.create_table("events", EVENT_COLUMNS)
            run = asyncio.run(load.open_loop([api.url], key, "events", RATE, bench.profile.batch,
                                             bench.profile.ingest_seconds, probes_per_second=bench.profile.probes_per_second))
            asyncio.run(load.wait_drained(api.url, key))
            bench.bus_events += run.accepted
            got.setdefault("rate", []).append(run.rate)
            for q in (50, 95):
                got.setdefault(f"ack{q}", []).append(percentile(run.ack, q))
            got.setdefault("visible95", []).append(percentile(run.visible, 95))
            single = asyncio.run(load.closed_loop([api.url], key, "events", 1, bench.profile.batch,
                                                  bench.profile.ingest_seconds / 2, first_id=1 << 45, probes_per_second=0,
                                                  rate_cap=bench.profile.preencode_rate))
            asyncio.run(load.wait_drained(api.url, key))
            bench.bus_events += single.accepted
            got.setdefault("single", []).append(single.rate)
            with bench.api(query_key) as client:
                for _ in range(2):
                    client.query(QUERY)
                times = [client.query(QUERY)[1] for _ in range(bench.profile.warm_samples)]
            got.setdefault("query", []).append(percentile(times, 50))
            bench.log(f"  {variant} rep {rep + 1}: health {ms(got['health'][-1])} ms, {RATE:,} rec/s ack p95"
                      f" {ms(got['ack95'][-1])} ms, 1 writer {single.rate:,.0f} rec/s, query {ms(got['query'][-1])} ms")
    for proc in cluster.running("api"):
        cluster.stop(proc)
    cluster.start("api", "api-1")
    bench.results["nodelay"] = results
    rows = [[variant, stat(r["health"], ms), stat(r["rate"], count), stat(r["ack50"], ms), stat(r["ack95"], ms),
             stat(r["visible95"], ms), stat(r["single"], count), stat(r["query"], ms)]
            for variant, r in results.items()]
    return table(["api", "GET /v1/health p50 ms", f"{RATE:,} rec/s offered: achieved rec/s", "ack p50 ms", "ack p95 ms",
                  "visible p95 ms", f"1 writer × {bench.profile.batch}, closed loop rec/s",
                  "group-by on micro (compacted), client p50 ms"], rows)
