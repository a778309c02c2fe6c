"""DuckDB execution, second line of defence of the sandbox, and the per-tenant databases.

``QueryEngine`` is what the query service calls: it pins the snapshot's data files in the local
cache and hands one ``Job`` to a backend — a pool of worker processes (``workers.py``, the
default: the operating system bounds each query's memory and time) or, for tools and tests,
an ``Executor`` in this process.

An ``Executor`` owns one in-memory DuckDB database per tenant, created on first use and reused by
every later query (a small LRU keeps their number bounded). Its configuration is set once and
then locked: external access disabled except the tenant's own data-file directory and its spill
folder, no extension installs or loads, fixed memory, thread and spill limits. Before running,
DuckDB's own parser must see one SELECT that calls only allow-listed functions, so even SQL that
slipped past the first checker cannot read files of another tenant or anything else on the
machine, nor change settings. Results are encoded where they are computed, in the requested
format, up to a byte limit (truncation is reported like the row limit's).
"""

from __future__ import annotations

import functools
import io
import os
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv

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
from duckmesh.query import functions
from duckmesh.query.encode import encode_rows, needs_text_for_csv, text_column
from duckmesh.schema import NAME_PATTERN, TableSchema
from duckmesh.storage.base import make_private_dirs
from duckmesh.storage.cache import FileCache

ResultFormat = Literal["json", "ndjson", "csv", "arrow"]
_BATCH_ROWS = 10_000
# Absolute paths in DuckDB's messages (server folders) are never echoed to a client.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:.])/(?:[^\s'\"/]+/)+[^\s'\",)]*")


@dataclass(frozen=True)
class BoundTable:
    """A table as a snapshot sees it: its schema and the exact live data files, grouped by the
    schema version they were written with (older versions are read as ``schema``)."""

    name: str
    schema: TableSchema
    groups: tuple[FileGroup, ...] = ()
    file_bytes: int = 0
    event_time: bool = False  # the view carries _dm_event_time (the query names it)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(path for group in self.groups for path in group.paths)

    @property
    def file_count(self) -> int:
        return sum(len(group.paths) for group in self.groups)


@dataclass
class EngineResult:
    """A query's answer, already encoded: ``body`` is the JSON array of rows (``json``), NDJSON
    lines, CSV text or an Arrow IPC stream."""

    columns: list[dict[str, str]]
    row_count: int
    truncated: bool
    body: bytes
    fmt: ResultFormat = "json"

    def rows(self) -> list[list[Any]]:
        """The rows of a ``json`` result, as JSON values."""
        assert self.fmt == "json", self.fmt
        return list(orjson.loads(self.body))


@dataclass(frozen=True)
class Job:
    """One query for an executor: everything it needs, picklable (it crosses a process boundary)."""

    tenant_id: TenantId
    data_directory: str
    views: tuple[tuple[str, str], ...]  # (table name, the view's SQL over local file paths)
    sql: str
    params: dict[str, Any] | list[Any] | None
    row_limit: int
    max_result_bytes: int
    fmt: ResultFormat
    timeout: float


@dataclass(frozen=True)
class ExecutorConfig:
    memory_limit: str = "1GB"
    threads: int = 2
    spill_directory: str = ""
    max_spill_bytes: int = 4 * 1024**3
    max_tenants: int = 64
    cursors_per_tenant: int = 4


class Backend(Protocol):
    def execute(self, job: Job) -> EngineResult:
        """Run the job; raises QueryTimeout, QueryResourceLimit, SqlNotAllowed, QueryInvalid, or
        ``IoFailure`` when DuckDB could not read a file."""
        ...

    def close(self) -> None: ...


class IoFailure(QueryInvalid):
    """DuckDB could not read a bound file (the engine checks whether it is missing)."""


@dataclass
class _Cursor:
    connection: duckdb.DuckDBPyConnection
    bound: dict[str, str] = field(default_factory=dict)


class _TenantDatabase:
    def __init__(self, data_directory: str, config: ExecutorConfig, tenant_id: TenantId) -> None:
        # Each tenant spills into its own folder (DuckDB also allows reading there), per process:
        # two DuckDB instances must never share one.
        spill = Path(config.spill_directory or ".") / str(tenant_id) / f"p{os.getpid()}"
        make_private_dirs(spill)
        self.spill = str(spill)
        self.database = duckdb.connect(":memory:", config={
            "threads": config.threads,
            "memory_limit": config.memory_limit,
            "temp_directory": self.spill,
            "max_temp_directory_size": f"{config.max_spill_bytes}B",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        })
        self.database.execute(f"SET allowed_directories = [{literal(data_directory)}]")
        self.database.execute("SET enable_external_access = false")
        self.database.execute("SET lock_configuration = true")
        self._idle: queue.SimpleQueue[_Cursor] = queue.SimpleQueue()
        for _ in range(config.cursors_per_tenant):
            self._idle.put(_Cursor(self.database.cursor()))

    @contextmanager
    def cursor(self) -> Iterator[_Cursor]:
        taken = self._idle.get()
        try:
            yield taken
        finally:
            self._idle.put(taken)


