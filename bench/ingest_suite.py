"""Ingest, freshness and coordinator scale: the HTTP write path under load.

Each measured run writes into a fresh tenant and table, so runs do not inherit each other's
files or bus rows; between runs the bus drains (every issued token visible) before the next
starts. Freshness comes from the same runs (read-your-write probes through the query barrier).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import load
from context import Bench
from data import EVENT_COLUMNS
from harness import CpuMeter, Proc
from load import LoadResult, percentile
from report import count, divide, median, ms, pct, section, stat, table


@dataclass
class Config:
    label: str
    apis: int = 1
    coordinators: int = 1
    rate: float | None = None  # open loop records/s; None = closed loop
    writers: int = 0
    batch: int = 100
    runs: list[LoadResult] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    def values(self, pick: Callable[[LoadResult], float]) -> list[float]:
        return [pick(r) for r in self.runs]

    def cpu_of(self, prefix: str) -> list[float]:
        return [sum(v for k, v in c.items() if k.startswith(prefix)) for c in self.cpu]


def _p(values_of: Callable[[LoadResult], list[float]], q: float) -> Callable[[LoadResult], float]:
    return lambda r: percentile(values_of(r), q)


def _run(bench: Bench, config: Config, rep: int) -> None:
    cluster = bench.cluster
    cluster.scale("api", config.apis)
    cluster.scale("coordinator", config.coordinators)
    name = f"ing-{len(bench.tenants)}"
    key = bench.tenant(name)
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
                               probes_per_second=profile.probes_per_second)
    meter = CpuMeter(cluster)
    meter.start()
    result = asyncio.run(run)
    cpu = meter.stop()
    result.drain_seconds = asyncio.run(load.wait_drained(urls[0], key))
    config.runs.append(result)
    config.cpu.append(cpu)
    bench.bus_events += result.accepted
    bench.log(f"  {config.label} rep {rep + 1}: {result.rate:,.0f} rec/s, ack p95 {ms(percentile(result.ack, 95))} ms,"
              f" visible p95 {ms(percentile(result.visible, 95))} ms, errors {dict(result.errors) or 0}")


def drain(bench: Bench, coordinators: int, events: int,
          during: Callable[[list[Proc]], Callable[[], None]] | None = None) -> float:
    """Events/s the coordinators make visible from a pre-loaded bus, with no concurrent ingest.

    The coordinators are started first and paused (SIGSTOP) while the bus is filled, then all
    resumed at once, so neither process start-up nor a staggered start is in the figure.
    ``during`` is called with the coordinators right after they resume (e.g. to attach a
    profiler) and returns a function called once the bus is drained."""
    cluster = bench.cluster
    cluster.scale("api", 1)
    procs = cluster.scale("coordinator", coordinators, coordinator_max_batch_events="10000")
    key = bench.tenant(f"drain-{len(bench.tenants)}")
    with bench.api(key) as api:
        api.create_table("events", EVENT_COLUMNS)
    writers, batch = 4, 1000
    per_writer = max(1, events // (writers * batch))
    for proc in procs:
        proc.pause()
    try:
        asyncio.run(_preload(bench.api_urls()[0], key, writers, per_writer, batch))
    finally:
        started = time.perf_counter()
        for proc in procs:
            proc.resume()
    # Attached after the resume: a profiler attaching to a stopped process can keep it stopped.
    finish = during(procs) if during is not None else None
    with bench.api(key) as api:
        api.wait_drained()
    seconds = time.perf_counter() - started
    if finish is not None:
        finish()
    total = writers * per_writer * batch
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


def run(bench: Bench) -> tuple[str, str, str]:
    profile = bench.profile
    configs = [Config(f"{rate:,} rec/s offered, {apis} API", apis=apis, rate=rate)
               for apis in (1, 2) for rate in profile.rates]
    maxes = [Config(f"max: {profile.max_writers} writers × {profile.batch}, {apis} API", apis=apis,
                    writers=profile.max_writers) for apis in (1, 2)]
    stretch = Config(f"stretch: {profile.stretch_writers} writers × {profile.stretch_batch}, 1 API",
                     writers=profile.stretch_writers, batch=profile.stretch_batch)
    scale = Config(f"max: {profile.max_writers} writers × {profile.batch}, 1 API, 2 coordinators",
                   coordinators=2, writers=profile.max_writers)
    bench.log("ingest: fixed offered rates, max sustained rate, stretch")
    for rep in range(profile.reps):
        for config in [*configs, *maxes, stretch, scale]:
            _run(bench, config, rep)
    drains: dict[int, list[float]] = {1: [], 2: []}
    bench.log("scale: bus drain with 1 and 2 coordinators")
    for _ in range(profile.reps):
        for coordinators in (1, 2):
            drains[coordinators].append(drain(bench, coordinators, profile.drain_events))
    bench.cluster.scale("coordinator", 1)
    bench.cluster.scale("api", 1)
    bench.headline.update(drain_1=drains[1], drain_2=drains[2], max_rate_2coord=median(scale.values(lambda r: r.rate)))
    _headline(bench, configs, maxes, stretch)
    return _ingest_md(bench, configs, maxes, stretch), _freshness_md(configs, maxes, stretch), \
        _scale_md(maxes[0], scale, drains)


def _headline(bench: Bench, configs: list[Config], maxes: list[Config], stretch: Config) -> None:
    at5k = next((c for c in configs if c.rate == 5_000 and c.apis == 1), configs[0])
    best = max(maxes, key=lambda c: median(c.values(lambda r: r.rate)))
    bench.headline.update({
        "ack_p95_5k": median(at5k.values(_p(lambda r: r.ack, 95))),
        "achieved_5k": median(at5k.values(lambda r: r.rate)),
        "visible_p95_5k": median(at5k.values(_p(lambda r: r.visible, 95))),
        "barrier_success_5k": median(at5k.values(lambda r: r.barrier_success)),
        "barrier_probes_5k": sum(r.barrier_ok + r.barrier_timeouts + r.barrier_wrong for r in at5k.runs),
        "max_rate": median(best.values(lambda r: r.rate)),
        "max_rate_label": best.label,
        "max_rate_1api": median(maxes[0].values(lambda r: r.rate)),
        "max_ack_p95": median(best.values(_p(lambda r: r.ack, 95))),
        "stretch_rate": median(stretch.values(lambda r: r.rate)),
        "stretch_ack_p95": median(stretch.values(_p(lambda r: r.ack, 95))),
        "api_cpu_5k": median(at5k.cpu_of("api")),
        "pg_cpu_5k": median(at5k.cpu_of("postgres")),
        "coord_cpu_5k": median(at5k.cpu_of("coordinator")),
        "client_cpu_5k": median(at5k.cpu_of("bench client")),
        "api_cpu_max": median(maxes[0].cpu_of("api")),
        "pg_cpu_max": median(maxes[0].cpu_of("postgres")),
        "coord_cpu_max": median(maxes[0].cpu_of("coordinator")),
        "client_cpu_max": median(maxes[0].cpu_of("bench client")),
        "ingest_configs": {c.label: c for c in [*configs, *maxes, stretch]},
    })


def _offered(config: Config) -> str:
    return f"{config.rate:,.0f}" if config.rate is not None else "closed loop"


def _ingest_md(bench: Bench, configs: list[Config], maxes: list[Config], stretch: Config) -> str:
    rows = []
    for c in [*configs, *maxes, stretch]:
        errors = sum(sum(r.errors.values()) for r in c.runs)
        rows.append([
            c.label, _offered(c), stat(c.values(lambda r: r.rate), count),
            stat(divide(c.values(lambda r: r.rate), [c.rate or math.nan] * len(c.runs)), lambda v: pct(100 * v)),
            *(stat(c.values(_p(lambda r: r.ack, q)), ms) for q in (50, 95, 99)),
            stat(c.cpu_of("api"), pct), stat(c.cpu_of("coordinator"), pct), stat(c.cpu_of("postgres"), pct),
            stat(c.cpu_of("bench client"), pct), str(errors),
        ])
    note = (
        f"{bench.profile.reps} repetition(s) of {bench.profile.ingest_seconds:.0f} s per row; each cell is the median"
        " of the repetitions [min–max]. Open loop: latency counts from the scheduled send time. Closed loop:"
        " from the actual send. CPU is % of one core over the run (2 cores = 200 %); \"postgres\" is the"
        " catalog backends of the scratch database; \"client\" is this benchmark process (load generator"
        " and probes), which shares the machine."
    )
    return table(
        ["configuration", "offered rec/s", "achieved rec/s", "achieved/offered", "ack p50 ms", "ack p95 ms",
         "ack p99 ms", "api CPU", "coordinator CPU", "postgres CPU", "client CPU", "errors"], rows) + "\n" + note


def _freshness_md(configs: list[Config], maxes: list[Config], stretch: Config) -> str:
    rows = []
    for c in [*configs, *maxes, stretch]:
        probes = sum(r.barrier_ok + r.barrier_timeouts + r.barrier_wrong for r in c.runs)
        rows.append([
            c.label, *(stat(c.values(_p(lambda r: r.visible, q)), ms) for q in (50, 95, 99)),
            stat(c.values(_p(lambda r: r.barrier_wait_ms, 50)), lambda v: f"{v:.1f}"),
            stat(c.values(lambda r: 100 * r.barrier_success), pct), str(probes),
            str(sum(r.barrier_timeouts for r in c.runs)), str(sum(r.barrier_wrong for r in c.runs)),
            stat(c.values(lambda r: r.drain_seconds), lambda v: f"{v:.2f}"),
        ])
    note = (
        "Write-to-visible = acknowledgement → answer of `POST /v1/query` with `min_visibility_token` = the"
        " receipt's token and `consistency_timeout_ms` = 3000, whose result must contain the written row"
        " (`SELECT count(*) FROM events WHERE id = <last id of the batch>` = 1). Up to 15 sampled writes per"
        " second per run. The figure includes the probe query itself (binding + DuckDB + HTTP); \"barrier"
        " wait\" is the server-side part spent waiting for the watermark (`stats.wait_ms`). \"drain\" is the"
        " time after the load until the whole bus was visible (GET /v1/lag)."
    )
    return table(["configuration", "visible p50 ms", "visible p95 ms", "visible p99 ms", "barrier wait p50 ms",
                  "barrier success", "probes", "timeouts", "row missing", "drain s"], rows) + "\n" + note


def _scale_md(one: Config, two: Config, drains: dict[int, list[float]]) -> str:
    rows = [[c.label, stat(c.values(lambda r: r.rate), count), stat(c.values(_p(lambda r: r.ack, 95)), ms),
             stat(c.values(_p(lambda r: r.visible, 95)), ms), stat(c.cpu_of("coordinator"), pct)]
            for c in (one, two)]
    drain_rows = [[f"{n} coordinator(s)", stat(drains[n], count)] for n in (1, 2)]
    return (
        "At the maximum rate (closed loop):\n\n"
        + table(["configuration", "achieved rec/s", "ack p95 ms", "visible p95 ms", "coordinator CPU"], rows)
        + "\nCoordinator capacity alone: the coordinators are started and paused (SIGSTOP), the bus is filled"
        " through the API, then all coordinators resume at once (claim size 10,000 so two can share the work)"
        " and the time until every token is visible (GET /v1/lag, 50 ms polls) is measured:\n\n"
        + table(["coordinators", "events/s made visible"], drain_rows)
    )


def sections(md: tuple[str, str, str]) -> tuple[str, str, str]:
    ingest, freshness, scale = md
    return (section("Ingest", ingest), section("Freshness", freshness), section("Scale: coordinators", scale))
