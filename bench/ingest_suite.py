"""Ingest, freshness and coordinator scale: the HTTP write path under load.

Each measured run writes into a fresh tenant and table, so runs do not inherit each other's
files or bus rows; between runs the bus drains (every issued token visible) before the next
starts. Freshness comes from the same runs (read-your-write probes through the query barrier).

Every figure goes to ``bench.results`` (plain JSON: the same structure a ``--baseline-ref`` run
stores for the commit it measures), and the Markdown is rendered from there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import load
from context import Bench
from data import EVENT_COLUMNS
from harness import CpuMeter, Proc
from load import ARRAY_WITH_REQUEST_KEY, RECORDS, Form, LoadResult, percentile
from narrative import text
from report import count, divide, ms, pct, section, stat, table

PROCESS_ROLES = ("api", "coordinator", "postgres", "bench client")
DRAIN_WRITERS, DRAIN_BATCH = 4, 1000
DRAIN_CLAIM_EVENTS = 10_000  # so that two coordinators can share a pre-loaded bus


@dataclass(frozen=True)
class Config:
    """One ingest configuration; ``id`` names it in the measurements (the same in every run)."""

    id: str
    label: str
    apis: int = 1
    coordinators: int = 1
    rate: float | None = None  # open loop records/s; None = closed loop
    writers: int = 0
    batch: int = 100
    form: Form = RECORDS

    @property
    def segment_bus_only(self) -> bool:
        """Array bodies and the Idempotency-Key header came with the segment bus."""
        return self.form is not RECORDS


def configs(bench: Bench) -> list[Config]:
    p = bench.profile
    found = [Config(f"open-{rate}-{apis}api", f"{rate:,} rec/s offered, {apis} API", apis=apis, rate=rate,
                    batch=p.batch) for apis in (1, 2) for rate in p.rates]
    for writers, batch in p.closed_loops:
        found += [Config(f"closed-{writers}x{batch}-{apis}api", f"{writers} writers × {batch}, {apis} API", apis=apis,
                         writers=writers, batch=batch) for apis in (1, 2)]
    writers, batch = p.closed_loops[0]
    found.append(Config(f"closed-{writers}x{batch}-1api-array", f"{writers} writers × {batch}, 1 API, bare arrays +"
                        " Idempotency-Key header", writers=writers, batch=batch, form=ARRAY_WITH_REQUEST_KEY))
    writers, batch = p.closed_loops[-1]
    found.append(Config(f"closed-{writers}x{batch}-1api-2coord", f"{writers} writers × {batch}, 1 API, 2 coordinators",
                        coordinators=2, writers=writers, batch=batch))
    return found


def _run(bench: Bench, config: Config) -> dict[str, Any]:
    cluster = bench.cluster
    cluster.scale("api", config.apis)
    cluster.scale("coordinator", config.coordinators)
    key = bench.tenant(f"ing-{len(bench.tenants)}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
    urls = bench.api_urls()
    profile = bench.profile
    run: Awaitable[LoadResult]
    if config.rate is not None:
        run = load.open_loop(urls, key, "events", config.rate, config.batch, profile.ingest_seconds,
                             probes_per_second=profile.probes_per_second)
    else:
        run = load.closed_loop(urls, key, "events", config.writers, config.batch, profile.ingest_seconds,
                               probes_per_second=profile.probes_per_second, form=config.form,
                               rate_cap=profile.preencode_rate)
    meter = CpuMeter(cluster)
    meter.start()
    result = asyncio.run(run)
    cpu = meter.stop()
    result.drain_seconds = asyncio.run(load.wait_drained(urls[0], key))
    bench.bus_events += result.accepted
    bench.log(f"  {config.label}: {result.rate:,.0f} rec/s, ack p95 {ms(percentile(result.ack, 95))} ms,"
              f" visible p95 {ms(percentile(result.visible, 95))} ms, errors {dict(result.errors) or 0}")
    return {
        "rate": result.rate, "visible_rate": result.visible_rate, "drain_s": result.drain_seconds,
        **{f"ack_p{q}": percentile(result.ack, q) for q in (50, 95, 99)},
        **{f"visible_p{q}": percentile(result.visible, q) for q in (50, 95, 99)},
        "barrier_wait_ms_p50": percentile(result.barrier_wait_ms, 50),
        "barrier_ok": result.barrier_ok, "barrier_timeouts": result.barrier_timeouts,
        "barrier_wrong": result.barrier_wrong, "errors": sum(result.errors.values()), "late": result.late,
        "built_live": result.built_live,
        "cpu": {role: sum(v for k, v in cpu.items() if k.startswith(role)) for role in PROCESS_ROLES},
    }


def drain(bench: Bench, coordinators: int, events: int,
          during: Callable[[list[Proc]], Callable[[], None]] | None = None) -> float:
    """Events/s the coordinators make visible from a pre-loaded bus, with no concurrent ingest.

    The coordinators are started first and paused (SIGSTOP) while the bus is filled, then all
    resumed at once, so neither process start-up nor a staggered start is in the figure.
    ``during`` is called with the coordinators right after they resume (e.g. to attach a
    profiler) and returns a function called once the bus is drained."""
    cluster = bench.cluster
    cluster.scale("api", 1)
    procs = cluster.scale("coordinator", coordinators, coordinator_max_batch_events=str(DRAIN_CLAIM_EVENTS))
    key = bench.tenant(f"drain-{len(bench.tenants)}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
    url = bench.api_urls()[0]
    per_writer = max(1, events // (DRAIN_WRITERS * DRAIN_BATCH))
    for proc in procs:
        proc.pause()
    try:
        asyncio.run(_preload(url, key, DRAIN_WRITERS, per_writer, DRAIN_BATCH))
    finally:
        started = time.perf_counter()
        for proc in procs:
            proc.resume()
    # Attached after the resume: a profiler attaching to a stopped process can keep it stopped.
    finish = during(procs) if during is not None else None
    asyncio.run(load.wait_drained(url, key, timeout=900))
    seconds = time.perf_counter() - started
    if finish is not None:
        finish()
    total = DRAIN_WRITERS * per_writer * DRAIN_BATCH
    bench.bus_events += total
    bench.log(f"  drain of {total:,} events with {coordinators} coordinator(s): {total / seconds:,.0f} events/s")
    return total / seconds


async def _preload(url: str, key: str, writers: int, per_writer: int, batch: int) -> None:
    headers = {"Authorization": f"Bearer {key}", **load.JSON}
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60.0) as client:
        async def writer(w: int) -> None:
            for n in range(per_writer):
                body = load.ingest_body((w * per_writer + n) * batch, batch)
                response = await client.post("/v1/ingest/events", content=body, headers=headers)
                response.raise_for_status()
        await asyncio.gather(*(writer(w) for w in range(writers)))


def measure(bench: Bench) -> None:
    """Every ingest configuration the measured DuckMesh supports, ``reps`` times, then the drains."""
    runs: dict[str, dict[str, Any]] = bench.results.setdefault("ingest", {})
    wanted = [c for c in configs(bench) if bench.segment_bus or not c.segment_bus_only]
    # Run grouped by process count (each change of it starts or stops processes); shown in configs() order.
    order = sorted(wanted, key=lambda c: (c.coordinators, c.apis))
    bench.log("ingest: open loop at fixed offered rates, closed loops")
    for _ in range(bench.profile.reps):
        for config in order:
            entry = runs.setdefault(config.id, {"label": config.label, "apis": config.apis, "rate_offered": config.rate,
                                                "coordinators": config.coordinators, "writers": config.writers,
                                                "batch": config.batch, "form": config.form.name, "runs": []})
            entry["runs"].append(_run(bench, config))
    drains: dict[str, list[float]] = bench.results.setdefault("drain", {"1": [], "2": []})
    bench.log("scale: bus drain with 1 and 2 coordinators")
    for _ in range(bench.profile.reps):
        for coordinators in (1, 2):
            drains[str(coordinators)].append(drain(bench, coordinators, bench.profile.drain_events))
    bench.results["drain_events"] = bench.profile.drain_events
    bench.cluster.scale("coordinator", 1)
    bench.cluster.scale("api", 1)


# --- rendering (from the measurements only) --------------------------------------------------------


def values(entry: dict[str, Any], name: str) -> list[float | None]:
    return [r.get(name) for r in entry["runs"]]


def cpu(entry: dict[str, Any], role: str) -> list[float | None]:
    return [r["cpu"].get(role) for r in entry["runs"]]


def _ingest_md(bench: Bench, runs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for entry in runs.values():
        offered = entry["rate_offered"]
        rows.append([
            entry["label"], count(offered) if offered else "closed loop", stat(values(entry, "rate"), count),
            stat(divide(values(entry, "rate"), [offered or float("nan")] * len(entry["runs"])), lambda v: pct(100 * v)),
            *(stat(values(entry, f"ack_p{q}"), ms) for q in (50, 95, 99)),
            stat(values(entry, "visible_rate"), count),
            *(stat(cpu(entry, role), pct) for role in PROCESS_ROLES),
            str(sum(r["errors"] for r in entry["runs"])),
        ])
    return table(
        ["configuration", "offered rec/s", "acknowledged rec/s", "achieved/offered", "ack p50 ms", "ack p95 ms",
         "ack p99 ms", "rec/s until visible", "api CPU", "coordinator CPU", "postgres CPU", "client CPU", "errors"],
        rows) + "\n" + text("ingest_table", reps=bench.profile.reps, seconds=f"{bench.profile.ingest_seconds:g}",
                            preencode=count(bench.profile.preencode_rate),
                            live=str(sum(r.get("built_live", 0) for e in runs.values() for r in e["runs"])))


def _freshness_md(bench: Bench, runs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for entry in runs.values():
        probes = sum(r["barrier_ok"] + r["barrier_timeouts"] + r["barrier_wrong"] for r in entry["runs"])
        rows.append([
            entry["label"], *(stat(values(entry, f"visible_p{q}"), ms) for q in (50, 95, 99)),
            stat(values(entry, "barrier_wait_ms_p50"), lambda v: f"{v:.1f}"),
            stat(divide([r["barrier_ok"] * 100.0 for r in entry["runs"]],
                        [r["barrier_ok"] + r["barrier_timeouts"] + r["barrier_wrong"] for r in entry["runs"]]), pct),
            str(probes), str(sum(r["barrier_timeouts"] for r in entry["runs"])),
            str(sum(r["barrier_wrong"] for r in entry["runs"])), stat(values(entry, "drain_s"), lambda v: f"{v:.2f}"),
        ])
    return table(["configuration", "visible p50 ms", "visible p95 ms", "visible p99 ms", "barrier wait p50 ms",
                  "barrier success", "probes", "timeouts", "row missing", "drain s"], rows) + "\n" + text(
        "freshness_table", probes=f"{bench.profile.probes_per_second:g}",
        timeout=f"{load.PROBE_TIMEOUT_MS / 1000:g}", poll=f"{load.DRAIN_POLL_S * 1000:g}")


def _scale_md(bench: Bench, runs: dict[str, dict[str, Any]], drains: dict[str, list[float]]) -> str:
    writers, batch = bench.profile.closed_loops[-1]
    pair = [runs[i] for i in (f"closed-{writers}x{batch}-1api", f"closed-{writers}x{batch}-1api-2coord") if i in runs]
    rows = [[e["label"], stat(values(e, "rate"), count), stat(values(e, "ack_p95"), ms),
             stat(values(e, "visible_p95"), ms), stat(values(e, "visible_rate"), count), stat(cpu(e, "coordinator"), pct)]
            for e in pair]
    drain_rows = [[n, stat(drains.get(n, []), count)] for n in ("1", "2")]
    return (
        text("scale_intro") + "\n\n"
        + table(["configuration", "acknowledged rec/s", "ack p95 ms", "visible p95 ms", "rec/s until visible",
                 "coordinator CPU"], rows)
        + "\n" + text("drain", events=count(bench.results.get("drain_events", float("nan"))),
                      writers=str(DRAIN_WRITERS), batch=count(DRAIN_BATCH), claim=count(DRAIN_CLAIM_EVENTS),
                      poll=f"{load.DRAIN_POLL_S * 1000:g}")
        + "\n\n" + table(["coordinators", "events/s made visible"], drain_rows)
    )


def sections(bench: Bench) -> tuple[str, str, str]:
    found = bench.results.get("ingest", {})
    runs = {c.id: found[c.id] for c in configs(bench) if c.id in found}
    return (section("Ingest", _ingest_md(bench, runs)), section("Freshness", _freshness_md(bench, runs),
                                                                 bench.parts.get("lone_wait", "")),
            section("Scale: coordinators", _scale_md(bench, runs, bench.results.get("drain", {}))))
