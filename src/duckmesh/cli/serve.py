"""The server processes: ``up`` (all in one), ``api``, ``coordinator``, ``compactor``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import typer
import uvicorn

from duckmesh.api.app import create_app, create_metrics_app
from duckmesh.bus.operations import lag_by_tenant, table_lag_all
from duckmesh.catalog import keys, migrate, tenants
from duckmesh.catalog.db import redact_dsn
from duckmesh.cli.runtime import ProcessRole, Runtime, catalog_dsn, cli_errors, load_settings, open_runtime
from duckmesh.config import Settings
from duckmesh.domain import ALL_ROLES
from duckmesh.errors import ConfigError
from duckmesh.maintenance.service import MaintenanceIntervals
from duckmesh.observability.sampler import run_lag_sampler

log = logging.getLogger("duckmesh")


class _Server(uvicorn.Server):
    """Uvicorn without its own signal capture: our handler stops API and workers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, setting: str = "DUCKMESH_HTTP_ADDR") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
    # listener says TCP; without it Nagle + delayed ACKs add ~40 ms to small responses.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listen at once: a second process on the same port must fail here, before it prints
        # or starts anything (SO_REUSEADDR alone lets two unlistened binds coexist on Linux).
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror}",
                          **{setting.removeprefix("DUCKMESH_").lower(): f"{host}:{port}"}) from None
    sock.set_inheritable(True)
    return sock


def _maintenance_intervals(settings: Settings) -> MaintenanceIntervals:
    return MaintenanceIntervals(
        settings.maintenance_compaction_interval_s, settings.maintenance_retention_interval_s,
        settings.maintenance_integrity_interval_s,
    )


def _workers(runtime: Runtime, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """The background work of the process's role, beside its HTTP server."""
    tasks: list[asyncio.Task[None]] = []
    if runtime.coordinator is not None:
        tasks.append(asyncio.create_task(runtime.coordinator.run(stop), name="coordinator"))
    if runtime.role.compacts and runtime.maintenance is not None:
        loops = runtime.maintenance.run_loops(stop, _maintenance_intervals(runtime.settings))
        tasks.append(asyncio.create_task(loops, name="maintenance"))
    api = runtime.api
    if api is not None:
        observe = api.ingest.admission.observe_pending
        sampler = run_lag_sampler(
            lambda: lag_by_tenant(runtime.pool), stop, on_pending=observe,
            tables=lambda limit: table_lag_all(runtime.pool, limit), refresh=[api.read_only.refresh],
        )
        tasks.append(asyncio.create_task(sampler, name="lag"))
    return tasks


async def _serve(runtime: Runtime, sock: socket.socket, metrics_sock: socket.socket | None) -> None:
    """Serve until SIGTERM/SIGINT or until a worker fails; then stop everything together."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = [(_Server(uvicorn.Config(
        create_app(runtime.web), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=10,
    )), sock, "http")]
    if metrics_sock is not None:
        servers.append((_Server(uvicorn.Config(
            create_metrics_app(), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
        )), metrics_sock, "metrics"))
    tasks = [asyncio.create_task(server.serve(sockets=[listening]), name=name) for server, listening, name in servers]
    tasks += _workers(runtime, stop)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for server, _, _ in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for task in done:
        failure = None if task is stopper else task.exception()
        if failure is not None:
            raise failure
    log.info("shutdown_complete")


async def _bootstrap(runtime: Runtime) -> None:
    """Ensure the bootstrap tenant has a key and print how to use it (once). Only ever creates a
    key (audited, actor ``bootstrap``): a revoked bootstrap key stays revoked."""
    settings = runtime.settings
    async with runtime.pool.connection() as conn:
        tenant = await tenants.ensure_tenant(conn, settings.bootstrap_tenant)
        secret = None
        if settings.bootstrap_api_key:
            existing = await tenants.find_key(conn, tenant.tenant_id, settings.bootstrap_api_key)
            if existing is None:
                await keys.create(conn, tenant.tenant_id, ALL_ROLES, key=settings.bootstrap_api_key, actor="bootstrap")
            elif existing.revoked_at is not None:
                log.warning("bootstrap_key_revoked", extra={
                    "key_id": existing.key_id, "hint": "DUCKMESH_BOOTSTRAP_API_KEY names a revoked key; it stays"
                    " revoked: unset it or set a new key"})
        elif not any(k.revoked_at is None for k in await tenants.list_keys(conn, tenant.tenant_id)):
            _, secret = await keys.create(conn, tenant.tenant_id, ALL_ROLES, actor="bootstrap")
    base = f"http://{settings.http_addr}"
    lines = [f"DuckMesh is up on {base}  (tenant: {tenant.name})", f"  web console: {base}/   API docs: {base}/docs"]
    if secret:
        lines += [
            f"API key for tenant {tenant.name!r}, all roles (shown once, store it now): {secret}",
            f"  curl -H 'Authorization: Bearer {secret}' {base}/v1/tables",
            f"  export DUCKMESH_SERVER={base} DUCKMESH_API_KEY={secret}",
            "  .venv/bin/duckmesh tables        # the client CLI (or: source .venv/bin/activate)",
        ]
    elif not settings.bootstrap_api_key:
        lines.append("The bootstrap tenant already has a key; create more with `duckmesh key create`.")
    if not settings.auth_required:
        log.warning("auth_disabled", extra={"hint": "DUCKMESH_AUTH_REQUIRED=false: X-Tenant-ID names the tenant"})
    print("\n".join(lines), flush=True)


def _run(role: ProcessRole) -> None:
    settings = load_settings(role.value)
    with cli_errors():
        # Bind first: a busy port fails before migrations, the catalog or any banner.
        sock = _bind(settings.http_host, settings.http_port)
        metrics_sock = None
        try:
            if settings.metrics_addr is not None:
                host, _, port = settings.metrics_addr.rpartition(":")
                metrics_sock = _bind(host.strip("[]"), int(port), "DUCKMESH_METRICS_ADDR")
            dsn = catalog_dsn(settings)
            if role is ProcessRole.UP:
                migrate.upgrade(dsn)
            log.info("starting", extra={"role": role.value, "catalog": redact_dsn(dsn),
                                        "http_addr": settings.http_addr, "metrics_addr": settings.metrics_addr})
            asyncio.run(_main(settings, dsn, role, sock, metrics_sock))
        finally:
            sock.close()
            if metrics_sock is not None:
                metrics_sock.close()


async def _main(
    settings: Settings, dsn: str, role: ProcessRole, sock: socket.socket, metrics_sock: socket.socket | None
) -> None:
    async with open_runtime(settings, dsn, role) as runtime:
        if role is ProcessRole.UP:
            await _bootstrap(runtime)
        elif role is ProcessRole.API and not settings.auth_required:
            log.warning("auth_disabled", extra={"hint": "X-Tenant-ID names the tenant"})
        await _serve(runtime, sock, metrics_sock)


def up() -> None:
    """Everything in one process: migrations, bootstrap tenant and key, API + console, coordinator, compactor."""
    _run(ProcessRole.UP)


def api() -> None:
    """Serve the HTTP API and the web console (run any number)."""
    _run(ProcessRole.API)


def coordinator() -> None:
    """Claim events, write Parquet, publish snapshots (run any number). Serves health/ready/metrics."""
    _run(ProcessRole.COORDINATOR)


def compactor() -> None:
    """Compaction, retention/GC and integrity loops (run any number). Serves health/ready/metrics."""
    _run(ProcessRole.COMPACTOR)


def register(app: typer.Typer, panel: str) -> None:
    for command in (up, api, coordinator, compactor):
        app.command(rich_help_panel=panel)(command)