class Executor:
    """Runs jobs with DuckDB in this process (thread-safe; worker processes run one each)."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self._databases: OrderedDict[TenantId, _TenantDatabase] = OrderedDict()
        self._lock = threading.Lock()
        self._verified: OrderedDict[str, None] = OrderedDict()

    def _database(self, job: Job) -> _TenantDatabase:
        with self._lock:
            database = self._databases.get(job.tenant_id)
            if database is None:
                database = _TenantDatabase(job.data_directory, self.config, job.tenant_id)
                self._databases[job.tenant_id] = database
                while len(self._databases) > self.config.max_tenants:
                    self._databases.popitem(last=False)  # in-flight queries keep their own reference
            self._databases.move_to_end(job.tenant_id)
            return database

    def execute(self, job: Job) -> EngineResult:
        database = self._database(job)
        with database.cursor() as cursor:
            timer = threading.Timer(job.timeout, cursor.connection.interrupt)
            timer.start()
            try:
                return self._run(cursor, job)
            except duckdb.InterruptException:
                raise QueryTimeout("the query ran longer than its time limit",
                                   timeout_ms=int(job.timeout * 1000)) from None
            except (duckdb.OutOfMemoryException, MemoryError):
                raise QueryResourceLimit("the query needs more memory than its limit") from None
            except duckdb.PermissionException:
                raise SqlNotAllowed("the query tried to access something outside its tables") from None
            except duckdb.IOException as exc:
                raise IoFailure(_message(exc, database.spill)) from None
            except duckdb.Error as exc:
                raise QueryInvalid(_message(exc, database.spill)) from None
            finally:
                timer.cancel()

    def _run(self, cursor: _Cursor, job: Job) -> EngineResult:
        for name, sql in job.views:
            if cursor.bound.get(name) != sql:
                cursor.connection.execute(f"CREATE OR REPLACE TEMP VIEW {quote(name)} AS {sql}")
                cursor.bound[name] = sql
        self._verify(cursor.connection, job.sql)
        relation = cursor.connection.sql(job.sql, params=job.params or None)
        if relation is None:
            raise SqlNotAllowed("the statement returns no rows")
        relation = _exact_huge_integers(relation)
        columns = [{"name": n, "type": str(t)} for n, t in zip(relation.columns, relation.types, strict=True)]
        reader = relation.to_arrow_reader(_BATCH_ROWS)
        sql_types = [c["type"] for c in columns]
        return _ENCODERS[job.fmt](reader, columns, sql_types, job.row_limit, job.max_result_bytes)

    def _verify(self, connection: duckdb.DuckDBPyConnection, sql: str) -> None:
        """Defence in depth behind the first checker: DuckDB's own parse must also see exactly one
        SELECT whose every function call is allow-listed and whose tables are plain names."""
        if sql in self._verified:
            return
        statements = connection.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise SqlNotAllowed("only one read-only query is allowed")
        # (a relation, not execute(): DuckDB keeps an unfinished execute() result open)
        rows = connection.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchall()
        tree = orjson.loads(rows[0][0]) if rows else {"error": True}
        if tree.get("error"):
            raise QueryInvalid(str(tree.get("error_message") or "the SQL could not be parsed"))
        verify_tree(tree)
        if len(sql) <= 65_536:
            with self._lock:
                self._verified[sql] = None
                while len(self._verified) > 1024:
                    self._verified.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._databases.clear()


def verify_tree(node: Any, table_position: bool = False) -> None:
    """Walk DuckDB's parse tree (``json_serialize_sql``): refuse calls that are not allow-listed
    (table functions have their own, shorter list), qualified calls and tables that are not plain
    names (a file path would be a replacement scan)."""
    if isinstance(node, list):
        for item in node:
            verify_tree(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("class") == "FUNCTION":
        _verify_call(node, table_position)
    if node.get("type") == "TABLE_FUNCTION":
        function = node.get("function") or {}
        verify_tree(function, table_position=True)
        for key, value in node.items():
            if key != "function":
                verify_tree(value)
        return
    if node.get("type") == "BASE_TABLE" and (
        node.get("schema_name") or node.get("catalog_name") or not NAME_PATTERN.fullmatch(str(node.get("table_name")))
    ):
        raise SqlNotAllowed("only the tenant's tables can be queried", table=str(node.get("table_name")))
    for value in node.values():
        verify_tree(value)


def _verify_call(node: dict[str, Any], table_position: bool) -> None:
    name = str(node.get("function_name", ""))
    if node.get("schema") or node.get("catalog"):
        raise SqlNotAllowed("qualified function names are not allowed", function=name.lower())
    allowed = functions.table_allowed(name) if table_position else functions.scalar_allowed(name)
    if not allowed:
        kind = "table function" if table_position else "function"
        raise SqlNotAllowed(f"{kind} {name.lower()}() is not allowed", function=name.lower())


def _exact_huge_integers(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """Arrow has no 128-bit integer type: a top-level HUGEINT/UHUGEINT column travels as a 128-bit
    decimal (the encoder restores UHUGEINT values above 2^127); one nested in a list, struct or map
    is sent as text so no value wraps around."""
    nested = [str(t) != "UHUGEINT" and "UHUGEINT" in str(t) for t in relation.types]
    if not any(nested):
        return relation
    parts = [
        f"CAST({quote(name)} AS {str(kind).replace('UHUGEINT', 'VARCHAR')}) AS {quote(name)}" if wraps
        else quote(name)
        for name, kind, wraps in zip(relation.columns, relation.types, nested, strict=True)
    ]
    return relation.project(", ".join(parts))


def _message(exc: Exception, spill: str) -> str:
    """DuckDB's whole message (its hints and the caret line make it useful), without server paths."""
    text = str(exc).strip().replace(spill, "<spill>")
    text = _ABSOLUTE_PATH.sub("<path>", text)
    return text[:2000] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# encoding, bounded by rows and bytes


