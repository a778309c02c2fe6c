"""Load generation against the HTTP API, and the client-side measurements.

- ``open_loop``: batches sent on a fixed schedule (offered rate), whatever the server does;
  latency counts from the *scheduled* send time, so a server (or client) falling behind shows
  up in the latency instead of silently lowering the rate (no coordinated omission). At most
  ``max_in_flight`` requests are outstanding; past that the schedule slips and "late" counts it.
- ``closed_loop``: N writers, each sending its next batch when the previous one is acknowledged
  (the maximum sustained rate for that concurrency).
- Freshness, the product's way: after an acknowledgement, a sampled write's token T goes into
  ``POST /v1/query`` with ``min_visibility_token=T`` and ``consistency_timeout_ms``; the time
  from the ack to that query's answer is write-to-visible, and the answer must contain the row.

Requests are spread round-robin over the API processes given.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from data import array_body, ingest_body

JSON = {"Content-Type": "application/json"}
PROBE_TIMEOUT_MS = 3000  # the read-your-write probes' consistency_timeout_ms
DRAIN_POLL_S = 0.01  # GET /v1/lag polling while waiting for the bus to drain


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    offered: float | None = None  # records/s (open loop)
    elapsed: float = 0.0
    accepted: int = 0
    requests: int = 0
    late: int = 0
    ack: list[float] = field(default_factory=list)  # seconds, per acknowledged request
    errors: Counter[str] = field(default_factory=Counter)
    visible: list[float] = field(default_factory=list)  # ack -> first query that sees the write
    visible_from_send: list[float] = field(default_factory=list)
    barrier_ok: int = 0
    barrier_timeouts: int = 0
    barrier_wrong: int = 0  # the barrier answered but the row was not in the result
    barrier_wait_ms: list[float] = field(default_factory=list)  # server-side stats.wait_ms
    max_token: int = 0
    client_cpu: float = 0.0
    drain_seconds: float = 0.0
    built_live: int = 0  # closed loop: bodies encoded during the run (the pre-encoded ones ran out)

    @property
    def visible_rate(self) -> float:
        """Records per second counted from the first send until every acknowledged record was visible."""
        total = self.elapsed + self.drain_seconds
        return self.accepted / total if total else 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    @property
    def barrier_success(self) -> float:
        total = self.barrier_ok + self.barrier_timeouts + self.barrier_wrong
        return self.barrier_ok / total if total else math.nan


def clients(urls: list[str], connections: int, timeout: float = 30.0) -> list[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return [httpx.AsyncClient(base_url=u, trust_env=False, timeout=timeout, limits=limits) for u in urls]


class Prober:
    """Read-your-write probes through the query barrier, at most ``per_second`` of them."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], key: str, table: str, result: LoadResult,
                 per_second: float, timeout_ms: int = PROBE_TIMEOUT_MS) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}", **JSON}
        self.table = table
        self.result = result
        self.interval = 1.0 / per_second if per_second > 0 else math.inf
        self.timeout_ms = timeout_ms
        self.next_at = 0.0
        self.tasks: list[asyncio.Task[None]] = []

    def maybe(self, token: int, row_id: int, sent: float, acked: float) -> None:
        if acked < self.next_at:
            return
        self.next_at = acked + self.interval
        self.tasks.append(asyncio.create_task(self._probe(token, row_id, sent, acked)))

    async def _probe(self, token: int, row_id: int, sent: float, acked: float) -> None:
        body = {"sql": f"SELECT count(*) AS n FROM {self.table} WHERE id = {row_id}",
                "min_visibility_token": token, "consistency_timeout_ms": self.timeout_ms}
        try:
            response = await self.client().post("/v1/query", headers=self.headers, json=body)
        except httpx.HTTPError as exc:
            self.result.errors[f"probe:{type(exc).__name__}"] += 1
            return
        now = time.perf_counter()
        if response.status_code == 504:
            self.result.barrier_timeouts += 1
            return
        if response.status_code != 200:
            self.result.errors[f"probe:{response.status_code}"] += 1
            return
        payload = response.json()
        if payload["rows"] != [[1]]:
            self.result.barrier_wrong += 1
            return
        self.result.barrier_ok += 1
        self.result.visible.append(now - acked)
        self.result.visible_from_send.append(now - sent)
        self.result.barrier_wait_ms.append(float(payload["stats"]["wait_ms"]))

    async def finish(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks)


async def _send(client: httpx.AsyncClient, path: str, headers: dict[str, str], body: bytes,
                result: LoadResult) -> dict[str, Any] | None:
    try:
        response = await client.post(path, headers=headers, content=body)
    except httpx.HTTPError as exc:
        result.errors[type(exc).__name__] += 1
        return None
    result.requests += 1
    if response.status_code != 200:
        result.errors[str(response.status_code)] += 1
        return None
    receipt: dict[str, Any] = response.json()
    result.accepted += int(receipt["accepted_count"])
    result.max_token = max(result.max_token, int(receipt["max_visibility_token"]))
    return receipt


