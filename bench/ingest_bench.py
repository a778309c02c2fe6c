"""Ingest benchmark: real ``duckmesh api`` + ``duckmesh coordinator`` processes, concurrent HTTP writers.

Measures, for N writers posting batches of records for a fixed time:
- records/s accepted (sum of ``accepted_count`` over the measured window),
- acknowledgement latency p50/p95/p99 (request sent -> 200 receipt),
- write-to-visible latency p50/p95 (request sent -> GET /v1/lag reports
  ``latest_visibility_token`` >= the receipt's token; polled every 10 ms by default).

Everything runs on 127.0.0.1: the PostgreSQL given by --dsn (a scratch database is created
in it and dropped afterwards), a temporary local object store, and the two processes.

    .venv/bin/python bench/ingest_bench.py --seconds 20 --writers 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
from psycopg import sql

LOOPBACK = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "name", "type": "string"},
    {"name": "amount", "type": "decimal(12,2)"},
    {"name": "at", "type": "timestamp"},
]


# --- processes and the scratch database ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def with_database(dsn: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def check_loopback(dsn: str) -> None:
    host = str(psycopg.conninfo.conninfo_to_dict(dsn).get("host") or "")
    if host != LOOPBACK:
        sys.exit(f"--dsn must point at {LOOPBACK} (got host {host!r}): the benchmark stays on this machine")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stderr_path: Path
    addr: str
    files: list[IO[bytes]] = field(default_factory=list)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for handle in self.files:
            handle.close()
        return self.popen.returncode


class Cluster:
    """The scratch database, the object store directory and the DuckMesh processes."""

    def __init__(self, admin_dsn: str, flush_interval_ms: int, keep: bool) -> None:
        self.admin_dsn = admin_dsn
        self.db_name = f"duckmesh_bench_{uuid.uuid4().hex[:10]}"
        self.dsn = with_database(admin_dsn, self.db_name)
        self.workdir = Path(tempfile.mkdtemp(prefix="duckmesh-bench-"))
        self.flush_interval_ms = flush_interval_ms
        self.keep = keep
        self.procs: list[Proc] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
        env.update({
            "DUCKMESH_CATALOG_DSN": self.dsn,
            "DUCKMESH_OBJECT_STORE_URL": (self.workdir / "objects").as_uri(),
            "DUCKMESH_STATE_DIR": str(self.workdir / "state"),
            "DUCKMESH_COORDINATOR_FLUSH_INTERVAL_MS": str(self.flush_interval_ms),
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"DUCKMESH_{k.upper()}": v for k, v in extra.items()})
        return env

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "duckmesh", *args], env=self.env(), cwd=self.workdir,
            capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"duckmesh {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return result.stdout

    def create_database(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        self.cli("migrate", "up")

    def start(self, command: str) -> Proc:
        addr = f"{LOOPBACK}:{free_port()}"
        out = open(self.workdir / f"{command}.stdout", "wb")  # noqa: SIM115 - closed in Proc.stop
        err = open(self.workdir / f"{command}.stderr", "wb")  # noqa: SIM115
        popen = subprocess.Popen(
            [sys.executable, "-m", "duckmesh", command], env=self.env(http_addr=addr), cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        proc = Proc(command, popen, self.workdir / f"{command}.stderr", addr, [out, err])
        self.procs.append(proc)
        return proc

    @staticmethod
    def wait_ready(proc: Proc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://{proc.addr}/v1/ready").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            code = proc.stop()
            if code not in (0, None):
                print(f"warning: {proc.name} exited with {code}:\n{proc.tail()}", file=sys.stderr)
        if self.keep:
            print(f"kept database {self.db_name} and {self.workdir}", file=sys.stderr)
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Results:
    ack_latencies: list[float] = field(default_factory=list)
    visible_from_send: list[float] = field(default_factory=list)
    visible_from_ack: list[float] = field(default_factory=list)
    accepted: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    max_token: int = 0
    unresolved_samples: int = 0
    drain_seconds: float = 0.0


def batch_body(writer: int, seq: int, size: int) -> bytes:
    base = (writer * 1_000_000_000) + seq * size
    records = [
        {"idempotency_key": f"w{writer}-{seq}-{i}", "op": "insert",
         "payload": {"id": base + i, "name": f"n{base + i}", "amount": f"{i}.25", "at": "2024-05-01T12:00:00Z"}}
        for i in range(size)
    ]
    return json.dumps({"records": records}).encode()


class Visibility:
    """One poller for every sampled write: every --lag-poll-ms read the watermark from GET /v1/lag and
    resolve each pending write whose token it covers (same as each write polling on its own,
    without multiplying the load on the API by the number of writes in flight)."""

    def __init__(
        self, client: httpx.AsyncClient, headers: dict[str, str], results: Results, interval: float
    ) -> None:
        self.client = client
        self.interval = interval
        self.headers = headers
        self.results = results
        self.pending: list[tuple[int, float, float]] = []  # (token, sent, acked)
        self.watermark = 0

    def add(self, token: int, sent: float, acked: float) -> None:
        heapq.heappush(self.pending, (token, sent, acked))

    async def run(self, writers_done: asyncio.Event, drain_timeout: float) -> None:
        """Poll until the writers are done and every sampled write is visible (or the drain times out)."""
        drain_started: float | None = None
        while True:
            now = time.perf_counter()
            if drain_started is None and writers_done.is_set():
                drain_started = now
            if drain_started is not None and (not self.pending or now - drain_started > drain_timeout):
                self.results.unresolved_samples = len(self.pending)
                self.results.drain_seconds = now - drain_started
                return
            try:
                response = await self.client.get("/v1/lag", headers=self.headers)
                response.raise_for_status()
                self.watermark = int(response.json()["latest_visibility_token"])
            except httpx.HTTPError as exc:
                self.results.errors[f"lag:{type(exc).__name__}"] += 1
            now = time.perf_counter()
            while self.pending and self.pending[0][0] <= self.watermark:
                _, sent, acked = heapq.heappop(self.pending)
                self.results.visible_from_send.append(now - sent)
                self.results.visible_from_ack.append(now - acked)
            await asyncio.sleep(self.interval)


async def writer(
    index: int, base_url: str, headers: dict[str, str], batch: int, deadline: float,
    results: Results, visibility: Visibility, sample_every: int,
) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30.0) as client:
        seq = 0
        send_headers = {**headers, "Content-Type": "application/json"}
        while time.perf_counter() < deadline:
            body = batch_body(index, seq, batch)
            sent = time.perf_counter()
            try:
                response = await client.post("/v1/ingest/events", headers=send_headers, content=body)
            except httpx.HTTPError as exc:
                results.errors[type(exc).__name__] += 1
                continue
            acked = time.perf_counter()
            results.requests += 1
            if response.status_code != 200:
                results.errors[str(response.status_code)] += 1
                retry_after = response.headers.get("retry-after")
                if retry_after:
                    await asyncio.sleep(min(float(retry_after), 1.0))
                continue
            receipt = response.json()
            results.ack_latencies.append(acked - sent)
            results.accepted += int(receipt["accepted_count"])
            token = int(receipt["max_visibility_token"])
            results.max_token = max(results.max_token, token)
            if seq % sample_every == 0:
                visibility.add(token, sent, acked)
            seq += 1


async def run_load(args: argparse.Namespace, api_url: str, key: str) -> Results:
    headers = {"Authorization": f"Bearer {key}"}
    results = Results()
    async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=30.0) as client:
        response = await client.post("/v1/tables", headers=headers, json={"table_name": "events", "columns": COLUMNS})
        response.raise_for_status()
        visibility = Visibility(client, headers, results, args.lag_poll_ms / 1000)
        done = asyncio.Event()
        poller = asyncio.create_task(visibility.run(done, args.drain_timeout))
        started = time.perf_counter()
        deadline = started + args.seconds
        await asyncio.gather(*(
            writer(i, api_url, headers, args.batch, deadline, results, visibility, args.sample_every)
            for i in range(args.writers)
        ))
        results.elapsed = time.perf_counter() - started
        done.set()
        await poller
    return results


# --- report --------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.1f} ms"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=False)
    except OSError:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent, timeout=10, check=False).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" (dirty)" if dirty else "")


def report(args: argparse.Namespace, results: Results) -> str:
    rate = results.accepted / results.elapsed if results.elapsed else 0.0
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(results.errors.items())) or "none"
    rows = [
        ("writers x batch", f"{args.writers} x {args.batch} records"),
        ("measured window", f"{results.elapsed:.1f} s"),
        ("requests acknowledged", f"{len(results.ack_latencies)} of {results.requests}"),
        ("records accepted", f"{results.accepted}"),
        ("**records/s accepted**", f"**{rate:,.0f}**"),
        ("ack latency p50 / p95 / p99", " / ".join(ms(percentile(results.ack_latencies, p)) for p in (50, 95, 99))),
        ("write-to-visible p50 / p95 (from send)",
         " / ".join(ms(percentile(results.visible_from_send, p)) for p in (50, 95))),
        ("write-to-visible p50 / p95 (from ack)",
         " / ".join(ms(percentile(results.visible_from_ack, p)) for p in (50, 95))),
        ("visibility samples", f"{len(results.visible_from_send)} (unresolved: {results.unresolved_samples})"),
        ("drain after load (last write visible)", f"{results.drain_seconds:.2f} s"),
        ("errors", errors),
    ]
    header = (
        f"# Ingest benchmark {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}\n\n"
        f"commit {git_commit()} · {os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"coordinator flush interval {args.flush_interval_ms} ms · one api + one coordinator process · "
        f"catalog PostgreSQL on {LOOPBACK} · local-directory object store\n\n"
        f"Write-to-visible is measured by polling GET /v1/lag every {args.lag_poll_ms} ms"
        f" (resolution ~{args.lag_poll_ms} ms; the polling is load on the API and catalog too).\n\n"
    )
    table = "| metric | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    return header + table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL on 127.0.0.1 where a scratch database is created (and dropped)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration (max 600)")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers")
    parser.add_argument("--batch", type=int, default=100, help="records per request")
    parser.add_argument("--flush-interval-ms", type=int, default=200, help="DUCKMESH_COORDINATOR_FLUSH_INTERVAL_MS")
    parser.add_argument("--lag-poll-ms", type=int, default=10, help="how often GET /v1/lag is polled")
    parser.add_argument("--sample-every", type=int, default=1, help="track visibility of every Nth write per writer")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="max wait for sampled writes to be visible")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and directory")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or args.writers < 1 or args.batch < 1 or args.sample_every < 1:
        parser.error("need 0 < --seconds <= 600, --writers >= 1, --batch >= 1, --sample-every >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.dsn)
    cluster = Cluster(args.dsn, args.flush_interval_ms, args.keep)
    try:
        cluster.create_database()
        cluster.cli("tenant", "create", "bench")
        key: dict[str, Any] = json.loads(cluster.cli(
            "key", "create", "--tenant", "bench", "--role", "table_admin", "--role", "ingest_writer",
            "--role", "ops_admin", "--json"))
        api = cluster.start("api")
        coordinator = cluster.start("coordinator")
        cluster.wait_ready(api)
        cluster.wait_ready(coordinator)
        print(f"running {args.writers} writers x {args.batch} records for {args.seconds:.0f} s ...", file=sys.stderr)
        results = asyncio.run(run_load(args, f"http://{api.addr}", key["key"]))
    except (RuntimeError, httpx.HTTPError, psycopg.Error) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.close()
    text = report(args, results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
