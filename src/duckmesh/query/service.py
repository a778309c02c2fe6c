"""Query orchestration: resolve the snapshot (and wait for the barrier), check the SQL, bind
the tenant's tables to the snapshot's files, run it in DuckDB off the event loop, audit it.

Nothing of a query runs on the event loop: the SQL check runs on its own small thread pool, the
engine (which waits for a worker process and receives the encoded result) on the query pool, so a
query load can never block ingest, the coordinator or the probes, which use other pools. A tenant
runs at most ``max_concurrency_per_tenant`` queries at once and the process ``max_concurrency``;
waiting for a slot counts against the query's time limit and ends after ``queue_timeout`` with
429 ``QUERY_CONCURRENCY_LIMIT`` — or, when the query's own time limit is the shorter, when that
ends, with ``QUERY_TIMEOUT``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from duckmesh.catalog import snapshots, tables, tokens
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import DataFile, Snapshot
from duckmesh.catalog.tables import PinnedTable
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import SnapshotId, TableId, TenantId
from duckmesh.errors import (
    DuckMeshError,
    PayloadTooLarge,
    QueryConcurrencyLimit,
    QueryTimeout,
    RequestInvalid,
    SnapshotNotFound,
    SnapshotSelectorConflict,
    SqlRequired,
    TokenScopeMismatch,
    VisibilityTokenInvalid,
)
from duckmesh.merge import FileGroup
from duckmesh.observability import metrics
from duckmesh.query import pruning, sandbox
from duckmesh.query.audit_log import QueryAuditLog, QueryAuditRow
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.query.engine import BoundTable, EngineResult, QueryEngine, ResultFormat
from duckmesh.query.models import QueryRequest
from duckmesh.query.sandbox import CheckedQuery
from duckmesh.schema import TableSchema, parse_timestamp, partitions_prunable

log = logging.getLogger(__name__)
_FILE_SET_CACHE = 512
T = TypeVar("T")


@dataclass(frozen=True)
class QueryLimits:
    default_row_limit: int = 10_000
    max_row_limit: int = 1_000_000
    timeout: float = 30.0
    max_consistency_timeout: float = 60.0
    max_concurrency: int = 4
    max_concurrency_per_tenant: int = 2
    queue_timeout: float = 2.0
    max_sql_bytes: int = 256 * 1024


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


@dataclass(frozen=True)
class _Leased:
    """A snapshot the query reads, leased so retention keeps it (and GC its files) until release."""

    resolved: ResolvedSnapshot
    tables: dict[str, PinnedTable]
    lease_id: int | None


class QueryService:
    def __init__(self, pool: CatalogPool, engine: QueryEngine, barrier: VisibilityBarrier, limits: QueryLimits) -> None:
        self._pool = pool
        self._engine = engine
        self._barrier = barrier
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._tenant_slots: dict[TenantId, asyncio.Semaphore] = {}
        # Separate thread pools: queries and SQL checks never take the threads that ingest, the
        # coordinator and the probes use (the loop's default executor).
        self._runner = ThreadPoolExecutor(limits.max_concurrency + 1, thread_name_prefix="duckmesh-query")
        self._checker = ThreadPoolExecutor(2, thread_name_prefix="duckmesh-sql-check")
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._file_sets: OrderedDict[tuple[TenantId, SnapshotId], list[DataFile]] = OrderedDict()
        self._pinned: OrderedDict[tuple[TenantId, SnapshotId], dict[str, PinnedTable]] = OrderedDict()
        self._schemas: dict[tuple[TableId, int], TableSchema] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.audit = QueryAuditLog(pool)  # written in batches, off the request path

    async def _snapshot_tables(self, tenant_id: TenantId, snapshot_id: SnapshotId | None) -> dict[str, PinnedTable]:
        """The tables a snapshot pins (name -> table at its pinned schema version, watermark).
        Immutable per snapshot id: cached per process."""
        if snapshot_id is None:
            return {}
        key = (tenant_id, snapshot_id)
        cached = self._pinned.get(key)
        if cached is None:
            async with self._pool.connection() as conn:
                found = await tables.tables_of_snapshot(conn, tenant_id, snapshot_id)
            cached = self._pinned[key] = {p.table.table_name: p for p in found}
            while len(self._pinned) > _FILE_SET_CACHE:
                self._pinned.popitem(last=False)
        else:
            self._pinned.move_to_end(key)
        return cached

    async def resolve(self, tenant_id: TenantId, request: QueryRequest) -> _Leased:
        """The snapshot the query reads, leased: named by id or time, or the head — after waiting
        until the tables the SQL reads are visible up to ``min_visibility_token``."""
        if request.snapshot_id is not None and request.snapshot_time is not None:
            raise SnapshotSelectorConflict("give snapshot_id or snapshot_time, not both")
        token = request.min_visibility_token
        if request.snapshot_id is not None or request.snapshot_time is not None:
            return await self._resolve_named(tenant_id, request, token)
        for _ in range(5):
            try:
                return await self._resolve_head(tenant_id, request, token)
            except SnapshotNotFound:
                continue  # the head moved on and that snapshot was expired meanwhile: read the new head
        raise QueryConcurrencyLimit("the snapshot head moved too fast to lease; retry", retry_after_s=1)

    async def _resolve_head(self, tenant_id: TenantId, request: QueryRequest, token: int | None) -> _Leased:
        wait_ms = 0.0
        if token is None:
            async with self._pool.connection() as conn:
                leased = await snapshots.lease_head(conn, tenant_id, self._owner, self.limits.timeout + 60)
        else:
            async with self._pool.connection() as conn:
                current = await snapshots.head(conn, tenant_id)
            pinned = await self._snapshot_tables(tenant_id, current.snapshot_id)
            wanted = await self._read_table_ids(request.sql or "", pinned)
            timeout = min(request.consistency_timeout_ms / 1000, self.limits.max_consistency_timeout)
            visible = await self._barrier.wait(tenant_id, token, timeout, wanted)
            wait_ms = visible.waited_ms
            leased = None if visible.snapshot_id is None else await self._lease(tenant_id, visible.snapshot_id)
        if leased is None:
            return _Leased(ResolvedSnapshot(None, None, 0, wait_ms, False), {}, None)
        lease_id, found = leased
        resolved = ResolvedSnapshot(found.snapshot_id, found.created_at, found.max_visibility_token, wait_ms, False)
        return _Leased(resolved, await self._snapshot_tables(tenant_id, found.snapshot_id), lease_id)

    async def _resolve_named(self, tenant_id: TenantId, request: QueryRequest, token: int | None) -> _Leased:
        async with self._pool.connection() as conn:
            if request.snapshot_id is not None:
                found = await snapshots.get_snapshot(conn, tenant_id, request.snapshot_id)
            else:
                try:
                    moment = parse_timestamp(request.snapshot_time)
                except ValueError as exc:
                    raise RequestInvalid(f"snapshot_time: {exc}") from None
                found = await snapshots.snapshot_at(conn, tenant_id, moment)
            issued = await tokens.issued_token(conn, tenant_id) if token is not None else 0
        pinned = await self._snapshot_tables(tenant_id, found.snapshot_id)
        if token is not None:
            if token < 1 or token > issued:
                raise VisibilityTokenInvalid("the token was never issued to this tenant", min_visibility_token=token)
            wanted = await self._read_table_ids(request.sql or "", pinned)
            marks = [p.watermark for p in pinned.values() if p.table.table_id in wanted] or [found.max_visibility_token]
            if min(marks) < token:
                raise TokenScopeMismatch(
                    "the chosen snapshot does not cover the requested token",
                    snapshot_id=found.snapshot_id, snapshot_watermark=min(marks), min_visibility_token=token,
                )
        # Lease, then read on: either retention sees the lease and keeps the snapshot, or it expired
        # the snapshot first and this answers 404 (a query never reads files GC may be deleting).
        lease_id, found = await self._lease(tenant_id, found.snapshot_id)
        resolved = ResolvedSnapshot(found.snapshot_id, found.created_at, found.max_visibility_token, 0.0, True)
        return _Leased(resolved, pinned, lease_id)

    async def _off_loop(self, pool: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, call, *args)

    async def _read_table_ids(self, sql: str, pinned: dict[str, PinnedTable]) -> frozenset[TableId]:
        """The tables the SQL reads (empty when it names none of the snapshot's tables)."""
        try:
            names = (await self._off_loop(self._checker, sandbox.check, sql, tuple(pinned))).tables
        except DuckMeshError:
            return frozenset()  # the real check after resolution reports the error
        return frozenset(pinned[name].table.table_id for name in names if name in pinned)

    async def _lease(self, tenant_id: TenantId, snapshot_id: SnapshotId) -> tuple[int, Snapshot]:
        async with self._pool.connection() as conn:
            return await snapshots.acquire_lease(conn, tenant_id, snapshot_id, self._owner, self.limits.timeout + 60)

    def _release(self, lease_id: int | None) -> None:
        """Release a query's snapshot lease off the request path (it also expires on its own)."""
        if lease_id is None:
            return

        async def release() -> None:
            try:
                async with self._pool.connection() as conn:
                    await snapshots.release_leases(conn, [lease_id])
            except DuckMeshError:
                log.warning("snapshot_lease_release_failed", extra={"lease_id": lease_id})

        task = asyncio.create_task(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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

    async def _bind(
        self, tenant_id: TenantId, snapshot_id: SnapshotId | None, defs: dict[str, PinnedTable], checked: CheckedQuery
    ) -> list[BoundTable]:
        used = {name: pinned.table for name, pinned in defs.items() if name in checked.tables}
        files = await self._live_files(tenant_id, snapshot_id)
        versions = await self._schema_versions(
            {(t.table_id, f.schema_version) for t in used.values() for f in files if f.table_id == t.table_id}
        )
        bound = []
        for name, table in sorted(used.items()):
            mine = _pruned([f for f in files if f.table_id == table.table_id], table.schema,
                           checked.constraints.get(name, {}))
            by_version: dict[int, list[str]] = {}
            for data_file in mine:
                by_version.setdefault(data_file.schema_version, []).append(data_file.path)
            groups = tuple(FileGroup(versions[(table.table_id, version)], tuple(paths))
                           for version, paths in sorted(by_version.items()))
            bound.append(BoundTable(name, table.schema, groups, sum(f.file_size_bytes for f in mine),
                                    event_time=checked.reads_event_time))
        return bound

    async def execute(
        self, principal: Principal, request: QueryRequest, trace_id: str | None, fmt: ResultFormat = "json"
    ) -> QueryOutcome:
        started = time.perf_counter()
        tenant_id = principal.tenant_id
        status, error_code = "ok", None
        outcome: QueryOutcome | None = None
        try:
            outcome = await self._execute(principal, request, started, fmt)
            return outcome
        except DuckMeshError as exc:
            status, error_code = "error", exc.error_code
            raise
        finally:
            duration = time.perf_counter() - started
            metrics.QUERY_REQUESTS.labels(str(tenant_id), status).inc()
            metrics.QUERY_LATENCY.labels(str(tenant_id)).observe(duration)
            self.audit.record(QueryAuditRow(
                principal.tenant_id, principal.key_id, hashlib.sha256((request.sql or "").encode()).hexdigest(),
                outcome.snapshot.snapshot_id if outcome else None, duration * 1000,
                outcome.result.row_count if outcome else None, status, error_code, trace_id, datetime.now(UTC),
            ))

    async def _execute(
        self, principal: Principal, request: QueryRequest, started: float, fmt: ResultFormat
    ) -> QueryOutcome:
        tenant_id = principal.tenant_id
        if not request.sql or not request.sql.strip():
            raise SqlRequired("the request has no sql")
        if len(request.sql.encode("utf-8", "surrogatepass")) > self.limits.max_sql_bytes:
            raise PayloadTooLarge(f"the SQL text is longer than {self.limits.max_sql_bytes} bytes",
                                  max_sql_bytes=self.limits.max_sql_bytes)
        row_limit = min(request.row_limit or self.limits.default_row_limit, self.limits.max_row_limit)
        leased = await self.resolve(tenant_id, request)
        try:
            checked = await self._off_loop(self._checker, sandbox.check, request.sql, tuple(leased.tables))
            bound = await self._bind(tenant_id, leased.resolved.snapshot_id, leased.tables, checked)
            # A request may ask for less time than the server's cap, never more.
            timeout = min(request.timeout_ms / 1000, self.limits.timeout) if request.timeout_ms else self.limits.timeout
            result = await self._run(tenant_id, bound, checked.sql, request.params, row_limit, timeout, fmt)
        finally:
            self._release(leased.lease_id)
        files = sum(t.file_count for t in bound)
        size = sum(t.file_bytes for t in bound)
        metrics.QUERY_SCANNED_FILES.observe(files)
        metrics.QUERY_SCANNED_BYTES.observe(size)
        return QueryOutcome(result, leased.resolved, (time.perf_counter() - started) * 1000, files, size)

    async def _run(
        self, tenant_id: TenantId, bound: list[BoundTable], sql: str, params: Any, row_limit: int, timeout: float,
        fmt: ResultFormat,
    ) -> EngineResult:
        queued = time.monotonic()
        async with self._slot(tenant_id, timeout):
            remaining = timeout - (time.monotonic() - queued)  # time spent queueing counts
            if remaining <= 0:
                raise QueryTimeout("the query waited for a slot longer than its time limit",
                                   timeout_ms=int(timeout * 1000))
            try:
                return await self._off_loop(
                    self._runner, self._engine.run, tenant_id, bound, sql, params, row_limit, remaining, fmt
                )
            except QueryTimeout as exc:
                exc.context["timeout_ms"] = int(timeout * 1000)  # the query's limit, queueing included
                raise

    @contextlib.asynccontextmanager
    async def _slot(self, tenant_id: TenantId, timeout: float) -> AsyncIterator[None]:
        """One of the tenant's query slots, then one of the process's; 429 after ``queue_timeout``,
        or QUERY_TIMEOUT when the query's own time limit ends first (queueing counts against it)."""
        mine = self._tenant_slots.get(tenant_id)
        if mine is None:
            mine = self._tenant_slots[tenant_id] = asyncio.Semaphore(self.limits.max_concurrency_per_tenant)
        own_limit_first = timeout < self.limits.queue_timeout
        deadline = time.monotonic() + min(timeout, self.limits.queue_timeout)
        for semaphore, scope in ((mine, "tenant"), (self._slots, "server")):
            try:
                if semaphore.locked():
                    await asyncio.wait_for(semaphore.acquire(), max(0.0, deadline - time.monotonic()))
                else:
                    await semaphore.acquire()
            except BaseException as exc:  # a timeout, or the waiting request cancelled: give back what is held
                if semaphore is self._slots:
                    mine.release()
                if not isinstance(exc, TimeoutError):
                    raise
                if own_limit_first:
                    raise QueryTimeout("the query waited for a slot longer than its time limit",
                                       timeout_ms=int(timeout * 1000), scope=scope) from None
                raise QueryConcurrencyLimit(
                    f"too many queries are running ({scope} limit); retry shortly", retry_after_s=1, scope=scope,
                ) from None
        try:
            yield
        finally:
            self._slots.release()
            mine.release()

    async def close(self) -> None:
        """Write the audit rows still queued, stop the engine's workers and the thread pools (the
        process is shutting down)."""
        await self.audit.close()
        self._engine.close()
        self._runner.shutdown(wait=False, cancel_futures=True)
        self._checker.shutdown(wait=False, cancel_futures=True)


def _pruned(files: list[DataFile], schema: TableSchema, fixed: dict[str, pruning.Terms]) -> list[DataFile]:
    """The files a query must read: every file, except — for a table whose partitions may be
    skipped — those whose partition value the query's WHERE rules out (query/pruning.py)."""
    columns = [c for c in schema.partition_by if c in fixed]
    if not columns or not partitions_prunable(schema):
        return files
    types = {c.name: c.type for c in schema.columns}
    checks = [(c, values) for c in columns for term in fixed[c]
              if (values := pruning.allowed_values(types[c], term)) is not None]
    return [f for f in files if all(
        c not in f.partition or pruning.admits(types[c], f.partition[c], values) for c, values in checks)]
