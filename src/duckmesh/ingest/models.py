"""The ingest request and receipt of API.md "Ingest"."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duckmesh.errors import ValidationFailed


class IngestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^[^\x00]*$")
    op: str = "insert"
    payload: Any = None
    event_time: str | None = None


class IngestRequest(BaseModel):
    """The JSON-object body (the schema the OpenAPI document shows; the hot path decodes with
    msgspec structs generated per table, this model only explains shape errors)."""

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


def envelope(
    parsed: Any, form: str, default_op: str, keys_required: bool
) -> tuple[bool | None, int | None, list[dict[str, Any]]]:
    """The body's shape, checked: (wait_for_visibility, visibility_timeout_ms, record entries).
    Raises ValidationFailed with every shape problem, grouped by record index."""
    if form != "object":
        if not isinstance(parsed, list) or not all(isinstance(p, dict) for p in parsed):
            raise ValidationFailed("the body must be an array of JSON objects (one payload each)",
                                   hint="send {\"records\": [...]} for per-record keys and ops")
        return None, None, [{"payload": p, "op": default_op} for p in parsed]
    if isinstance(parsed, dict) and "records" not in parsed and set(parsed) - set(IngestRequest.model_fields):
        hint = "wrap the rows: {\"records\": [{\"idempotency_key\": ..., \"payload\": {...}}]}"
        raise ValidationFailed("the body has no records", request_errors=["records: Field required"], hint=hint)
    try:
        request = IngestRequest.model_validate(parsed)
    except ValidationError as exc:
        context = grouped_errors(exc.errors())
        rows = parsed.get("records") if isinstance(parsed, dict) else None
        if isinstance(rows, list) and any(isinstance(r, dict) and "payload" not in r for r in rows):
            context["hint"] = "wrap each row in payload: {\"idempotency_key\": ..., \"payload\": {...row...}}"
        raise ValidationFailed("the request body is not valid", **context) from None
    missing = [i for i, r in enumerate(request.records) if keys_required and r.idempotency_key is None]
    if missing:
        raise ValidationFailed("the request body is not valid", errors=[
            {"index": i, "errors": ["idempotency_key: required unless the request has an Idempotency-Key header"]}
            for i in missing])
    entries = [r.model_dump() for r in request.records]
    return request.wait_for_visibility, request.visibility_timeout_ms, entries


def grouped_errors(errors: list[Any]) -> dict[str, Any]:
    """pydantic errors grouped by record index, so every bad record is named once (the ingest
    body's own check and FastAPI's request validation both answer this way)."""
    by_record: dict[int, list[str]] = {}
    other: list[str] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        text = f"{'.'.join(str(p) for p in loc[2:] or loc)}: {err.get('msg')}"
        if len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
            by_record.setdefault(loc[1], []).append(text)
        else:
            other.append(text)
    context: dict[str, Any] = {}
    if by_record:
        context["errors"] = [{"index": i, "errors": e} for i, e in sorted(by_record.items())]
    if other:
        context["request_errors"] = other
    return context
