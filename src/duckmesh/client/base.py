"""What the sync and async clients share: connection settings, headers, and the load plan of a file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from duckmesh import __version__
from duckmesh.client.calls import RetryPolicy
from duckmesh.client.config import resolve
from duckmesh.client.files import Batch, FileFormat, detect_format, file_identity, read_batches
from duckmesh.errors import ClientConfigError

# Called after each accepted batch: (rows so far, bytes of the file consumed so far).
Progress = Callable[[int, int], None]


def table_path(table: str, suffix: str = "") -> str:
    return f"/v1/tables/{quote(table, safe='')}{suffix}"


@dataclass(frozen=True)
class FileLoad:
    """How one file is loaded: its format, total size, the key prefix and the batches to send."""

    path: Path
    fmt: FileFormat
    size: int
    key_prefix: str
    op: str
    key_column: str | None
    batch_rows: int
    max_batch_bytes: int

    @classmethod
    def plan(
        cls, path: Path, fmt: FileFormat | None, *, op: str, key_prefix: str | None, key_column: str | None,
        batch_rows: int, max_batch_bytes: int,
    ) -> FileLoad:
        if not path.is_file():
            raise ClientConfigError(f"no such file: {path}")
        chosen = fmt or detect_format(path)
        return cls(path, chosen, path.stat().st_size, key_prefix or file_identity(path), op, key_column,
                   batch_rows, max_batch_bytes)

    def batches(self, column_types: dict[str, str]) -> Iterator[Batch]:
        return read_batches(
            self.path, self.fmt, op=self.op, key_prefix=self.key_prefix, key_column=self.key_column,
            batch_rows=self.batch_rows, max_batch_bytes=self.max_batch_bytes, column_types=column_types,
        )


def column_types(table_info: dict[str, Any]) -> dict[str, str]:
    return {str(c["name"]): str(c["type"]) for c in table_info.get("columns", [])}


class ClientBase:
    """Server address, key and retry policy, resolved like the CLI does (flags, environment, profile)."""

    def __init__(
        self, server: str | None = None, key: str | None = None, *, profile: str | None = None,
        timeout: float = 60.0, retry: RetryPolicy | None = None,
    ) -> None:
        connection = resolve(server, key, profile)
        self.server = connection.server
        self.key = connection.key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"duckmesh-client/{__version__}"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers
