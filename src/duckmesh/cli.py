"""The ``duckmesh`` command: the one place that wires settings -> adapters -> services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext
from duckmesh.bus.operations import lag_by_tenant
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import audit, migrate, tenants
from duckmesh.catalog.db import CatalogPool, embedded_dsn, redact_dsn
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.config import Settings
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import ALL_ROLES, Role, TenantId
from duckmesh.errors import ConfigError, DuckMeshError
from duckmesh.ingest.backfill import BackfillService
from duckmesh.ingest.backpressure import Admission
from duckmesh.ingest.service import IngestService
from duckmesh.maintenance.compaction import CompactionPolicy
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.maintenance.service import MaintenanceIntervals, MaintenanceService
from duckmesh.observability.logging import configure
from duckmesh.observability.sampler import run_lag_sampler
from duckmesh.query.assist import AssistConfig, QueryAssistant
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.query.engine import QueryEngine
from duckmesh.query.service import QueryLimits, QueryService
from duckmesh.storage.base import ObjectStore
from duckmesh.storage.cache import FileCache
from duckmesh.storage.factory import open_object_store

log = logging.getLogger("duckmesh")
app = typer.Typer(
    help="DuckMesh: HTTP ingest -> Parquet snapshots -> DuckDB SQL.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Catalog schema migrations.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
compaction_app = typer.Typer(help="Compaction.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention and garbage collection.", no_args_is_help=True)
integrity_app = typer.Typer(help="Integrity validation.", no_args_is_help=True)
app.add_typer(compaction_app, name="compaction")
app.add_typer(retention_app, name="retention")
app.add_typer(integrity_app, name="integrity")


def load_settings(service: str) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            where = "_".join(str(p) for p in err["loc"]).upper()
            # A check across settings (no single field) names its variables in its message.
            prefix = f"DUCKMESH_{where}: " if where else ""
            typer.echo(f"configuration error: {prefix}{err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    configure(f"{settings.service_name}-{service}", settings.log_level, settings.log_format)
    return settings


def catalog_dsn(settings: Settings) -> str:
    if settings.catalog_dsn:
        return settings.catalog_dsn
    return embedded_dsn(settings.state_dir)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    try:
        yield
    except DuckMeshError as exc:
        typer.echo(f"error: {exc.error_code}: {exc.message}", err=True)
        raise typer.Exit(1) from None


@dataclass
class Runtime:
    settings: Settings
    pool: CatalogPool
    bus: PostgresBus
    ctx: AppContext
    work_listener: Listener | None


def build_query_service(
    settings: Settings, pool: CatalogPool, store: ObjectStore, barrier: VisibilityBarrier
) -> QueryService:
    cache = FileCache(store, settings.resolved_cache_dir, settings.cache_max_bytes)
    engine = QueryEngine(cache, memory_limit=settings.query_memory_limit, threads=settings.query_threads)
    limits = QueryLimits(
        default_row_limit=settings.query_default_row_limit,
        max_row_limit=settings.query_max_row_limit,
        timeout=settings.query_timeout_ms / 1000,
        max_consistency_timeout=settings.max_consistency_timeout_ms / 1000,
        max_concurrency=settings.query_max_concurrency,
        queue_timeout=settings.query_queue_timeout_ms / 1000,
    )
    return QueryService(pool, engine, barrier, limits)


def build_query_assist(settings: Settings) -> QueryAssistant | None:
    """The query assistant, or None when DUCKMESH_AI_TRANSLATE_ENABLED is off."""
    if not (settings.ai_translate_enabled and settings.ai_base_url and settings.ai_model):
        return None
    key = settings.ai_api_key.get_secret_value() if settings.ai_api_key else None
    return QueryAssistant(AssistConfig(
        settings.ai_base_url, settings.ai_model, key, settings.ai_timeout.total_seconds(), settings.ai_temperature,
    ))


def build_maintenance_service(settings: Settings, pool: CatalogPool, store: ObjectStore) -> MaintenanceService:
    owner = settings.maintenance_created_by or f"compactor:{socket.gethostname()}:{os.getpid()}"
    compaction = CompactionPolicy(
        min_input_files=settings.maintenance_compaction_min_input_files,
        target_file_bytes=settings.maintenance_compaction_target_file_bytes,
        max_input_bytes=settings.maintenance_compaction_max_input_bytes,
        memory_limit=settings.query_memory_limit,
        lease_seconds=settings.maintenance_job_lease_seconds,
    )
    retention = RetentionPolicy(
        keep_snapshots=settings.maintenance_keep_snapshots,
        snapshot_min_age=settings.maintenance_snapshot_min_age,
        gc_safety_age=settings.maintenance_gc_safety_age,
        idempotency_window=settings.idempotency_window,
        dead_letter_retention=settings.dead_letter_retention,
    )
    return MaintenanceService(pool, store, compaction, retention, owner, settings.state_dir.resolve() / "scratch")


@asynccontextmanager
async def open_runtime(settings: Settings, dsn: str, *, api: bool, coordinator: bool) -> AsyncIterator[Runtime]:
    pool = CatalogPool(dsn, max_size=settings.catalog_pool_size)
    await pool.open()
    listener = Listener(dsn, (INGEST_CHANNEL,)) if coordinator else None
    barrier = VisibilityBarrier(pool, dsn, poll_interval=settings.barrier_poll_interval_ms / 1000)
    try:
        if listener is not None:
            await listener.start()
        if api:
            await barrier.start()
        bus = PostgresBus(pool, listener)
        store = open_object_store(settings)
        admission = Admission(
            rate_limit=settings.ingest_rate_limit, max_pending=settings.max_pending_events_per_tenant
        )
        ingest = IngestService(
            pool, bus, max_records=settings.max_records_per_request, max_payload_bytes=settings.max_payload_bytes,
            wait_for_visibility=barrier.wait_for_ingest, admission=admission,
        )
        query = build_query_service(settings, pool, store, barrier)
        maintenance = build_maintenance_service(settings, pool, store)
        backfill = BackfillService(pool, store, lease_seconds=settings.backfill_lease_seconds)
        context = AppContext(settings, pool, bus, store, ingest, query, maintenance, backfill,
                             assist=build_query_assist(settings))
        yield Runtime(settings, pool, bus, context, listener)
    finally:
        await barrier.stop()
        if listener is not None:
            await listener.stop()
        await pool.close()


class _Server(uvicorn.Server):
    """Uvicorn without its own signal capture: our handler stops API and workers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
    # listener says TCP; without it Nagle + delayed ACKs add ~40 ms to small responses.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", http_addr=f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock


async def _serve(runtime: Runtime, *, api: bool, coordinator: bool, compactor: bool = False) -> None:
    settings = runtime.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    web = create_app(runtime.ctx, serve_data_api=api)
    server = _Server(uvicorn.Config(
        web, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False,
        lifespan="off", timeout_graceful_shutdown=10,
    ))
    sock = _bind(settings.http_host, settings.http_port)
    tasks = [asyncio.create_task(server.serve(sockets=[sock]), name="http")]
    if coordinator:
        worker = Coordinator(runtime.pool, runtime.bus, runtime.ctx.store, CoordinatorConfig(
            flush_interval=settings.flush_interval,
            max_batch_events=settings.coordinator_max_batch_events,
            max_batch_bytes=settings.coordinator_max_batch_bytes,
            lease_seconds=settings.coordinator_lease_seconds,
            max_attempts=settings.coordinator_max_attempts,
            **({"owner": settings.coordinator_id} if settings.coordinator_id else {}),
        ))
        tasks.append(asyncio.create_task(worker.run(stop), name="coordinator"))
    if compactor:
        intervals = MaintenanceIntervals(
            settings.maintenance_compaction_interval_s, settings.maintenance_retention_interval_s,
            settings.maintenance_integrity_interval_s,
        )
        tasks.append(asyncio.create_task(runtime.ctx.maintenance.run_loops(stop, intervals), name="maintenance"))
    if api:
        admission = runtime.ctx.ingest.admission
        tasks.append(asyncio.create_task(
            run_lag_sampler(lambda: lag_by_tenant(runtime.pool), stop, on_pending=admission.observe_pending), name="lag"
        ))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for task in done:
        if task is not stopper and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    log.info("shutdown_complete")


