"""The composition root: settings -> adapters -> services, per process role.

Each role builds only what it runs: the api serves the data plane (ingest, query, tables,
maintenance on demand), the coordinator claims and publishes, the compactor runs the maintenance
loops; ``up`` is all three. Nothing else in the package reads settings or opens connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import typer
from pydantic import ValidationError

from duckmesh.api.context import AppContext, OpsContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog.db import CatalogPool, embedded_dsn
from duckmesh.catalog.liveness import Liveness
from duckmesh.catalog.notify import INGEST_CHANNEL, READ_ONLY_CHANNEL, Listener
from duckmesh.catalog.tenants import KEYS_CHANNEL, VerifiedKeys
from duckmesh.config import Settings, unknown_variables
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.errors import DuckMeshError, RemoteError
from duckmesh.ingest.backfill import BackfillLimits, BackfillService
from duckmesh.ingest.backpressure import Admission
from duckmesh.ingest.service import IngestService
from duckmesh.maintenance.compaction import CompactionPolicy
from duckmesh.maintenance.retention import RetentionPolicy
from duckmesh.maintenance.service import MaintenanceService
from duckmesh.observability.logging import configure
from duckmesh.query.assist import AssistConfig, QueryAssistant
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.query.engine import ExecutorConfig, QueryEngine
from duckmesh.query.service import QueryLimits, QueryService
from duckmesh.query.workers import WorkerLimits, WorkerPool
from duckmesh.storage.base import ObjectStore
from duckmesh.storage.cache import FileCache
from duckmesh.storage.factory import open_object_store

log = logging.getLogger(__name__)


class ProcessRole(StrEnum):
    UP = "up"
    API = "api"
    COORDINATOR = "coordinator"
    COMPACTOR = "compactor"

    @property
    def serves_api(self) -> bool:
        return self in (ProcessRole.UP, ProcessRole.API)

    @property
    def coordinates(self) -> bool:
        return self in (ProcessRole.UP, ProcessRole.COORDINATOR)

    @property
    def compacts(self) -> bool:
        return self in (ProcessRole.UP, ProcessRole.COMPACTOR)


def load_settings(service: str) -> Settings:
    """Settings from the environment (and duckmesh.toml); exit 2 naming every invalid variable."""
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
    for name, closest in unknown_variables(os.environ):
        # Ignored, as the process starts anyway; said once so a typo (or a reference implementation
        # name, docs/coming-from-reference.md) is not silently without effect.
        log.warning("unknown_setting", extra={"variable": name, "did_you_mean": closest})
    return settings


def catalog_dsn(settings: Settings) -> str:
    if settings.catalog_dsn:
        return settings.catalog_dsn
    return embedded_dsn(settings.state_dir)


def error_line(exc: DuckMeshError) -> str:
    """The one line a CLI prints for an error: the error code and the message."""
    if isinstance(exc, RemoteError):
        return f"error: {exc.server_code}: {exc.message}"
    return f"error: {exc.error_code}: {exc.message}"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Every DuckMesh error ends the command with one clear line on stderr and exit code 1."""
    try:
        yield
    except DuckMeshError as exc:
        typer.echo(error_line(exc), err=True)
        raise typer.Exit(1) from None


