"""Files to ingest (NDJSON, CSV, Parquet) read as batches of serialized ingest records.

Every record gets a deterministic idempotency key: ``{prefix}-{row}`` where the prefix names the
file's content (``file-`` + the first 16 hex digits of its SHA-256) and ``row`` is the 0-based row
number. Loading the same file again, or retrying any request of a load, sends the same keys, so the
server stores each row once. ``key_column`` uses a column's value as the key instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from duckmesh.errors import ClientConfigError

FileFormat = Literal["ndjson", "csv", "parquet"]
FORMATS: tuple[FileFormat, ...] = ("ndjson", "csv", "parquet")
_EXTENSIONS: dict[str, FileFormat] = {
    ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}


@dataclass(frozen=True)
class Batch:
    """Serialized records ready for one request, and how far into the file they reach (bytes)."""

    parts: list[bytes]
    position: int
    size: int

    @property
    def rows(self) -> int:
        return len(self.parts)


def detect_format(path: Path) -> FileFormat:
    by_extension = _EXTENSIONS.get(path.suffix.lower())
    if by_extension:
        return by_extension
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head[:4] == b"PAR1":
        return "parquet"
    return "ndjson" if head.lstrip()[:1] == b"{" else "csv"


def file_identity(path: Path) -> str:
    """A short name for the file's content: the same bytes give the same keys wherever the file lives."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


def json_safe(value: Any) -> Any:
    """Arrow/Python values as the JSON the ingest API accepts (see docs/reference.md, column types)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


class _Keys:
    def __init__(self, prefix: str, key_column: str | None) -> None:
        self.prefix = prefix
        self.key_column = key_column

    def key(self, row: int, payload: dict[str, Any]) -> str:
        if self.key_column is None:
            return f"{self.prefix}-{row}"
        value = payload.get(self.key_column)
        if value is None:
            raise ClientConfigError(f"row {row}: key column {self.key_column!r} is missing or null")
        return str(value)


class _Batcher:
    """Collects serialized records until a batch reaches its row or byte bound."""

    def __init__(self, op: str, keys: _Keys, batch_rows: int, max_batch_bytes: int) -> None:
        self.op = op.encode()
        self.keys = keys
        self.batch_rows = batch_rows
        self.max_batch_bytes = max_batch_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.row = 0

    def add(self, payload: dict[str, Any]) -> None:
        key = orjson.dumps(self.keys.key(self.row, payload))
        part = b'{"idempotency_key":' + key + b',"op":"' + self.op + b'","payload":' + orjson.dumps(payload) + b"}"
        self.parts.append(part)
        self.size += len(part) + 1
        self.row += 1

    @property
    def full(self) -> bool:
        return len(self.parts) >= self.batch_rows or self.size >= self.max_batch_bytes

    def take(self, position: int) -> Batch:
        batch = Batch(self.parts, position, self.size)
        self.parts, self.size = [], 0
        return batch


def read_batches(
    path: Path, fmt: FileFormat, *, op: str = "insert", key_prefix: str, key_column: str | None = None,
    batch_rows: int = 5000, max_batch_bytes: int = 4 << 20, column_types: dict[str, str] | None = None,
) -> Iterator[Batch]:
    """Batches of the file's rows; ``column_types`` (the table's) lets CSV cells be read as the right type."""
    batcher = _Batcher(op, _Keys(key_prefix, key_column), batch_rows, max_batch_bytes)
    rows = _ndjson_rows(path) if fmt == "ndjson" else _csv_rows(path, column_types or {}) if fmt == "csv" \
        else _parquet_rows(path)
    position = 0
    for payload, position in rows:
        batcher.add(payload)
        if batcher.full:
            yield batcher.take(position)
    if batcher.parts:
        yield batcher.take(position)


def row_batches(
    rows: Iterable[dict[str, Any]], *, op: str = "insert", key_prefix: str, key_column: str | None = None,
    batch_rows: int = 5000, max_batch_bytes: int = 4 << 20,
) -> Iterator[Batch]:
    """Batches of in-memory payloads, keyed ``{key_prefix}-{n}`` (or by ``key_column``)."""
    batcher = _Batcher(op, _Keys(key_prefix, key_column), batch_rows, max_batch_bytes)
    for payload in rows:
        batcher.add({name: json_safe(value) for name, value in payload.items()})
        if batcher.full:
            yield batcher.take(batcher.row)
    if batcher.parts:
        yield batcher.take(batcher.row)


def _ndjson_rows(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    with open(path, "rb") as handle:
        position = 0
        for number, line in enumerate(handle, start=1):
            position += len(line)
            if not line.strip():
                continue
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ClientConfigError(f"{path.name} line {number}: not valid JSON ({exc})") from None
            if not isinstance(payload, dict):
                raise ClientConfigError(f"{path.name} line {number}: each line must be one JSON object (a row)")
            yield payload, position


class _Counting:
    """A read-only file wrapper that knows how many bytes were read (progress of the CSV reader)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.position = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.position += len(data)
        return data

    def readable(self) -> bool:
        return True


_CSV_TYPES = {"boolean": "bool_", "int32": "int32", "int64": "int64", "float32": "float32", "float64": "float64"}


def _csv_rows(path: Path, column_types: dict[str, str]) -> Iterator[tuple[dict[str, Any], int]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    # Cells of the table's columns are read as the column's type (a zip code stays "01234");
    # everything else (decimals, dates, timestamps) stays text and the server parses it exactly.
    types = {name: getattr(pa, _CSV_TYPES.get(kind, "string"))() for name, kind in column_types.items()}
    json_columns = {name for name, kind in column_types.items() if kind == "json"}
    convert = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    with open(path, "rb") as raw:
        counting = _Counting(raw)
        try:
            reader = pa_csv.open_csv(counting, convert_options=convert)
            for record_batch in reader:
                for row in record_batch.to_pylist():
                    yield _csv_payload(row, json_columns), counting.position
        except pa.ArrowInvalid as exc:
            raise ClientConfigError(f"{path.name}: not a readable CSV file ({exc})") from None


def _csv_payload(row: dict[str, Any], json_columns: set[str]) -> dict[str, Any]:
    payload = {name: json_safe(value) for name, value in row.items() if value is not None}
    for name in json_columns & payload.keys():
        with contextlib.suppress(orjson.JSONDecodeError):  # plain text stays a JSON string
            payload[name] = orjson.loads(payload[name])
    return payload


def _parquet_rows(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid as exc:
        raise ClientConfigError(f"{path.name}: not a readable Parquet file ({exc})") from None
    total_rows = max(1, parquet.metadata.num_rows)
    size = path.stat().st_size
    done = 0
    for record_batch in parquet.iter_batches(batch_size=10_000):
        for row in record_batch.to_pylist():
            done += 1
            payload = {name: json_safe(value) for name, value in row.items() if value is not None}
            yield payload, size * done // total_rows