async def _bootstrap(runtime: Runtime) -> None:
    settings = runtime.settings
    async with runtime.pool.connection() as conn:
        tenant = await tenants.ensure_tenant(conn, settings.bootstrap_tenant)
        if settings.bootstrap_api_key:
            await tenants.create_key(conn, tenant.tenant_id, ALL_ROLES, settings.bootstrap_api_key)
            secret = None
        elif any(k.revoked_at is None for k in await tenants.list_keys(conn, tenant.tenant_id)):
            secret = None
        else:
            _, secret = await tenants.create_key(conn, tenant.tenant_id, ALL_ROLES)
    base = f"http://{settings.http_addr}"
    lines = [f"DuckMesh is up on {base}  (tenant: {tenant.name})"]
    if secret:
        lines += [
            f"API key for tenant {tenant.name!r}, all roles (shown once, store it now): {secret}",
            f"  curl -H 'Authorization: Bearer {secret}' {base}/v1/tables",
        ]
    elif not settings.bootstrap_api_key:
        lines.append("The bootstrap tenant already has a key; create more with `duckmesh key create`.")
    if not settings.auth_required:
        log.warning("auth_disabled", extra={"hint": "DUCKMESH_AUTH_REQUIRED=false: X-Tenant-ID names the tenant"})
    print("\n".join(lines), flush=True)


@app.command()
def up() -> None:
    """Everything in one process: embedded catalog (unless configured), API, coordinator."""
    settings = load_settings("up")
    dsn = catalog_dsn(settings)
    migrate.upgrade(dsn)
    log.info("starting", extra={"catalog": redact_dsn(dsn), "http_addr": settings.http_addr})

    async def main() -> None:
        async with open_runtime(settings, dsn, api=True, coordinator=True) as runtime:
            await _bootstrap(runtime)
            await _serve(runtime, api=True, coordinator=True, compactor=True)

    with cli_errors():
        asyncio.run(main())


@app.command()
def api() -> None:
    """Serve the HTTP API (run any number)."""
    settings = load_settings("api")
    dsn = catalog_dsn(settings)

    async def main() -> None:
        async with open_runtime(settings, dsn, api=True, coordinator=False) as runtime:
            if not settings.auth_required:
                log.warning("auth_disabled", extra={"hint": "X-Tenant-ID names the tenant"})
            await _serve(runtime, api=True, coordinator=False)

    with cli_errors():
        asyncio.run(main())


@app.command()
def coordinator() -> None:
    """Claim events, write Parquet, publish snapshots (run any number). Serves health/ready/metrics."""
    settings = load_settings("coordinator")
    dsn = catalog_dsn(settings)

    async def main() -> None:
        async with open_runtime(settings, dsn, api=False, coordinator=True) as runtime:
            await _serve(runtime, api=False, coordinator=True)

    with cli_errors():
        asyncio.run(main())


@app.command()
def compactor() -> None:
    """Compaction, retention/GC and integrity loops (run any number). Serves health/ready/metrics."""
    settings = load_settings("compactor")
    dsn = catalog_dsn(settings)

    async def main() -> None:
        async with open_runtime(settings, dsn, api=False, coordinator=False) as runtime:
            await _serve(runtime, api=False, coordinator=False, compactor=True)

    with cli_errors():
        asyncio.run(main())


def _run_maintenance(job):  # type: ignore[no-untyped-def]
    settings = load_settings("cli")
    dsn = catalog_dsn(settings)

    async def main():  # type: ignore[no-untyped-def]
        async with CatalogPool(dsn, max_size=4) as pool:
            service = build_maintenance_service(settings, pool, open_object_store(settings))
            return await job(pool, service)

    with cli_errors():
        typer.echo(json.dumps(asyncio.run(main()), default=str))


async def _tenant_id(pool: CatalogPool, name: str) -> TenantId:
    async with pool.connection() as conn:
        return (await tenants.get_tenant(conn, name)).tenant_id