def bad_file_lines(context: dict[str, Any]) -> list[str]:
    """One line per bad file and dangling row of a failed integrity run."""
    lines = [f"bad file {f.get('path')} (file {f.get('file_id')}): {f.get('problem')}"
             for f in context.get("bad_files", [])]
    lines += [f"dangling catalog row {d.get('path')} (file {d.get('file_id')})"
              for d in context.get("dangling_rows", [])]
    return lines


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` on stderr; the caller raises the returned Exit."""
    print(message, file=sys.stderr, flush=True)
    return typer.Exit(code)


def build_query_service(
    settings: Settings, pool: CatalogPool, store: ObjectStore, barrier: VisibilityBarrier
) -> QueryService:
    cache = FileCache(store, settings.resolved_cache_dir, settings.cache_max_bytes)
    address_space = settings.resolved_query_worker_max_memory_bytes

    def workers(config: ExecutorConfig) -> WorkerPool:
        pool = WorkerPool(settings.query_workers, WorkerLimits(config, address_space))
        threading.Thread(target=pool.prestart, name="duckmesh-query-prestart", daemon=True).start()
        return pool

    per_tenant = settings.query_max_concurrency_per_tenant
    engine = QueryEngine(
        cache, memory_limit=settings.query_memory_limit, threads=settings.query_threads, cursors_per_tenant=1,
        max_result_bytes=settings.query_max_result_bytes,
        # A tenant's spill limit is shared by the queries it may run at once.
        max_spill_bytes=max(settings.query_max_spill_bytes // per_tenant, 1024 * 1024), backend=workers,
    )
    limits = QueryLimits(
        default_row_limit=settings.query_default_row_limit,
        max_row_limit=settings.query_max_row_limit,
        timeout=settings.query_timeout_ms / 1000,
        max_consistency_timeout=settings.max_consistency_timeout_ms / 1000,
        max_concurrency=min(settings.query_max_concurrency, settings.query_workers),
        max_concurrency_per_tenant=per_tenant,
        queue_timeout=settings.query_queue_timeout_ms / 1000,
        max_sql_bytes=settings.query_max_sql_bytes,
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


def build_ingest_service(
    settings: Settings, pool: CatalogPool, bus: PostgresBus, barrier: VisibilityBarrier
) -> IngestService:
    admission = Admission(rate_limit=settings.ingest_rate_limit, max_pending=settings.max_pending_events_per_tenant)
    return IngestService(
        pool, bus, max_records=settings.max_records_per_request, max_payload_bytes=settings.max_payload_bytes,
        wait_for_visibility=barrier.wait_for_ingest, admission=admission,
    )


def build_coordinator(settings: Settings, pool: CatalogPool, bus: PostgresBus, store: ObjectStore) -> Coordinator:
    return Coordinator(pool, bus, store, CoordinatorConfig(
        flush_interval=settings.flush_interval,
        max_batch_events=settings.coordinator_max_batch_events,
        max_batch_bytes=settings.coordinator_max_batch_bytes,
        lease_seconds=settings.coordinator_lease_seconds,
        max_attempts=settings.coordinator_max_attempts,
        **({"owner": settings.coordinator_id} if settings.coordinator_id else {}),
    ))


@dataclass
class Runtime:
    """What one process runs: its HTTP context plus the workers of its role."""

    role: ProcessRole
    settings: Settings
    pool: CatalogPool
    store: ObjectStore
    web: AppContext | OpsContext
    coordinator: Coordinator | None = None
    maintenance: MaintenanceService | None = None

    @property
    def api(self) -> AppContext | None:
        return self.web if isinstance(self.web, AppContext) else None


@asynccontextmanager
async def open_runtime(settings: Settings, dsn: str, role: ProcessRole) -> AsyncIterator[Runtime]:
    pool = CatalogPool(dsn, max_size=settings.catalog_pool_size, name=f"duckmesh-{role.value}")
    await pool.open()
    listener = Listener(dsn, (INGEST_CHANNEL,)) if role.coordinates else None
    liveness = Liveness(dsn) if role.coordinates else None
    barrier = VisibilityBarrier(pool, dsn, poll_interval=settings.barrier_poll_interval_ms / 1000)
    runtime: Runtime | None = None
    revocations: Listener | None = None
    switches: Listener | None = None  # read-only switch changes: the API's cache reloads at once
    try:
        if listener is not None:
            await listener.start()
        if liveness is not None:
            await liveness.start()
        store = open_object_store(settings)
        runtime = Runtime(role, settings, pool, store, OpsContext(settings, pool, store))
        bus = PostgresBus(pool, listener, liveness)
        if role.coordinates:
            runtime.coordinator = build_coordinator(settings, pool, bus, store)
        if role.serves_api or role.compacts:
            runtime.maintenance = build_maintenance_service(settings, pool, store)
        if role.serves_api and runtime.maintenance is not None:
            await barrier.start()
            keys = VerifiedKeys(ttl=settings.auth_cache_seconds)
            revocations = Listener(dsn, (KEYS_CHANNEL,), on_notify=keys.on_notify, on_connect=keys.clear)
            await revocations.start()
            runtime.web = AppContext(
                settings, pool, bus, store, build_ingest_service(settings, pool, bus, barrier),
                build_query_service(settings, pool, store, barrier), runtime.maintenance,
                BackfillService(pool, store, lease_seconds=settings.backfill_lease_seconds, limits=BackfillLimits(
                    settings.max_backfill_rows, settings.max_backfill_decoded_bytes, settings.max_payload_bytes)),
                assist=build_query_assist(settings), keys=keys,
            )
            switches = Listener(dsn, (READ_ONLY_CHANNEL,), runtime.web.read_only.invalidate)
            await switches.start()
        yield runtime
    finally:
        if runtime is not None and isinstance(runtime.web, AppContext):
            await runtime.web.query.close()
        if revocations is not None:
            await revocations.stop()
        if switches is not None:
            await switches.stop()
        await barrier.stop()
        if listener is not None:
            await listener.stop()
        if liveness is not None:
            await liveness.stop()
        await pool.close()
