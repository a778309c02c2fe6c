"""The ingest request and receipt of API.md "Ingest"."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class IngestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    idempotency_key: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00]*$")
    op: str = "insert"
    payload: Any = None
    event_time: str | None = None


class IngestRequest(BaseModel):
    # strict: "yes" is not a boolean and "5" not a number here
    model_config = ConfigDict(extra="forbid", strict=True)

    records: list[IngestRecord] = Field(default_factory=list)
    wait_for_visibility: bool = False
    visibility_timeout_ms: int = Field(default=3000, ge=0, le=600_000)


class IngestReceipt(BaseModel):
    accepted_count: int
    duplicate_count: int
    max_visibility_token: int
    visible_snapshot_id: int | None
    status: Literal["accepted", "visible", "partial_duplicate", "dead_lettered"]
    schema_version: int
    # With wait_for_visibility: records of this request that were dead-lettered instead of
    # becoming visible (status "dead_lettered"; see GET /v1/dead-letters).
    failed_count: int = 0