def _batches(reader: pa.RecordBatchReader, row_limit: int) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """Batches up to ``row_limit`` rows, each with whether rows beyond the limit exist."""
    count = 0
    for batch in reader:
        if count + batch.num_rows > row_limit:
            yield batch.slice(0, row_limit - count), True
            return
        count += batch.num_rows
        yield batch, False


def _rows_within(batch: pa.RecordBatch, size: Callable[[pa.RecordBatch], int], budget: int) -> int:
    """How many leading rows of ``batch`` fit in ``budget`` bytes (binary search)."""
    low, high = 0, batch.num_rows
    while low < high:
        middle = (low + high + 1) // 2
        if size(batch.slice(0, middle)) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _json_lines(
    reader: pa.RecordBatchReader, columns: list[dict[str, str]], sql_types: list[str], row_limit: int,
    max_bytes: int, objects: bool,
) -> tuple[list[bytes], int, bool]:
    names = [c["name"] for c in columns]
    pieces: list[bytes] = []
    size = 0
    for batch, beyond in _batches(reader, row_limit):
        for row in encode_rows(batch, sql_types):
            piece = orjson.dumps(dict(zip(names, row, strict=True)) if objects else row)
            if size + len(piece) + 1 > max_bytes:
                return pieces, len(pieces), True
            pieces.append(piece)
            size += len(piece) + 1
        if beyond:
            return pieces, len(pieces), True
    return pieces, len(pieces), False


def _as_json(
    reader: pa.RecordBatchReader, columns: list[dict[str, str]], sql_types: list[str], row_limit: int, max_bytes: int
) -> EngineResult:
    pieces, count, truncated = _json_lines(reader, columns, sql_types, row_limit, max_bytes, objects=False)
    return EngineResult(columns, count, truncated, b"[" + b",".join(pieces) + b"]", "json")


def _as_ndjson(
    reader: pa.RecordBatchReader, columns: list[dict[str, str]], sql_types: list[str], row_limit: int, max_bytes: int
) -> EngineResult:
    pieces, count, truncated = _json_lines(reader, columns, sql_types, row_limit, max_bytes, objects=True)
    return EngineResult(columns, count, truncated, b"".join(p + b"\n" for p in pieces), "ndjson")


def _csv_bytes(batch: pa.RecordBatch, sql_types: list[str], header: bool) -> bytes:
    arrays = [text_column(batch.column(i), sql_types[i]) if needs_text_for_csv(batch.schema.field(i).type, sql_types[i])
              else batch.column(i) for i in range(batch.num_columns)]
    sink = io.BytesIO()
    table = pa.Table.from_arrays(arrays, names=batch.schema.names)
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=header))
    return sink.getvalue()


def _csv_size(batch: pa.RecordBatch, sql_types: list[str], header: bool) -> int:
    return len(_csv_bytes(batch, sql_types, header))


