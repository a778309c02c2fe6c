"""Query orchestration: resolve the snapshot (and wait for the barrier), check the SQL, bind
the tenant's tables to the snapshot's files, run it in DuckDB off the event loop, audit it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from duckmesh.catalog import snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import DataFile
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import SnapshotId, TableId, TenantId
from duckmesh.errors import (
    DuckMeshError,
    QueryConcurrencyLimit,
    RequestInvalid,
    SnapshotSelectorConflict,
    SqlRequired,
    TokenScopeMismatch,
    VisibilityTokenInvalid,
)
from duckmesh.observability import metrics
from duckmesh.query import sandbox
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.query.engine import BoundTable, EngineResult, QueryEngine
from duckmesh.query.models import QueryRequest
from duckmesh.schema import TableSchema, parse_timestamp

log = logging.getLogger(__name__)
_FILE_SET_CACHE = 512


@dataclass(frozen=True)
class QueryLimits:
    default_row_limit: int = 10_000
    max_row_limit: int = 1_000_000
    timeout: float = 30.0
    max_consistency_timeout: float = 60.0
    max_concurrency: int = 8
    queue_timeout: float = 2.0


@dataclass(frozen=True)
class ResolvedSnapshot:
    snapshot_id: SnapshotId | None
    created_at: datetime | None
    watermark: int
    wait_ms: float
    pinned_by_request: bool


@dataclass
class QueryOutcome:
    result: EngineResult
    snapshot: ResolvedSnapshot
    duration_ms: float
    scanned_files: int
    scanned_bytes: int


class QueryService:
    def __init__(self, pool: CatalogPool, engine: QueryEngine, barrier: VisibilityBarrier, limits: QueryLimits) -> None:
        self._pool = pool
        self._engine = engine
        self._barrier = barrier
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._file_sets: OrderedDict[tuple[TenantId, SnapshotId], list[DataFile]] = OrderedDict()
        self._schemas: dict[tuple[TableId, int], TableSchema] = {}

    async def resolve(self, tenant_id: TenantId, request: QueryRequest) -> ResolvedSnapshot:
        if request.snapshot_id is not None and request.snapshot_time is not None:
            raise SnapshotSelectorConflict("give snapshot_id or snapshot_time, not both")
        token = request.min_visibility_token
        if request.snapshot_id is None and request.snapshot_time is None:
            if token is not None:
                timeout = min(request.consistency_timeout_ms / 1000, self.limits.max_consistency_timeout)
                head = await self._barrier.wait(tenant_id, token, timeout)
                created = await self._created_at(tenant_id, head.snapshot_id)
                return ResolvedSnapshot(head.snapshot_id, created, head.watermark, head.waited_ms, False)
            async with self._pool.connection() as conn:
                latest, created = await snapshots.head_with_time(conn, tenant_id)
            return ResolvedSnapshot(latest.snapshot_id, created, latest.max_visibility_token, 0.0, False)
        async with self._pool.connection() as conn:
            if request.snapshot_id is not None:
                found = await snapshots.get_snapshot(conn, tenant_id, request.snapshot_id)
            else:
                try:
                    moment = parse_timestamp(request.snapshot_time)
                except ValueError as exc:
                    raise RequestInvalid(f"snapshot_time: {exc}") from None
                found = await snapshots.snapshot_at(conn, tenant_id, moment)
            if token is not None:
                issued = await snapshots.issued_token(conn, tenant_id)
                if token < 1 or token > issued:
                    raise VisibilityTokenInvalid(
                        "the token was never issued to this tenant", min_visibility_token=token
                    )
                if found.max_visibility_token < token:
                    raise TokenScopeMismatch(
                        "the chosen snapshot does not cover the requested token",
                        snapshot_id=found.snapshot_id, snapshot_watermark=found.max_visibility_token,
                        min_visibility_token=token,
                    )
        return ResolvedSnapshot(found.snapshot_id, found.created_at, found.max_visibility_token, 0.0, True)

    async def _live_files(self, tenant_id: TenantId, snapshot_id: SnapshotId | None) -> list[DataFile]:
        """A snapshot's file set never changes while it is retained: cache it per process."""
        if snapshot_id is None:
            return []
        key = (tenant_id, snapshot_id)
        cached = self._file_sets.get(key)
        if cached is None:
            async with self._pool.connection() as conn:
                cached = await snapshots.live_files(conn, tenant_id, snapshot_id)
            self._file_sets[key] = cached
            while len(self._file_sets) > _FILE_SET_CACHE:
                self._file_sets.popitem(last=False)
        else:
            self._file_sets.move_to_end(key)
        return cached

    async def _schema_versions(self, wanted: set[tuple[TableId, int]]) -> dict[tuple[TableId, int], TableSchema]:
        """Schema versions are immutable: fetch each once per process."""
        missing = wanted - self._schemas.keys()
        if missing:
            async with self._pool.connection() as conn:
                self._schemas.update(await tables.schemas_by_version(conn, sorted({t for t, _ in missing})))
        return {key: self._schemas[key] for key in wanted}

    async def _created_at(self, tenant_id: TenantId, snapshot_id: SnapshotId | None) -> datetime | None:
        if snapshot_id is None:
            return None
        async with self._pool.connection() as conn:
            return (await snapshots.get_snapshot(conn, tenant_id, snapshot_id)).created_at

    async def _tables(self, tenant_id: TenantId, resolved: ResolvedSnapshot) -> dict[str, TableDef]:
        """The tenant's tables as the snapshot sees them (time travel: as they were then)."""
        async with self._pool.connection() as conn:
            if resolved.pinned_by_request and resolved.created_at is not None:
                found = await tables.tables_at(conn, tenant_id, resolved.created_at)
            else:
                found = await tables.list_tables(conn, tenant_id)
        return {t.table_name: t for t in found}

    async def _bind(
        self, tenant_id: TenantId, snapshot_id: SnapshotId | None, defs: dict[str, TableDef], names: frozenset[str]
    ) -> list[BoundTable]:
        used = {name: table for name, table in defs.items() if name in names}
        files = await self._live_files(tenant_id, snapshot_id)
        versions = await self._schema_versions(
            {(t.table_id, f.schema_version) for t in used.values() for f in files if f.table_id == t.table_id}
        )
        bound = []
        for name, table in sorted(used.items()):
            mine = [f for f in files if f.table_id == table.table_id]
            written = tuple(dict.fromkeys(versions[(table.table_id, f.schema_version)] for f in mine))
            bound.append(BoundTable(
                name, table.schema, tuple(f.path for f in mine), sum(f.file_size_bytes for f in mine), written,
            ))
        return bound

    async def execute(self, principal: Principal, request: QueryRequest, trace_id: str | None) -> QueryOutcome:
        started = time.perf_counter()
        tenant_id = principal.tenant_id
        status, error_code = "ok", None
        outcome: QueryOutcome | None = None
        try:
            outcome = await self._execute(principal, request, started)
            return outcome
        except DuckMeshError as exc:
            status, error_code = "error", exc.error_code
            raise
        finally:
            duration = time.perf_counter() - started
            metrics.QUERY_REQUESTS.labels(str(tenant_id), status).inc()
            metrics.QUERY_LATENCY.labels(str(tenant_id)).observe(duration)
            await self._audit(principal, request, outcome, duration, status, error_code, trace_id)

    async def _execute(self, principal: Principal, request: QueryRequest, started: float) -> QueryOutcome:
        tenant_id = principal.tenant_id
        if not request.sql or not request.sql.strip():
            raise SqlRequired("the request has no sql")
        row_limit = min(request.row_limit or self.limits.default_row_limit, self.limits.max_row_limit)
        resolved = await self.resolve(tenant_id, request)
        lease_id = None
        if resolved.pinned_by_request and resolved.snapshot_id is not None:
            # Lease first, then re-check: either retention sees the lease and keeps the snapshot,
            # or it expired the snapshot before the lease and the query answers 404 (never
            # reads files GC may be deleting).
            async with self._pool.connection() as conn:
                lease_id = await snapshots.acquire_lease(
                    conn, tenant_id, resolved.snapshot_id, self._owner, self.limits.timeout + 60
                )
                try:
                    await snapshots.get_snapshot(conn, tenant_id, resolved.snapshot_id, lock=True)
                except DuckMeshError:
                    await snapshots.release_lease(conn, lease_id)
                    raise
        try:
            defs = await self._tables(tenant_id, resolved)
            checked = sandbox.check(request.sql, defs)
            bound = await self._bind(tenant_id, resolved.snapshot_id, defs, checked.tables)
            # A request may ask for less time than the server's cap, never more.
            timeout = min(request.timeout_ms / 1000, self.limits.timeout) if request.timeout_ms else self.limits.timeout
            result = await self._run(tenant_id, bound, checked.sql, request.params, row_limit, timeout)
        finally:
            if lease_id is not None:
                async with self._pool.connection() as conn:
                    await snapshots.release_lease(conn, lease_id)
        files = sum(len(t.files) for t in bound)
        size = sum(t.file_bytes for t in bound)
        metrics.QUERY_SCANNED_FILES.observe(files)
        metrics.QUERY_SCANNED_BYTES.observe(size)
        return QueryOutcome(result, resolved, (time.perf_counter() - started) * 1000, files, size)

    async def _run(
        self, tenant_id: TenantId, bound: list[BoundTable], sql: str, params: Any, row_limit: int, timeout: float
    ) -> EngineResult:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.limits.queue_timeout)
        except TimeoutError:
            raise QueryConcurrencyLimit(
                "too many queries are running; retry shortly", retry_after_s=1
            ) from None
        try:
            return await asyncio.to_thread(
                self._engine.run, tenant_id, bound, sql, params, row_limit, timeout
            )
        finally:
            self._slots.release()

    async def _audit(
        self, principal: Principal, request: QueryRequest, outcome: QueryOutcome | None, duration: float,
        status: str, error_code: str | None, trace_id: str | None,
    ) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO query_audit (tenant_id, key_id, sql_hash, snapshot_id, duration_ms, row_count,"
                    " status, error_code, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        principal.tenant_id, principal.key_id,
                        hashlib.sha256((request.sql or "").encode()).hexdigest(),
                        outcome.snapshot.snapshot_id if outcome else None, duration * 1000,
                        outcome.result.table.num_rows if outcome else None, status, error_code, trace_id,
                    ),
                )
        except DuckMeshError:
            log.warning("query_audit_failed", exc_info=True)
