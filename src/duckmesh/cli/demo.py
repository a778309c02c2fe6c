"""``duckmesh demo``: a multi-tenant web-analytics generator over HTTP (docs/examples.md)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from duckmesh.catalog import tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.cli.runtime import catalog_dsn, cli_errors, load_settings
from duckmesh.client.aio import AsyncClient
from duckmesh.client.config import resolve
from duckmesh.client.demo import DemoPlan, Site, create_tables, run
from duckmesh.domain import ALL_ROLES

out = Console(highlight=False)


async def _demo_keys(count: int) -> list[tuple[str, str]]:
    """Tenants demo_1..demo_N (created if missing), each with a new all-roles key, via the catalog."""
    settings = load_settings("demo")
    keys: list[tuple[str, str]] = []
    async with CatalogPool(catalog_dsn(settings), max_size=2, name="duckmesh-cli") as pool, \
            pool.connection() as conn:
        for number in range(1, count + 1):
            tenant = await tenants.ensure_tenant(conn, f"demo_{number}")
            _, secret = await tenants.create_key(conn, tenant.tenant_id, ALL_ROLES)
            keys.append((tenant.name, secret))
    return keys


def _report(every: float) -> Callable[[list[Site], float], None]:
    last = [0.0]

    def report(sites: list[Site], elapsed: float) -> None:
        if elapsed - last[0] >= every:
            last[0] = elapsed
            sent = sum(site.sent for site in sites)
            out.print(f"[dim]{elapsed:6.1f} s[/dim]  {sent:,} events sent ({sent / max(elapsed, 0.001):,.0f}/s)  "
                      + "  ".join(f"{site.name}: token {site.last_token}" for site in sites))

    return report


async def _main(tenant_count: int, plan: DemoPlan, server: str | None, key: str | None, profile: str | None) -> None:
    connection = resolve(server, key, profile)
    keys = await _demo_keys(tenant_count) if tenant_count else [("(your key's tenant)", connection.key or "")]
    run_id = secrets.token_hex(3)
    clients = [AsyncClient(connection.server, secret, timeout=60) for _, secret in keys]
    sites = [Site(name, client, random.Random(plan.seed + index), run_id)
             for index, ((name, _), client) in enumerate(zip(keys, clients, strict=True))]
    try:
        for (name, secret), client in zip(keys, clients, strict=True):
            await create_tables(client)
            if tenant_count:
                out.print(f"tenant {name}: key {secret}")
        until = f"for {plan.duration:g} s" if plan.duration > 0 else "Ctrl-C stops"
        out.print(f"sending ~{plan.rate:g} events/s to {connection.server} ({until})")
        with contextlib.suppress(asyncio.CancelledError):
            await run(sites, plan, _report(5.0))
    finally:
        for client in clients:
            await client.aclose()
    total = sum(site.sent for site in sites)
    out.print(f"done: {total:,} events; last tokens " + ", ".join(f"{s.name} {s.last_token}" for s in sites))
    out.print("queries to try: docs/examples.md, e.g. duckmesh sql "
              "\"SELECT path, count(*) FROM pageviews GROUP BY path ORDER BY 2 DESC\"")


def demo(
    tenant_count: Annotated[int, typer.Option("--tenants", min=0, max=50, help="create demo tenants demo_1..N "
                                              "through the catalog (0: use --key's tenant)")] = 0,
    rate: Annotated[float, typer.Option("--rate", min=1, help="events per second, all tenants together")] = 100,
    duration: Annotated[float, typer.Option("--duration", min=0, help="seconds (0: until Ctrl-C)")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same visitors)")] = 7,
    server: Annotated[str | None, typer.Option("--server", help="server URL [env: DUCKMESH_SERVER]")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key [env: DUCKMESH_API_KEY]")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="client profile")] = None,
) -> None:
    """Stream a realistic web-analytics workload (pageviews, signups, purchases, users) over HTTP.

    Needs a server; with --tenants also the catalog (to create the demo tenants and their keys)."""
    with cli_errors():
        try:
            asyncio.run(_main(tenant_count, DemoPlan(rate, duration, seed), server, key, profile))
        except KeyboardInterrupt:
            out.print("stopped")


def register(app: typer.Typer, panel: str) -> None:
    app.command("demo", rich_help_panel=panel)(demo)