def _as_csv(
    reader: pa.RecordBatchReader, columns: list[dict[str, str]], sql_types: list[str], row_limit: int, max_bytes: int
) -> EngineResult:
    parts: list[bytes] = []
    size = count = 0
    for batch, beyond in _batches(reader, row_limit):
        header = not parts
        chunk = _csv_bytes(batch, sql_types, header)
        if size + len(chunk) > max_bytes:
            size_of = functools.partial(_csv_size, sql_types=sql_types, header=header)
            fit = _rows_within(batch, size_of, max_bytes - size)
            parts.append(_csv_bytes(batch.slice(0, fit), sql_types, header))
            return EngineResult(columns, count + fit, True, b"".join(parts), "csv")
        parts.append(chunk)
        size += len(chunk)
        count += batch.num_rows
        if beyond:
            return EngineResult(columns, count, True, b"".join(parts), "csv")
    if not parts:
        parts.append(_csv_bytes(pa.RecordBatch.from_pylist([], schema=reader.schema), sql_types, True))
    return EngineResult(columns, count, False, b"".join(parts), "csv")


def _as_arrow(
    reader: pa.RecordBatchReader, columns: list[dict[str, str]], sql_types: list[str], row_limit: int, max_bytes: int
) -> EngineResult:
    kept: list[pa.RecordBatch] = []
    size = count = 0
    truncated = False
    for batch, beyond in _batches(reader, row_limit):
        if size + batch.nbytes > max_bytes:
            fit = _rows_within(batch, lambda b: int(b.nbytes), max_bytes - size)
            kept.append(batch.slice(0, fit))
            count += fit
            truncated = True
            break
        kept.append(batch)
        size += batch.nbytes
        count += batch.num_rows
        if beyond:
            truncated = True
            break
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, reader.schema) as writer:
        for batch in kept:
            writer.write_batch(batch)
    return EngineResult(columns, count, truncated, sink.getvalue().to_pybytes(), "arrow")


_ENCODERS: dict[str, Callable[..., EngineResult]] = {
    "json": _as_json, "ndjson": _as_ndjson, "csv": _as_csv, "arrow": _as_arrow,
}


# ---------------------------------------------------------------------------------------------
# the engine the query service calls


class InProcess:
    """The in-process backend: no isolation from the host (tools, benchmarks and unit tests)."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.executor = Executor(config)

    def execute(self, job: Job) -> EngineResult:
        return self.executor.execute(job)

    def close(self) -> None:
        self.executor.close()


class QueryEngine:
    def __init__(
        self, cache: FileCache, *, memory_limit: str = "1GB", threads: int = 2, cursors_per_tenant: int = 4,
        max_tenants: int = 64, max_result_bytes: int = 64 * 1024 * 1024, max_spill_bytes: int = 4 * 1024**3,
        backend: Callable[[ExecutorConfig], Backend] = InProcess,
    ) -> None:
        self.cache = cache
        self.max_result_bytes = max_result_bytes
        self.config = ExecutorConfig(
            memory_limit=memory_limit, threads=threads, spill_directory=str(cache.directory / ".spill"),
            max_spill_bytes=max_spill_bytes, max_tenants=max_tenants, cursors_per_tenant=cursors_per_tenant,
        )
        self.backend: Backend = backend(self.config)

    def run(
        self,
        tenant_id: TenantId,
        tables: Sequence[BoundTable],
        sql: str,
        params: dict[str, Any] | list[Any] | None,
        row_limit: int,
        timeout: float,
        fmt: ResultFormat = "json",
    ) -> EngineResult:
        """Run checked SQL over the bound tables; blocking (call it from a worker thread)."""
        keys = [key for table in tables for key in table.files]
        with self._local_files(tables, keys) as local_paths:
            paths = dict(zip(keys, local_paths, strict=True))
            views = tuple(
                (table.name, view_sql(table.schema, [
                    FileGroup(g.written, tuple(paths[key] for key in g.paths)) for g in table.groups],
                    with_event_time=table.event_time))
                for table in tables
            )
            job = Job(tenant_id, self.cache.root_for(str(tenant_id)), views, sql, params, max(row_limit, 0),
                      self.max_result_bytes, fmt, timeout)
            try:
                return self.backend.execute(job)
            except IoFailure as exc:
                _raise_if_missing(tables, paths)
                raise QueryInvalid(exc.message) from None

    def close(self) -> None:
        self.backend.close()

    @contextmanager
    def _local_files(self, tables: Sequence[BoundTable], keys: list[str]) -> Iterator[list[str]]:
        try:
            with self.cache.files(keys) as local_paths:
                yield local_paths
        except ObjectNotFound as exc:
            key = str(exc.context.get("key", ""))
            raise _missing(tables, key) from None


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

