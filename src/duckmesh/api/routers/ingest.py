from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request, Response

from duckmesh.api.context import AppContext
from duckmesh.api.routing import api_router
from duckmesh.api.write_guard import writable
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Op, Role
from duckmesh.errors import InvalidJson
from duckmesh.ingest.models import IngestReceipt
from duckmesh.ingest.service import IngestOptions
from duckmesh.ingest.validate import BodyForm
from duckmesh.observability.logging import trace_id_var

router = api_router("ingest")
Writer = Annotated[Principal, Depends(writable(Role.INGEST_WRITER))]
_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-seq")
_PAYLOAD_ARRAY = {"type": "array", "items": {"type": "object", "description": "one payload (column -> value)"}}


def _form(content_type: str, body: bytes) -> BodyForm:
    if content_type.split(";")[0].strip().lower() in _NDJSON:
        return BodyForm.NDJSON
    start = body.lstrip()[:1]
    if start == b"[":
        return BodyForm.ARRAY
    if start == b"{":
        return BodyForm.OBJECT
    raise InvalidJson("the body must be a JSON object ({\"records\": [...]}), a JSON array of payloads or NDJSON")


@router.post(
    "/v1/ingest/{table}",
    response_model=IngestReceipt,
    responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 429: {}, 503: {}, 504: {}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/IngestRequest"}, _PAYLOAD_ARRAY]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one payload object per line"}},
    }}},
)
async def ingest(
    table: str, principal: Writer, request: Request, response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=512, pattern=r"^[\x20-\x7e]+$")] = None,
    op: Annotated[Literal["insert", "upsert", "delete"],
              Query(description="array and NDJSON bodies: the op of every record")]
    = "insert",
    wait_for_visibility: Annotated[bool, Query(description="array and NDJSON bodies")] = False,
    visibility_timeout_ms: Annotated[int, Query(ge=0, le=600_000, description="array and NDJSON bodies")] = 3000,
) -> IngestReceipt:
    """The body is read raw and validated by the ingest service (msgspec structs per table schema).
    A retry of an ``Idempotency-Key`` answers the first request's receipt with the header
    ``Idempotent-Replayed: true``."""
    ctx: AppContext = request.app.state.ctx
    body = await request.body()
    options = IngestOptions(
        form=_form(request.headers.get("content-type", ""), body), request_key=idempotency_key, op=Op(op),
        wait_for_visibility=wait_for_visibility, visibility_timeout_ms=visibility_timeout_ms,
    )
    result = await ctx.ingest.ingest(principal, table, body, options, trace_id_var.get())
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result.receipt
