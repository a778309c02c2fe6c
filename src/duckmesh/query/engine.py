"""DuckDB execution, second line of defence of the sandbox, and the per-tenant databases.

Each tenant gets one in-memory DuckDB database per process, created on first use and reused
by every later query (a small LRU keeps their number bounded). Its configuration is set
once and then locked: external access disabled except the tenant's own data-file directory,
no extension installs or loads, fixed memory and thread limits. So even SQL that slipped past
the parser cannot read files of another tenant or anything else on the machine, nor change
settings. Queries run on cursors of that database taken from a small pool; each cursor keeps
its tables bound (temporary views) to the last snapshot it served, so repeated queries on
the same snapshot skip rebinding.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from duckmesh.domain import TenantId
from duckmesh.errors import (
    DataFileMissing,
    ObjectNotFound,
    QueryInvalid,
    QueryResourceLimit,
    QueryTimeout,
    SqlNotAllowed,
)
from duckmesh.merge import FileGroup, literal, quote, view_sql
from duckmesh.schema import TableSchema
from duckmesh.storage.cache import FileCache


@dataclass(frozen=True)
class BoundTable:
    """A table as a snapshot sees it: its schema and the exact live data files, grouped by the
    schema version they were written with (older versions are read as ``schema``)."""

    name: str
    schema: TableSchema
    groups: tuple[FileGroup, ...] = ()
    file_bytes: int = 0

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(path for group in self.groups for path in group.paths)

    @property
    def file_count(self) -> int:
        return sum(len(group.paths) for group in self.groups)

    @property
    def binding_key(self) -> tuple[Any, ...]:
        return (self.schema, self.groups)


@dataclass
class EngineResult:
    columns: list[dict[str, str]]
    table: pa.Table
    truncated: bool


@dataclass
class _Cursor:
    connection: duckdb.DuckDBPyConnection
    bound: dict[str, tuple[Any, ...]] = field(default_factory=dict)


class _TenantDatabase:
    def __init__(
        self, allowed_directory: str, temp_directory: str, memory_limit: str, threads: int, cursors: int
    ) -> None:
        # DuckDB adds its temp (spill) directory to the allowed ones: give each tenant its own.
        self.database = duckdb.connect(":memory:", config={
            "threads": threads,
            "memory_limit": memory_limit,
            "temp_directory": temp_directory,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        })
        self.database.execute(f"SET allowed_directories = [{literal(allowed_directory)}]")
        self.database.execute("SET enable_external_access = false")
        self.database.execute("SET lock_configuration = true")
        self._idle: queue.SimpleQueue[_Cursor] = queue.SimpleQueue()
        for _ in range(cursors):
            self._idle.put(_Cursor(self.database.cursor()))

    @contextmanager
    def cursor(self) -> Iterator[_Cursor]:
        taken = self._idle.get()
        try:
            yield taken
        finally:
            self._idle.put(taken)


class QueryEngine:
    def __init__(
        self, cache: FileCache, *, memory_limit: str = "1GB", threads: int = 2,
        cursors_per_tenant: int = 4, max_tenants: int = 64,
    ) -> None:
        self.cache = cache
        self._memory_limit = memory_limit
        self._threads = threads
        self._cursors = cursors_per_tenant
        self._max_tenants = max_tenants
        self._databases: OrderedDict[TenantId, _TenantDatabase] = OrderedDict()
        self._lock = threading.Lock()

    def _database(self, tenant_id: TenantId) -> _TenantDatabase:
        with self._lock:
            database = self._databases.get(tenant_id)
            if database is None:
                database = _TenantDatabase(
                    self.cache.root_for(str(tenant_id)), str(self.cache.directory / ".spill" / str(tenant_id)),
                    self._memory_limit, self._threads, self._cursors,
                )
                self._databases[tenant_id] = database
                while len(self._databases) > self._max_tenants:
                    self._databases.popitem(last=False)  # in-flight queries keep their own reference
            self._databases.move_to_end(tenant_id)
            return database

    def run(
        self,
        tenant_id: TenantId,
        tables: Sequence[BoundTable],
        sql: str,
        params: dict[str, Any] | list[Any] | None,
        row_limit: int,
        timeout: float,
    ) -> EngineResult:
        """Run checked SQL over the bound tables; blocking (call it from a worker thread)."""
        keys = [key for table in tables for key in table.files]
        with self._local_files(tables, keys) as local_paths, self._database(tenant_id).cursor() as cursor:
            paths = dict(zip(keys, local_paths, strict=True))
            timer = threading.Timer(timeout, cursor.connection.interrupt)
            timer.start()
            try:
                self._bind(cursor, tables, paths)
                # Defence in depth behind the parser: DuckDB's own parse must also see exactly one SELECT.
                statements = cursor.connection.extract_statements(sql)
                if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                    raise SqlNotAllowed("only one read-only query is allowed")
                relation = cursor.connection.sql(sql, params=params or None)
                if relation is None:
                    raise SqlNotAllowed("the statement returns no rows")
                columns = [{"name": n, "type": str(t)} for n, t in zip(relation.columns, relation.types, strict=True)]
                reader = relation.to_arrow_reader(min(max(row_limit + 1, 1), 100_000))
                batches: list[pa.RecordBatch] = []
                count = 0
                for batch in reader:
                    batches.append(batch)
                    count += batch.num_rows
                    if count > row_limit:
                        break
                table = pa.Table.from_batches(batches, schema=reader.schema)
            except duckdb.InterruptException:
                raise QueryTimeout("the query ran longer than its time limit", timeout_ms=int(timeout * 1000)) from None
            except duckdb.OutOfMemoryException:
                raise QueryResourceLimit("the query needs more memory than its limit") from None
            except duckdb.PermissionException:
                raise SqlNotAllowed("the query tried to access something outside its tables") from None
            except duckdb.IOException as exc:
                _raise_if_missing(tables, paths)
                raise QueryInvalid(_duckdb_message(exc)) from None
            except duckdb.Error as exc:
                raise QueryInvalid(_duckdb_message(exc)) from None
            finally:
                timer.cancel()
        truncated = table.num_rows > row_limit
        return EngineResult(columns, table.slice(0, row_limit) if truncated else table, truncated)

    @contextmanager
    def _local_files(self, tables: Sequence[BoundTable], keys: list[str]) -> Iterator[list[str]]:
        try:
            with self.cache.files(keys) as local_paths:
                yield local_paths
        except ObjectNotFound as exc:
            key = str(exc.context.get("key", ""))
            raise _missing(tables, key) from None

    def _bind(self, cursor: _Cursor, tables: Sequence[BoundTable], paths: dict[str, str]) -> None:
        for table in tables:
            if cursor.bound.get(table.name) == table.binding_key:
                continue
            groups = [FileGroup(g.written, tuple(paths[key] for key in g.paths)) for g in table.groups]
            sql = view_sql(table.schema, groups)
            cursor.connection.execute(f"CREATE OR REPLACE TEMP VIEW {quote(table.name)} AS {sql}")
            cursor.bound[table.name] = table.binding_key


def _missing(tables: Sequence[BoundTable], key: str) -> DataFileMissing:
    table = next((t.name for t in tables if key in t.files), "?")
    return DataFileMissing(
        f"a data file of table {table!r} is missing from the object store; run an integrity check"
        " (POST /v1/integrity/run) and see the operations runbook",
        table=table, path=key,
    )


def _raise_if_missing(tables: Sequence[BoundTable], paths: dict[str, str]) -> None:
    """A DuckDB I/O error over a bound file that is gone is DATA_FILE_MISSING, not a query error."""
    for key, local in paths.items():
        if not os.path.exists(local):
            raise _missing(tables, key) from None


def _duckdb_message(exc: Exception) -> str:
    """DuckDB's whole message: its hints ("Did you mean", candidate bindings) and the caret line
    that points at the error are what make it useful."""
    text = str(exc).strip()
    return text[:2000] if text else type(exc).__name__
