"""The query request and response of API.md "Query"."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sql: str | None = None
    params: dict[str, Any] | list[Any] | None = None
    snapshot_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    snapshot_time: str | None = None
    min_visibility_token: int | None = Field(default=None, le=2**63 - 1)
    consistency_timeout_ms: int = Field(default=3000, ge=0)
    row_limit: int | None = Field(default=None, ge=1)
    timeout_ms: int | None = Field(default=None, ge=1)


class QueryStats(BaseModel):
    duration_ms: float
    wait_ms: float
    scanned_files: int
    scanned_bytes: int


class QueryResponse(BaseModel):
    columns: list[dict[str, str]]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    snapshot_id: int | None
    snapshot_time: str | None
    max_visibility_token: int
    stats: QueryStats
