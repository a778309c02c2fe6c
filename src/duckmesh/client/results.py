"""What the client returns: query results, ingest receipts and the summary of a file load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from duckmesh.errors import ClientConfigError


@dataclass(frozen=True)
class QueryResult:
    """A JSON query answer. Values are JSON-safe (big integers and decimals as strings, timestamps RFC 3339)."""

    columns: list[dict[str, str]]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    snapshot_id: int | None
    snapshot_time: str | None
    max_visibility_token: int
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> QueryResult:
        return cls(
            columns=list(body.get("columns", [])), rows=list(body.get("rows", [])),
            row_count=int(body.get("row_count", 0)), truncated=bool(body.get("truncated", False)),
            snapshot_id=body.get("snapshot_id"), snapshot_time=body.get("snapshot_time"),
            max_visibility_token=int(body.get("max_visibility_token", 0)), stats=dict(body.get("stats", {})),
        )

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def dicts(self) -> list[dict[str, Any]]:
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class ExportResult:
    """A CSV, NDJSON or Arrow answer: the bytes plus the snapshot metadata from the X-DuckMesh-* headers."""

    content: bytes
    media_type: str
    snapshot_id: int | None
    max_visibility_token: int
    truncated: bool
    row_count: int | None

    @classmethod
    def from_response(cls, response: httpx.Response) -> ExportResult:
        headers = response.headers
        snapshot = headers.get("x-duckmesh-snapshot-id", "")
        rows = headers.get("x-duckmesh-row-count", "")
        return cls(
            content=response.content, media_type=headers.get("content-type", ""),
            snapshot_id=int(snapshot) if snapshot.isdigit() else None,
            max_visibility_token=int(headers.get("x-duckmesh-max-visibility-token", "0") or 0),
            truncated=headers.get("x-duckmesh-truncated", "false") == "true",
            row_count=int(rows) if rows.isdigit() else None,
        )

    def arrow(self) -> Any:
        """The Arrow table of an ``arrow`` export (a ``pyarrow.Table``)."""
        import pyarrow as pa

        with pa.ipc.open_stream(self.content) as reader:
            return reader.read_all()


def to_pandas(table: Any) -> Any:
    """A pandas DataFrame of an Arrow table, when pandas is installed."""
    try:
        import pandas  # noqa: F401 - only checks that it is installed
    except ImportError:
        raise ClientConfigError("pandas is not installed: `pip install pandas`, or use query_arrow") from None
    return table.to_pandas()


@dataclass(frozen=True)
class Receipt:
    """An ingest receipt (POST /v1/ingest/{table})."""

    accepted_count: int
    duplicate_count: int
    max_visibility_token: int
    visible_snapshot_id: int | None
    status: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Receipt:
        return cls(
            accepted_count=int(body.get("accepted_count", 0)), duplicate_count=int(body.get("duplicate_count", 0)),
            max_visibility_token=int(body.get("max_visibility_token", 0)),
            visible_snapshot_id=body.get("visible_snapshot_id"), status=str(body.get("status", "")), raw=body,
        )


@dataclass
class IngestSummary:
    """What a multi-request load did: rows sent, accepted, duplicates, requests, retries and the last token."""

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    requests: int = 0
    retries: int = 0
    last_token: int = 0
    seconds: float = 0.0

    def add(self, receipt: Receipt, rows: int) -> None:
        self.rows += rows
        self.accepted += receipt.accepted_count
        self.duplicates += receipt.duplicate_count
        self.requests += 1
        self.last_token = max(self.last_token, receipt.max_visibility_token)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "accepted": self.accepted, "duplicates": self.duplicates, "requests": self.requests,
            "retries": self.retries, "last_token": self.last_token, "seconds": round(self.seconds, 3),
        }