@compaction_app.command("run")
def compaction_run(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    table: Annotated[str | None, typer.Option(help="only this table")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, change nothing")] = False,
) -> None:
    """Compact small files of the tenant's tables now."""

    async def job(pool: CatalogPool, service: MaintenanceService) -> Any:
        return await service.compact(await _tenant_id(pool, tenant), table, dry_run)

    _run_maintenance(job)


@retention_app.command("run")
def retention_run(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only, change nothing")] = False,
) -> None:
    """Expire snapshots, delete unreferenced files and orphans, clean the ingest bus."""

    async def job(pool: CatalogPool, service: MaintenanceService) -> Any:
        return await service.retain(await _tenant_id(pool, tenant), dry_run)

    _run_maintenance(job)


@integrity_app.command("run")
def integrity_run(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    deep: Annotated[bool, typer.Option("--deep", help="also verify content hashes and row counts")] = False,
) -> None:
    """Check every retained file against the object store (exit 1 and list bad files on failure)."""

    async def job(pool: CatalogPool, service: MaintenanceService) -> Any:
        return await service.validate(await _tenant_id(pool, tenant), deep)

    _run_maintenance(job)


@migrate_app.command("up")
def migrate_up(target: Annotated[int | None, typer.Option(help="stop at this version")] = None) -> None:
    settings = load_settings("cli")
    applied = migrate.upgrade(catalog_dsn(settings), target)
    typer.echo(f"applied: {applied or 'nothing (up to date)'}")


@migrate_app.command("down")
def migrate_down(target: Annotated[int, typer.Option(help="revert to this version")] = 0) -> None:
    settings = load_settings("cli")
    reverted = migrate.downgrade(catalog_dsn(settings), target)
    typer.echo(f"reverted: {reverted or 'nothing'}")


@migrate_app.command("status")
def migrate_status() -> None:
    settings = load_settings("cli")
    typer.echo(json.dumps(migrate.status(catalog_dsn(settings))))


def _run_catalog(coro_factory):  # type: ignore[no-untyped-def]
    settings = load_settings("cli")
    dsn = catalog_dsn(settings)

    async def main():  # type: ignore[no-untyped-def]
        async with CatalogPool(dsn, max_size=2) as pool, pool.connection() as conn:
            return await coro_factory(conn)

    with cli_errors():
        return asyncio.run(main())


@tenant_app.command("create")
def tenant_create(name: str) -> None:
    async def create(conn):  # type: ignore[no-untyped-def]
        created = await tenants.create_tenant(conn, name)
        await audit.record(conn, None, "tenant.create", "tenant", str(created.tenant_id), {"name": name},
                           tenant_id=created.tenant_id, actor="cli")
        return created

    tenant = _run_catalog(create)
    typer.echo(json.dumps({"tenant_id": tenant.tenant_id, "name": tenant.name}))


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    role: Annotated[list[Role], typer.Option(help="role (repeatable)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    async def create(conn):  # type: ignore[no-untyped-def]
        found = await tenants.get_tenant(conn, tenant)
        created = await tenants.create_key(conn, found.tenant_id, role)
        await audit.record(conn, None, "key.create", "api_key", created[0].key_id,
                           {"roles": [r.value for r in role]}, tenant_id=found.tenant_id, actor="cli")
        return created

    key, secret = _run_catalog(create)
    out = {"key_id": key.key_id, "key": secret, "tenant_id": key.tenant_id, "roles": [r.value for r in key.roles]}
    typer.echo(json.dumps(out) if as_json else f"key {key.key_id} (shown once): {secret}  roles: {out['roles']}")


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    async def revoke(conn):  # type: ignore[no-untyped-def]
        revoked = await tenants.revoke_key(conn, key_id)
        await audit.record(conn, None, "key.revoke", "api_key", key_id, {}, tenant_id=revoked.tenant_id, actor="cli")
        return revoked

    key = _run_catalog(revoke)
    typer.echo(json.dumps({"key_id": key.key_id, "revoked_at": key.revoked_at.isoformat()}))


@key_app.command("list")
def key_list(tenant: Annotated[str, typer.Option(help="tenant name")]) -> None:
    async def listing(conn):  # type: ignore[no-untyped-def]
        found = await tenants.get_tenant(conn, tenant)
        return await tenants.list_keys(conn, found.tenant_id)

    for key in _run_catalog(listing):
        typer.echo(json.dumps({
            "key_id": key.key_id, "roles": [r.value for r in key.roles], "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }))


def main() -> None:
    app(prog_name="duckmesh")


if __name__ == "__main__":
    main()
