"""The blocking client (httpx.Client). Same methods as ``AsyncClient``, without ``await``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from duckmesh.client import calls
from duckmesh.client.base import ClientBase, FileLoad, Progress, column_types, table_path
from duckmesh.client.calls import Call, RetryPolicy
from duckmesh.client.files import Batch, FileFormat, row_batches
from duckmesh.client.results import ExportResult, IngestSummary, QueryResult, Receipt, to_pandas
from duckmesh.errors import DuckMeshError, RemoteError, ServerUnreachable

T = TypeVar("T")
_KEEP_WAITING = ("CONSISTENCY_TIMEOUT",)


class Client(ClientBase):
    """``Client("http://127.0.0.1:8080", "dm_...")``; with no arguments it resolves like the CLI does."""

    def __init__(
        self, server: str | None = None, key: str | None = None, *, profile: str | None = None,
        timeout: float = 60.0, retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(server, key, profile=profile, timeout=timeout, retry=retry)
        self.retries = 0
        self._http = httpx.Client(base_url=self.server, headers=self._headers(), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, call: Call[T]) -> T:
        """Send ``call``; retry transport failures and retryable answers with backoff (same body each time)."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
                calls.raise_for_error(response)
                return call.parse(response)
            except httpx.TransportError as exc:
                error: DuckMeshError = ServerUnreachable(f"cannot reach {self.server}: {exc or type(exc).__name__}")
                retryable, retry_after = True, None
            except RemoteError as exc:
                error, retryable, retry_after = exc, calls.should_retry(exc), exc.retry_after
            except ValueError:
                raise ServerUnreachable(f"{self.server} did not answer like a DuckMesh server") from None
            attempt += 1
            if not retryable or attempt >= self.retry.attempts:
                raise error
            self.retries += 1
            time.sleep(self.retry.delay(attempt - 1, retry_after))

    # --- probes, tables, snapshots, operations -------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.request(calls.get("/v1/health"))

    def ready(self) -> dict[str, Any]:
        return self.request(calls.get("/v1/ready"))

    def tables(self) -> list[dict[str, Any]]:
        return list(self.request(calls.get("/v1/tables"))["tables"])

    def table(self, name: str) -> dict[str, Any]:
        return self.request(calls.get(table_path(name)))

    def table_schemas(self, name: str) -> dict[str, Any]:
        return self.request(calls.get(table_path(name, "/schemas")))

    def create_table(self, definition: dict[str, Any]) -> dict[str, Any]:
        """``definition`` is the POST /v1/tables body: table_name, columns, primary_key, ..."""
        return self.request(calls.post("/v1/tables", definition))

    def drop_table(self, name: str) -> dict[str, Any]:
        return self.request(Call("DELETE", table_path(name), calls.json_object))

    def snapshots(self, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        return self.request(calls.get("/v1/snapshots", {"limit": limit, "before": before}))

    def snapshot(self, snapshot_id: int) -> dict[str, Any]:
        return self.request(calls.get(f"/v1/snapshots/{int(snapshot_id)}"))

    def schema_overview(self, sample_rows: int | None = None) -> dict[str, Any]:
        """Every table's typed columns, key, row count and a few sample rows (GET /v1/ui/schema)."""
        return self.request(calls.get("/v1/ui/schema", {"sample_rows": sample_rows}))

    def translate(self, prompt: str) -> dict[str, Any]:
        """A suggested SQL query for a question (never run by the server; ``sandbox_ok`` says
        whether a query would accept it)."""
        return self.request(calls.post("/v1/query/translate", {"prompt": prompt}))

    def lag(self) -> dict[str, Any]:
        return self.request(calls.get("/v1/lag"))

    def dead_letters(self, limit: int = 100, after: int = 0) -> dict[str, Any]:
        return self.request(calls.get("/v1/dead-letters", {"limit": limit, "after": after}))

    def replay_dead_letters(self, event_ids: list[int]) -> dict[str, Any]:
        return self.request(calls.post("/v1/dead-letters/replay", {"event_ids": event_ids}))

    def run_compaction(self, table: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        return self.request(calls.post("/v1/compaction/run", {"table": table, "dry_run": dry_run}))

    def run_retention(self, dry_run: bool = False) -> dict[str, Any]:
        return self.request(calls.post("/v1/retention/run", {"dry_run": dry_run}))

    def run_integrity(self, table: str | None = None, deep: bool = False) -> dict[str, Any]:
        return self.request(calls.post("/v1/integrity/run", {"table": table, "deep": deep}))

    def restore_snapshot(self, snapshot_id: int, dry_run: bool = False) -> dict[str, Any]:
        """Publish a new snapshot whose file sets equal ``snapshot_id``'s (ops_admin); with
        ``dry_run`` only list, per table, what would change."""
        return self.request(calls.restore(snapshot_id, dry_run))

    def pin_snapshot(self, snapshot_id: int, reason: str, expires_at: str | None = None) -> dict[str, Any]:
        body = {"snapshot_id": int(snapshot_id), "reason": reason, "expires_at": expires_at}
        return self.request(calls.post("/v1/snapshots/pin", body))

    def read_only(self) -> dict[str, Any]:
        """Whether the key's tenant may write now, and the switch that stops it (ops_admin)."""
        return self.request(calls.get("/v1/read-only"))

    def set_read_only(self, enabled: bool, reason: str | None = None) -> dict[str, Any]:
        """Switch the key's tenant into (``enabled``, with a ``reason``) or out of read-only mode."""
        body = {"enabled": enabled, **({"reason": reason} if reason else {})}
        return self.request(calls.Call("PUT", "/v1/read-only", calls.json_object, json=body))

    def metrics(self) -> str:
        """The Prometheus text of the server (no key needed)."""
        return self.request(calls.Call("GET", "/v1/metrics", lambda response: response.text))

    # --- query -----------------------------------------------------------------------------------

    def query(self, sql: str, **options: Any) -> QueryResult:
        """Rows as JSON values. Options: params, snapshot_id, snapshot_time, min_visibility_token,
        consistency_timeout_ms, row_limit."""
        return QueryResult.from_json(self.request(calls.post("/v1/query", calls.query_body(sql, **options))))

    def query_export(self, sql: str, fmt: str, **options: Any) -> ExportResult:
        """The answer as ``csv``, ``ndjson`` or ``arrow`` bytes with the snapshot metadata."""
        response = self.request(calls.query_export(calls.query_body(sql, **options), fmt))
        return ExportResult.from_response(response)

    def query_arrow(self, sql: str, **options: Any) -> Any:
        """A ``pyarrow.Table`` (exact types: no JSON encoding on the way)."""
        return self.query_export(sql, "arrow", **options).arrow()

    def query_pandas(self, sql: str, **options: Any) -> Any:
        """A pandas DataFrame (needs pandas installed)."""
        return to_pandas(self.query_arrow(sql, **options))

    def wait_for_token(self, token: int, timeout: float = 30.0) -> int | None:
        """Block until the tenant's watermark covers ``token``; the snapshot id that covers it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                return self.query("SELECT 1", min_visibility_token=token,
                                  consistency_timeout_ms=min(remaining_ms, 30_000)).snapshot_id
            except RemoteError as exc:
                if exc.server_code not in _KEEP_WAITING or time.monotonic() >= deadline:
                    raise

    # --- ingest ----------------------------------------------------------------------------------

    def ingest(
        self, table: str, records: list[dict[str, Any]], *, wait_for_visibility: bool = False,
        visibility_timeout_ms: int | None = None,
    ) -> Receipt:
        """One request of records ``{idempotency_key, op, payload[, event_time]}``; retried with the same keys."""
        parts = [orjson.dumps(record) for record in records]
        body = calls.ingest_body(parts, wait_for_visibility=wait_for_visibility,
                                 visibility_timeout_ms=visibility_timeout_ms)
        return Receipt.from_json(self.request(calls.ingest(table, body)))

    def ingest_rows(
        self, table: str, rows: Iterable[dict[str, Any]], *, key_prefix: str, op: str = "insert",
        key_column: str | None = None, batch_rows: int = 5000, progress: Progress | None = None,
    ) -> IngestSummary:
        """Payloads in batches, keyed ``{key_prefix}-{n}`` so a re-run stores nothing twice."""
        batches = row_batches(rows, op=op, key_prefix=key_prefix, key_column=key_column, batch_rows=batch_rows)
        return self._load(table, batches, progress)

    def ingest_file(
        self, table: str, path: str | Path, *, fmt: FileFormat | None = None, op: str = "insert",
        key_prefix: str | None = None, key_column: str | None = None, batch_rows: int = 5000,
        max_batch_bytes: int = 4 << 20, progress: Progress | None = None,
    ) -> IngestSummary:
        """An NDJSON, CSV or Parquet file, batched; keys derive from the file's content and row numbers."""
        load = FileLoad.plan(Path(path), fmt, op=op, key_prefix=key_prefix, key_column=key_column,
                             batch_rows=batch_rows, max_batch_bytes=max_batch_bytes)
        types = self._column_types(table) if load.fmt == "csv" else {}
        return self._load(table, load.batches(types), progress)

    def _column_types(self, table: str) -> dict[str, str]:
        """The table's column types, to read CSV cells as them; a key that may only write gets none."""
        try:
            return column_types(self.table(table))
        except RemoteError as exc:
            if exc.server_code != "FORBIDDEN":
                raise
            return {}

    def _load(self, table: str, batches: Iterator[Batch], progress: Progress | None) -> IngestSummary:
        summary = IngestSummary()
        started, retries = time.monotonic(), self.retries
        for batch in batches:
            for receipt, rows in self._send(table, batch.parts):
                summary.add(receipt, rows)
            if progress is not None:
                progress(summary.rows, batch.position)
        summary.seconds = time.monotonic() - started
        summary.retries = self.retries - retries
        return summary

    def _send(self, table: str, parts: list[bytes]) -> list[tuple[Receipt, int]]:
        """One request; a batch the server finds too large is split in halves (same keys, so still exact)."""
        try:
            answer = self.request(calls.ingest(table, calls.ingest_body(parts)))
        except RemoteError as exc:
            if exc.status != 413 or len(parts) < 2:
                raise
            half = len(parts) // 2
            return self._send(table, parts[:half]) + self._send(table, parts[half:])
        return [(Receipt.from_json(answer), len(parts))]

