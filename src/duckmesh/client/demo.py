"""A web-analytics workload for demos: sites whose visitors view pages, some sign up, some buy.

Each tenant is one customer's site with four tables: ``pageviews`` and ``signups`` and
``purchases`` (append-only events) and ``users`` (keyed: the latest profile per user). Sessions walk
a funnel (landing → product → pricing → signup → checkout) with drop-off at every step, so the
example queries in docs/examples.md (funnels, time buckets, joins, read-after-write) have
something to find. Everything goes through the HTTP API with ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from duckmesh.client.aio import AsyncClient
from duckmesh.errors import RemoteError

TABLES: list[dict[str, Any]] = [
    {"table_name": "pageviews", "columns": [
        {"name": "view_id", "type": "string", "nullable": False}, {"name": "session_id", "type": "string"},
        {"name": "user_id", "type": "int64"}, {"name": "path", "type": "string"},
        {"name": "referrer", "type": "string"},
        {"name": "country", "type": "string"}, {"name": "device", "type": "string"},
        {"name": "duration_ms", "type": "int32"}, {"name": "at", "type": "timestamp"}]},
    {"table_name": "signups", "columns": [
        {"name": "user_id", "type": "int64", "nullable": False}, {"name": "session_id", "type": "string"},
        {"name": "plan", "type": "string"}, {"name": "at", "type": "timestamp"}]},
    {"table_name": "purchases", "columns": [
        {"name": "order_id", "type": "string", "nullable": False}, {"name": "user_id", "type": "int64"},
        {"name": "session_id", "type": "string"}, {"name": "amount", "type": "decimal(10,2)"},
        {"name": "currency", "type": "string"}, {"name": "at", "type": "timestamp"}]},
    {"table_name": "users", "primary_key": ["user_id"], "columns": [
        {"name": "user_id", "type": "int64", "nullable": False}, {"name": "country", "type": "string"},
        {"name": "plan", "type": "string"}, {"name": "lifetime_value", "type": "decimal(12,2)"},
        {"name": "updated_at", "type": "timestamp"}]},
]
FUNNEL = ["/", "/product", "/pricing", "/signup", "/checkout"]
# Probability that a session goes on from each step to the next.
CONTINUE = [0.7, 0.5, 0.35, 0.6]
COUNTRIES = ["US", "DE", "FR", "GB", "IN", "BR", "JP", "CA"]
DEVICES = ["desktop", "mobile", "tablet"]
REFERRERS = ["google", "direct", "newsletter", "twitter", "partner"]
PLANS = {"starter": "9.00", "team": "49.00", "business": "199.00"}


@dataclass
class Site:
    """One tenant's site: its client, its running counters and the events not sent yet."""

    name: str
    client: AsyncClient
    rng: random.Random
    run: str
    next_user: int = 1
    sequence: int = 0
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sent: int = 0
    last_token: int = 0

    def key(self) -> str:
        self.sequence += 1
        return f"demo-{self.run}-{self.sequence}"

    def add(self, table: str, op: str, payload: dict[str, Any]) -> None:
        self.pending.setdefault(table, []).append({"idempotency_key": self.key(), "op": op, "payload": payload})


def session(site: Site, now: datetime) -> int:
    """One visit walking the funnel; returns the number of events it produced."""
    rng = site.rng
    session_id = f"s-{site.run}-{site.sequence}"
    user_id = rng.randint(1, max(1, site.next_user)) if rng.random() < 0.3 else None
    country, device, referrer = rng.choice(COUNTRIES), rng.choice(DEVICES), rng.choice(REFERRERS)
    at = now - timedelta(seconds=rng.uniform(0, 2))
    produced = 0
    for step, path in enumerate(FUNNEL):
        if step and rng.random() > CONTINUE[step - 1]:
            break
        if path == "/signup" and user_id is None:
            user_id = site.next_user
            site.next_user += 1
            plan = rng.choice(list(PLANS))
            site.add("signups", "insert", {"user_id": user_id, "session_id": session_id, "plan": plan, "at": _ts(at)})
            site.add("users", "upsert", {"user_id": user_id, "country": country, "plan": plan,
                                         "lifetime_value": "0.00", "updated_at": _ts(at)})
            produced += 2
        if path == "/checkout" and user_id is not None:
            plan = rng.choice(list(PLANS))
            site.add("purchases", "insert", {"order_id": f"o-{site.key()}", "user_id": user_id,
                                             "session_id": session_id, "amount": PLANS[plan], "currency": "USD",
                                             "at": _ts(at)})
            site.add("users", "upsert", {"user_id": user_id, "country": country, "plan": plan,
                                         "lifetime_value": PLANS[plan], "updated_at": _ts(at)})
            produced += 2
        site.add("pageviews", "insert", {
            "view_id": f"v-{site.key()}", "session_id": session_id, "user_id": user_id, "path": path,
            "referrer": referrer if step == 0 else "internal", "country": country, "device": device,
            "duration_ms": rng.randint(200, 60_000), "at": _ts(at)})
        produced += 1
        at += timedelta(seconds=rng.uniform(1, 30))
    return produced


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def create_tables(client: AsyncClient) -> None:
    """The demo tables, unless they exist (a re-run keeps adding to them)."""
    for definition in TABLES:
        try:
            await client.create_table(definition)
        except RemoteError as exc:
            if exc.server_code != "TABLE_EXISTS":
                raise


async def flush(site: Site) -> None:
    pending, site.pending = site.pending, {}
    for table, records in pending.items():
        receipt = await site.client.ingest(table, records)
        site.sent += len(records)
        site.last_token = max(site.last_token, receipt.max_visibility_token)


@dataclass(frozen=True)
class DemoPlan:
    rate: float
    duration: float
    seed: int
    tick: float = 0.5


async def run(sites: list[Site], plan: DemoPlan, report: Callable[[list[Site], float], None]) -> None:
    """Generate about ``rate`` events/s across the sites for ``duration`` seconds (0: until cancelled)."""
    started = time.monotonic()
    owed = 0.0
    while plan.duration <= 0 or time.monotonic() - started < plan.duration:
        tick_started = time.monotonic()
        owed += plan.rate * plan.tick
        now = datetime.now(UTC)
        while owed >= 1:
            site = sites[int(owed) % len(sites)]
            owed -= session(site, now)
        await asyncio.gather(*(flush(site) for site in sites))
        report(sites, time.monotonic() - started)
        await asyncio.sleep(max(0.0, plan.tick - (time.monotonic() - tick_started)))
