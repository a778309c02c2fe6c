"""The bus's own figures, measured on a quiet system at the start of a run:

- catalog size per million events before bus cleanup: a fresh tenant ingests ``catalog_events``
  records and waits until they are visible; the growth of every ``ingest_*`` table
  (``pg_total_relation_size``: heap, TOAST and indexes) and of the whole catalog database is
  divided by the events. Two variants: per-record idempotency keys (the ``{"records": [...]}``
  form) and, where the measured DuckMesh has it, bare arrays with one ``Idempotency-Key`` header
  per request and no per-record keys.
- a lone writer with ``wait_for_visibility``: the request latency (send -> visible receipt).

Both run before any other section has written to the bus, so the tables have no free space left
behind by deleted rows that the new rows could reuse.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import load
from context import Bench
from data import EVENT_COLUMNS
from load import ARRAY_WITH_REQUEST_KEY, RECORDS, Form, percentile
from narrative import text
from report import count, mib, ms, section, stat, table

BUS_TABLES_SQL = (
    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'ingest%%'"
)
VARIANTS = {"keys": RECORDS, "request-key": ARRAY_WITH_REQUEST_KEY}
CATALOG_WRITERS = 4
LONE_PAUSE_S = 0.05  # between the lone writer's requests, so each starts on an idle system


def _sizes(bench: Bench) -> tuple[dict[str, int], int]:
    tables = {str(name): int(size) for name, size in bench.cluster.query(BUS_TABLES_SQL)}
    database = int(bench.cluster.query("SELECT pg_database_size(current_database())")[0][0])
    return tables, database


async def _post(url: str, key: str, events: int, batch: int, form: Form) -> None:
    headers = {"Authorization": f"Bearer {key}", **load.JSON}
    requests = iter(range(0, events, batch))
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60.0) as client:
        async def writer() -> None:
            for first in requests:
                extra = {"Idempotency-Key": f"c{first}"} if form.request_key else {}
                body = form.body(first, min(batch, events - first), "c")
                response = await client.post("/v1/ingest/events", content=body, headers={**headers, **extra})
                response.raise_for_status()
        await asyncio.gather(*(writer() for _ in range(CATALOG_WRITERS)))


def catalog_growth(bench: Bench, variant: str) -> dict[str, Any]:
    profile = bench.profile
    key = bench.tenant(f"catalog-{variant}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
        tables_before, db_before = _sizes(bench)
        started = time.perf_counter()
        asyncio.run(_post(api.url, key, profile.catalog_events, profile.catalog_batch, VARIANTS[variant]))
        api.wait_drained(timeout=900)
        seconds = time.perf_counter() - started
    tables_after, db_after = _sizes(bench)
    bench.bus_events += profile.catalog_events
    grown = {name: size - tables_before.get(name, 0) for name, size in tables_after.items()}
    found = {"events": profile.catalog_events, "batch": profile.catalog_batch, "form": VARIANTS[variant].name,
             "tables": grown, "bus_bytes": sum(grown.values()), "database_bytes": db_after - db_before,
             "seconds": seconds}
    bench.log(f"  catalog, {variant}: {profile.catalog_events:,} events, bus tables +{sum(grown.values()) / 2**20:.1f}"
              f" MiB, database +{(db_after - db_before) / 2**20:.1f} MiB")
    return found


def lone_writer(bench: Bench) -> dict[str, Any]:
    profile = bench.profile
    key = bench.tenant(f"lone-writer-{len(bench.tenants)}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
    result = asyncio.run(load.lone_writer(bench.api_urls()[0], key, "events", profile.lone_batch,
                                          profile.lone_requests, pause=LONE_PAUSE_S))
    bench.bus_events += result.accepted
    found = {"requests": profile.lone_requests, "batch": profile.lone_batch, "pause_s": LONE_PAUSE_S,
             **{f"p{q}": percentile(result.ack, q) for q in (50, 95, 99)},
             "max": max(result.ack) if result.ack else float("nan"), "visible": len(result.ack),
             "errors": sum(result.errors.values())}
    bench.log(f"  lone writer, wait_for_visibility: p50 {ms(found['p50'])} ms, p95 {ms(found['p95'])} ms")
    return found


def measure(bench: Bench) -> None:
    """Catalog growth (both variants where supported), then the lone writer; 1 api, 1 coordinator."""
    bench.cluster.scale("api", 1)
    bench.cluster.scale("coordinator", 1)
    bench.log("bus: catalog size per million events, lone writer with wait_for_visibility")
    catalog: dict[str, Any] = bench.results.setdefault("catalog", {})
    for variant in VARIANTS:
        if variant == "keys" or bench.segment_bus:
            catalog[variant] = catalog_growth(bench, variant)
    lone: dict[str, list[Any]] = bench.results.setdefault("lone_wait", {"runs": []})
    for _ in range(bench.profile.reps):
        lone["runs"].append(lone_writer(bench))


def per_million(found: dict[str, Any], field: str) -> float:
    return float(found[field]) / float(found["events"]) * 1_000_000 if found.get("events") else float("nan")


def catalog_md(bench: Bench) -> str:
    catalog = bench.results.get("catalog", {})
    if not catalog:
        return text("not_measured")
    rows = []
    for variant, found in catalog.items():
        tables = ", ".join(f"`{name}` {mib(found['tables'][name] / found['events'] * 1_000_000)}"
                           for name in sorted(found["tables"], key=lambda n: -found["tables"][n])
                           if found["tables"][name] > 0)
        rows.append([text(f"catalog_variant_{variant.replace('-', '_')}"), count(found["events"]),
                     count(found["batch"]), mib(found["bus_bytes"]), mib(per_million(found, "bus_bytes")),
                     mib(found["database_bytes"]), f"**{mib(per_million(found, 'database_bytes'))}**", tables])
    return table(["variant", "events", "records per request", "bus tables grew", "bus tables per million events",
                  "catalog database grew", "catalog per million events", "per million events, by table"], rows) + (
        "\n" + text("catalog", writers=str(CATALOG_WRITERS)))


def lone_md(bench: Bench) -> str:
    runs = bench.results.get("lone_wait", {}).get("runs", [])
    if not runs:
        return ""
    first = runs[0]
    row = [count(first["requests"]), count(first["batch"]),
           *(stat([r[f"p{q}"] for r in runs], ms) for q in (50, 95, 99)), stat([r["max"] for r in runs], ms),
           str(sum(r["errors"] for r in runs))]
    return "### Lone writer, `wait_for_visibility`\n\n" + table(
        ["requests", "records per request", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"], [row]) + "\n" + text(
        "lone_wait", pause=f"{first['pause_s'] * 1000:g}")


def sections(bench: Bench) -> str:
    bench.parts["lone_wait"] = lone_md(bench)
    return section("Catalog size", catalog_md(bench))