async def open_loop(urls: list[str], key: str, table: str, rate: float, batch: int, seconds: float, *,
                    first_id: int = 0, probes_per_second: float = 15.0, max_in_flight: int = 64) -> LoadResult:
    """Offer ``rate`` records/s in batches of ``batch`` for ``seconds``."""
    result = LoadResult(offered=rate)
    count = max(1, int(rate * seconds / batch))
    bodies = [ingest_body(first_id + n * batch, batch) for n in range(count)]  # built before the clock starts
    pool = clients(urls, max_in_flight)
    headers = {"Authorization": f"Bearer {key}", **JSON}
    slots = asyncio.Semaphore(max_in_flight)
    turn = iter(range(1 << 62))
    prober = Prober(lambda: pool[next(turn) % len(pool)], key, table, result, probes_per_second)

    async def one(n: int, scheduled: float) -> None:
        try:
            receipt = await _send(pool[n % len(pool)], f"/v1/ingest/{table}", headers, bodies[n], result)
            acked = time.perf_counter()
            if receipt is not None:
                result.ack.append(acked - scheduled)
                prober.maybe(int(receipt["max_visibility_token"]), first_id + (n + 1) * batch - 1, scheduled, acked)
        finally:
            slots.release()

    cpu0 = sum(os.times()[:2])
    started = time.perf_counter() + 0.05
    interval = batch / rate
    tasks = []
    for n in range(count):
        scheduled = started + n * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        if time.perf_counter() - scheduled > 0.010:
            result.late += 1
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed = max(time.perf_counter() - started, count * interval)
    await prober.finish()
    result.client_cpu = sum(os.times()[:2]) - cpu0
    for client in pool:
        await client.aclose()
    return result


@dataclass(frozen=True)
class Form:
    """How a closed-loop writer encodes its requests: ``{"records": [...]}`` with a per-record key
    each (the only form every DuckMesh version accepts), or a bare array of payloads with one
    ``Idempotency-Key`` header per request and no per-record keys."""

    name: str = "records"
    request_key: bool = False

    def body(self, first: int, batch: int, prefix: str) -> bytes:
        return array_body(first, batch) if self.name == "array" else ingest_body(first, batch, prefix)


RECORDS = Form()
ARRAY_WITH_REQUEST_KEY = Form("array", request_key=True)


async def closed_loop(urls: list[str], key: str, table: str, writers: int, batch: int, seconds: float, *,
                      first_id: int = 0, probes_per_second: float = 15.0, form: Form = RECORDS,
                      rate_cap: float = 100_000.0) -> LoadResult:
    """``writers`` concurrent writers, back to back, for ``seconds``.

    Bodies are encoded before the clock starts, enough for ``rate_cap`` records/s; a writer that
    runs past them encodes the rest as it goes (counted in ``built_live``: the client then spent
    CPU on JSON that a faster server would have been spared)."""
    result = LoadResult()
    pool = clients(urls, max(writers, 4))
    base = {"Authorization": f"Bearer {key}", **JSON}
    turn = iter(range(1 << 62))
    prober = Prober(lambda: pool[next(turn) % len(pool)], key, table, result, probes_per_second)
    span = 1 << 40  # id space per writer
    ready = max(1, math.ceil(rate_cap * seconds / writers / batch))
    bodies = [[form.body(first_id + w * span + n * batch, batch, f"w{w}-") for n in range(ready)]
              for w in range(writers)]

    async def writer(index: int, deadline: float) -> None:
        client = pool[index % len(pool)]
        seq = 0
        while time.perf_counter() < deadline:
            first = first_id + index * span + seq * batch
            if seq < ready:
                body = bodies[index][seq]
            else:
                body = form.body(first, batch, f"w{index}-")
                result.built_live += 1
            headers = {**base, "Idempotency-Key": f"w{index}-{seq}"} if form.request_key else base
            sent = time.perf_counter()
            receipt = await _send(client, f"/v1/ingest/{table}", headers, body, result)
            acked = time.perf_counter()
            seq += 1
            if receipt is not None:
                result.ack.append(acked - sent)
                prober.maybe(int(receipt["max_visibility_token"]), first + batch - 1, sent, acked)

    cpu0 = sum(os.times()[:2])
    started = time.perf_counter()
    await asyncio.gather(*(writer(i, started + seconds) for i in range(writers)))
    result.elapsed = time.perf_counter() - started
    await prober.finish()
    result.client_cpu = sum(os.times()[:2]) - cpu0
    for client in pool:
        await client.aclose()
    return result


async def lone_writer(url: str, key: str, table: str, batch: int, requests: int, *, first_id: int = 0,
                      pause: float = 0.05) -> LoadResult:
    """One writer, ``requests`` requests of ``batch`` records each with ``wait_for_visibility`` in
    the body (the JSON-object form, which every DuckMesh version accepts), one at a time with
    ``pause`` seconds between them so the system is idle when each starts; ``ack`` holds the
    request latencies (send -> visible receipt)."""
    result = LoadResult()
    headers = {"Authorization": f"Bearer {key}", **JSON}
    bodies = [ingest_body(first_id + n * batch, batch, "lw")[:-1] + b',"wait_for_visibility":true}'
              for n in range(requests)]
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30.0) as client:
        await client.get("/v1/health")  # the connection is open before the first timed request
        started = time.perf_counter()
        for body in bodies:
            await asyncio.sleep(pause)
            sent = time.perf_counter()
            receipt = await _send(client, f"/v1/ingest/{table}", headers, body, result)
            if receipt is not None:
                if receipt.get("status") == "visible":
                    result.ack.append(time.perf_counter() - sent)
                else:
                    result.errors[f"status:{receipt.get('status')}"] += 1
        result.elapsed = time.perf_counter() - started
    return result


async def wait_drained(url: str, key: str, timeout: float = 120.0, poll: float = DRAIN_POLL_S) -> float:
    """Poll ``GET /v1/lag`` every ``poll`` s until every issued token is visible; returns the seconds waited."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10.0) as client:
        while time.perf_counter() - started < timeout:
            response = await client.get("/v1/lag", headers={"Authorization": f"Bearer {key}"})
            response.raise_for_status()
            if response.json()["token_lag"] <= 0:
                break
            await asyncio.sleep(poll)
    return time.perf_counter() - started
