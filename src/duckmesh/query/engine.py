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

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from duckmesh.domain import OP_COLUMN, TOKEN_COLUMN, TenantId
from duckmesh.errors import QueryInvalid, QueryResourceLimit, QueryTimeout, SqlNotAllowed
from duckmesh.schema import TableSchema, duckdb_type
from duckmesh.storage.cache import FileCache


@dataclass(frozen=True)
class BoundTable:
    """A table as a snapshot sees it: its schema, the exact live data files, and the distinct
    schemas those files were written with (older versions are read as ``schema``)."""

    name: str
    schema: TableSchema
    files: tuple[str, ...]
    file_bytes: int = 0
    file_schemas: tuple[TableSchema, ...] = ()

    @property
    def binding_key(self) -> tuple[Any, ...]:
        return (self.schema, self.files)


@dataclass
class EngineResult:
    columns: list[dict[str, str]]
    table: pa.Table
    truncated: bool


@dataclass
class _Cursor:
    connection: duckdb.DuckDBPyConnection
    bound: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _projection(table: BoundTable) -> str:
    """Every current column: as stored, cast from an older (narrower) type, or NULL when no
    file was written with it yet; JSON text typed as JSON."""
    written = table.file_schemas or (table.schema,)
    parts = []
    for column in table.schema.columns:
        stored = {s.by_name[column.name].type for s in written if column.name in s.by_name}
        target = duckdb_type(column.type)
        name = _quote(column.name)
        if not stored:
            parts.append(f"CAST(NULL AS {target}) AS {name}")
        elif stored != {column.type} or column.type == "json":
            parts.append(f"CAST({name} AS {target}) AS {name}")
        else:
            parts.append(name)
    return ", ".join(parts)


def view_sql(table: BoundTable, paths: Sequence[str]) -> str:
    """The SELECT a table's view runs: user columns only, keyed tables resolved on read."""
    columns = table.schema.columns
    if not paths:
        empty = ", ".join(f"CAST(NULL AS {duckdb_type(c.type)}) AS {_quote(c.name)}" for c in columns)
        return f"SELECT {empty} WHERE false"
    mixed = len(set(table.file_schemas)) > 1
    options = "hive_partitioning = false" + (", union_by_name = true" if mixed else "")
    source = f"read_parquet([{', '.join(_literal(p) for p in paths)}], {options})"
    projection = _projection(table)
    if not table.schema.keyed:
        return f"SELECT {projection} FROM {source}"
    keys = ", ".join(_quote(k) for k in table.schema.primary_key)
    # Merge on read: per key the version with the highest token wins; a winning delete hides the key.
    return (
        f"SELECT {projection} FROM {source}"
        f" QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {TOKEN_COLUMN} DESC) = 1"
        f" AND {OP_COLUMN} <> 'delete'"
    )


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
        self.database.execute(f"SET allowed_directories = [{_literal(allowed_directory)}]")
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
        with self.cache.files(keys) as local_paths, self._database(tenant_id).cursor() as cursor:
            paths = dict(zip(keys, local_paths, strict=True))
            self._bind(cursor, tables, paths)
            timer = threading.Timer(timeout, cursor.connection.interrupt)
            timer.start()
            try:
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
            except duckdb.Error as exc:
                raise QueryInvalid(_duckdb_message(exc)) from None
            finally:
                timer.cancel()
        truncated = table.num_rows > row_limit
        return EngineResult(columns, table.slice(0, row_limit) if truncated else table, truncated)

    def _bind(self, cursor: _Cursor, tables: Sequence[BoundTable], paths: dict[str, str]) -> None:
        for table in tables:
            if cursor.bound.get(table.name) == table.binding_key:
                continue
            sql = view_sql(table, [paths[key] for key in table.files])
            cursor.connection.execute(f"CREATE OR REPLACE TEMP VIEW {_quote(table.name)} AS {sql}")
            cursor.bound[table.name] = table.binding_key


def _duckdb_message(exc: Exception) -> str:
    """DuckDB's whole message: its hints ("Did you mean", candidate bindings) and the caret line
    that points at the error are what make it useful."""
    text = str(exc).strip()
    return text[:2000] if text else type(exc).__name__
