"""Where the CPU goes under ingest load: py-spy samples of the api and coordinator processes.

py-spy (``pip install py-spy`` into the venv) records both processes while a closed-loop ingest
load runs; the raw collapsed stacks are kept next to the report and summarised here as the
functions with the most samples on-CPU (self) and the call-tree nodes that contain the most
samples (inclusive). Without py-spy the section says so and the rest of the report is unaffected.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import load
import psycopg
from context import Bench
from data import EVENT_COLUMNS, ingest_body
from harness import CpuMeter, Proc
from ingest_suite import drain
from narrative import text
from report import count, pct, table

SPY_HZ = 100
WAIT_SAMPLE_S = 0.01
PUBLISH_REPEATS = 40
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def pyspy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    samples: int
    self_time: list[tuple[str, int]]
    inclusive: list[tuple[str, int]]
    by_library: list[tuple[str, int]]


# Self time grouped by where the code lives (first match wins).
_LIBRARIES = (
    ("psycopg (PostgreSQL driver)", ("psycopg",)),
    ("pydantic / FastAPI request and response models", ("pydantic", "fastapi/")),
    ("starlette / uvicorn / h11 / httptools (HTTP)", ("starlette", "uvicorn", "h11", "httptools")),
    ("asyncio event loop and selector", ("asyncio/", "selectors.py")),
    ("logging (access log, JSON formatter)", ("logging/", "duckmesh/observability/logging")),
    ("prometheus_client (metrics)", ("prometheus_client",)),
    ("pyarrow", ("pyarrow",)),
    ("duckdb", ("duckdb",)),
    ("sqlglot (SQL sandbox)", ("sqlglot",)),
    ("json / orjson", ("json/", "orjson")),
    ("duckmesh: schema validation (schema.py)", ("duckmesh/schema.py",)),
    ("duckmesh: other", ("duckmesh/",)),
    ("Python stdlib (enum, dataclasses, datetime, hashlib...)", ("enum.py", "dataclasses.py", "<string>", "datetime",
                                                                "hashlib", "uuid.py", "weakref.py", "threading.py",
                                                                "concurrent/")),
)


def _library(frame: str) -> str:
    for name, markers in _LIBRARIES:
        if any(m in frame for m in markers):
            return name
    return "other"


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "src/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int = 15) -> Profile:
    selfs: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += samples
        selfs[frames[-1]] += samples
        libraries[_library(frames[-1])] += samples
        for frame in set(frames):
            if "duckmesh/" in frame and "duckmesh/cli.py" not in frame:
                inclusive[frame] += samples
    return Profile(total, selfs.most_common(top), inclusive.most_common(top), libraries.most_common())


class WaitSampler:
    """Samples pg_stat_activity of the scratch database every 10 ms: what the catalog backends
    are doing (running, waiting on a lock, waiting for the client inside a transaction...)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.counts: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 60)"
                    " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND state IS NOT NULL AND state <> 'idle'").fetchall()
                for state, kind, event, query in rows:
                    what = (f"waiting: {kind}:{event}" if state == "active" and kind else
                            "running" if state == "active" else f"{state} ({kind}:{event})" if kind else state)
                    self.counts[(what, query.strip())] += 1
                time.sleep(WAIT_SAMPLE_S)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def markdown(self, top: int = 10) -> str:
        total = max(sum(self.counts.values()), 1)
        rows = [[what, f"`{query}`", pct(100 * n / total)] for (what, query), n in self.counts.most_common(top)]
        return table(["backend state", "statement", "share of non-idle samples"], rows)


def publish_alone(dsn: str, key: str, batch: int, repeats: int = PUBLISH_REPEATS) -> float:
    """Median seconds of the real ``PostgresBus.publish`` for one request of ``batch`` records
    with nothing else running (the length of the critical section without contention)."""
    from duckmesh.bus.base import NewSegment, encode_segment
    from duckmesh.bus.postgres import PostgresBus
    from duckmesh.catalog import tables, tenants
    from duckmesh.catalog.db import CatalogPool
    from duckmesh.domain import Op
    from duckmesh.ingest.validate import BodyForm, RecordValidator

    async def measure() -> float:
        async with CatalogPool(dsn, max_size=2) as pool:
            async with pool.connection() as conn:
                principal = await tenants.authenticate(conn, key)
                table_def = await tables.get_table(conn, principal.tenant_id, "events")
            bus = PostgresBus(pool)
            # Records validated and encoded exactly as the ingest service does before it publishes.
            validator = RecordValidator(table_def.schema, max_records=batch, max_payload_bytes=1 << 20)
            times = []
            for n in range(repeats):
                body = ingest_body((1 << 50) + n * batch, batch, key_prefix="p").decode()
                records = validator.parse(body.encode(), BodyForm.OBJECT, default_op=Op.INSERT, keys_required=True)
                segment = NewSegment(table_def.table_id, table_def.schema_version, encode_segment(records.table),
                                     records.count, records.keys, records.digests)
                started = time.perf_counter()
                outcomes = await bus.publish(principal.tenant_id, [segment])
                times.append(time.perf_counter() - started)
                if isinstance(outcomes[0], Exception):
                    raise outcomes[0]
            return statistics.median(times[5:])

    return asyncio.run(measure())


def _profile_markdown(name: str, found: Profile) -> str:
    total = max(found.samples, 1)
    return (f"### {name} ({found.samples:,} samples)\n\n**By library** (self time):\n\n"
            + table(["code", "share"], [[k, pct(100 * n / total)] for k, n in found.by_library])
            + "\n**Self time** (the function itself was running):\n\n"
            + table(["function", "share"], [[f"`{f}`", pct(100 * n / total)] for f, n in found.self_time])
            + "\n**Inclusive, DuckMesh code** (the function or anything it called):\n\n"
            + table(["function", "share"], [[f"`{f}`", pct(100 * n / total)] for f, n in found.inclusive]))


def _spy(spy: str, pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate",
                             str(SPY_HZ), "--format", "raw", "--nonblocking", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], interrupt: bool = False) -> str:
    if interrupt and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return "" if proc.returncode == 0 else err.decode(errors="replace")[-300:]


def run(bench: Bench, out_dir: Path) -> str:
    spy = pyspy()
    cluster = bench.cluster
    cluster.scale("api", 1)
    cluster.scale("coordinator", 1)
    api = cluster.running("api")[0]
    key = bench.tenant("profile")
    with bench.api(key) as client:
        client.create_table("events", EVENT_COLUMNS)
    seconds = bench.profile.profile_seconds
    writers, batch = bench.profile.closed_loops[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"api": out_dir / "profile-api.txt", "coordinator": out_dir / "profile-coordinator.txt"}
    bench.log(f"profile: api under {writers} writers × {batch} for {seconds:.0f} s"
              f" ({'py-spy' if spy else 'no py-spy'}), catalog wait events")
    spying = _spy(spy, api.pid, outputs["api"], seconds) if spy else None
    meter = CpuMeter(cluster)
    meter.start()
    with WaitSampler(cluster.dsn) as waits:
        result = asyncio.run(load.closed_loop([api.url], key, "events", writers, batch, seconds,
                                              probes_per_second=0, rate_cap=bench.profile.preencode_rate))
    cpu = meter.stop()
    errors = [_finish(spying)] if spying else []
    asyncio.run(load.wait_drained(api.url, key))
    bench.bus_events += result.accepted
    sizes = sorted({b for _, b in bench.profile.closed_loops})
    alone = {n: publish_alone(cluster.dsn, key, n) for n in sizes}
    asyncio.run(load.wait_drained(api.url, key))  # the coordinator materializes those events too
    bench.bus_events += PUBLISH_REPEATS * sum(sizes)
    per_request = result.requests / result.elapsed if result.elapsed else math.nan
    bench.headline.update(profile_waits=waits.counts)
    bench.results["profile"] = {"rate": result.rate, "cpu": cpu, "requests_per_s": per_request,
                                "publish_alone": {str(n): v for n, v in alone.items()}}
    coordinator_md = ""
    if spy:
        bench.log("profile: coordinator during a drain")

        def attach(procs: list[Proc]) -> Callable[[], None]:
            spying = _spy(spy, procs[0].pid, outputs["coordinator"], 600)
            return lambda: errors.append(_finish(spying, interrupt=True))

        rate = drain(bench, 1, bench.profile.drain_events, during=attach)
        coordinator_md = text("profile_drain", events=count(bench.profile.drain_events), rate=count(rate)) + "\n"
    cluster.scale("coordinator", 1)
    parts = [
        text("profile_api", writers=str(writers), batch=str(batch), seconds=f"{seconds:g}", rate=count(result.rate),
             requests=f"{per_request:.0f}", every=f"{1000 / per_request:.1f}",
             cpu=", ".join(f"{k} {pct(v)}" for k, v in sorted(cpu.items()))) + "\n",
        text("profile_waits", every=f"{WAIT_SAMPLE_S * 1000:g}") + "\n\n" + waits.markdown(),
        text("profile_alone", alone=", ".join(f"{n} records {1000 * v:.1f} ms" for n, v in alone.items())) + "\n",
    ]
    if not spy:
        parts.append(text("profile_no_pyspy") + "\n")
        return "\n".join(parts)
    errors = [e for e in errors if e]
    if errors or not all(p.exists() for p in outputs.values()):
        parts.append(text("profile_pyspy_failed", errors=" / ".join(errors)) + "\n")
        return "\n".join(parts)
    profiles = {name: summarise(path) for name, path in outputs.items()}
    bench.headline["profiles"] = profiles
    parts.append(text("profile_pyspy", hz=str(SPY_HZ), api=outputs["api"].name, coordinator=outputs["coordinator"].name,
                      folder=out_dir.name) + "\n")
    parts.append(_profile_markdown("api, during the load above", profiles["api"]))
    parts.append(coordinator_md + "\n" + _profile_markdown("coordinator, during a drain", profiles["coordinator"]))
    return "\n".join(parts)
