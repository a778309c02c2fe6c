"""The served OpenAPI document: what every operation does, an example of each, and how to authenticate.

One table (``OPERATIONS``) describes every route; ``document`` merges it into FastAPI's generated
schema, so Swagger UI ("Try it out", with the Authorize button) shows real requests and answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from duckmesh.ingest.models import IngestRequest

DESCRIPTION = """\
HTTP writers → snapshot-versioned Parquet tables → SQL over them with DuckDB, with an exact
read-after-write guarantee through visibility tokens.

**Authentication**: every `/v1` route except health and readiness needs an API key, sent as
`Authorization: Bearer <key>` or `X-API-Key: <key>` (click *Authorize*). A key belongs to one tenant
and carries roles: `ingest_writer`, `query_reader`, `table_admin`, `ops_admin`.

**Errors**: every non-2xx answer is `{error_code, message, retryable, context, trace_id}`.

**Consistency**: ingest returns a `max_visibility_token`; a query with `min_visibility_token` sees that
write or fails with `CONSISTENCY_TIMEOUT`. The user reference (`docs/reference.md` in the repository)
explains every field.
"""

ERROR_BODY = {
    "type": "object",
    "required": ["error_code", "message", "retryable", "context", "trace_id"],
    "properties": {
        "error_code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"},
        "context": {"type": "object"}, "trace_id": {"type": ["string", "null"]},
    },
    "example": {"error_code": "TABLE_NOT_FOUND", "message": "table 'events' not found", "retryable": False,
                "context": {"table": "events"}, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
}
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: <API key>"},
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]

_COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type": "int64", "nullable": False}, {"name": "kind", "type": "string", "nullable": True},
    {"name": "at", "type": "timestamp", "nullable": True},
]
_TABLE_INFO = {
    "table_id": 3, "tenant_id": 1, "table_name": "events", "schema_version": 1, "columns": _COLUMNS,
    "primary_key": ["id"], "partition_by": [], "compatibility_mode": "backward",
    "created_at": "2026-01-01T10:00:00+00:00", "updated_at": "2026-01-01T10:00:00+00:00",
    "stats": {"rows": 1200, "files": 3, "bytes": 48213},
}
_SNAPSHOT = {
    "snapshot_id": 88, "parent_snapshot_id": 87, "created_at": "2026-01-01T10:00:01.204+00:00",
    "created_by": "host:4121", "kind": "ingest", "max_visibility_token": 1234,
    "tables": {"events": {"files": 3, "rows": 1200, "bytes": 48213, "watermark": 1234}}, "pinned": False,
}
_READ_ONLY_EXAMPLE = {
    "tenant_id": 1, "read_only": True, "global": None,
    "tenant": {"scope": "tenant", "tenant_id": 1, "reason": "restoring a backup", "set_by": "k_123",
               "since": "2026-01-01T10:00:00+00:00"},
}
_RUN = {"status": "completed", "summary": {"dry_run": False, "tables": {"events": {"status": "compacted"}}}}


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str
    request: Any = None
    response: Any = None


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/ingest/{table}"): Operation(
        "Ingest records (ingest_writer)",
        "Validates every record against the table's active schema and stores all of them or none. The"
        " answer's `max_visibility_token` covers every record (duplicates included); with"
        " `wait_for_visibility` it answers only once they are visible (`status: visible`) or with 504"
        " `CONSISTENCY_TIMEOUT` (the write is accepted; retrying with the same keys is safe).",
        {"records": [{"idempotency_key": "evt-1", "op": "upsert",
                      "payload": {"id": 1, "kind": "click", "at": "2026-01-01T10:00:00Z"}}],
         "wait_for_visibility": False},
        {"accepted_count": 1, "duplicate_count": 0, "max_visibility_token": 1234, "visible_snapshot_id": None,
         "status": "accepted", "schema_version": 1},
    ),
    ("post", "/v1/query"): Operation(
        "Run SQL (query_reader)",
        "One read-only SELECT over the tenant's tables at the latest snapshot, a given `snapshot_id` or"
        " `snapshot_time`, optionally after waiting for `min_visibility_token`. `?format=csv|ndjson|arrow`"
        " (or `Accept: application/vnd.apache.arrow.stream`) streams the rows instead of JSON; snapshot id,"
        " watermark and truncation then come in `X-DuckMesh-*` headers.",
        {"sql": "SELECT kind, count(*) AS n FROM events WHERE at >= $since GROUP BY kind",
         "params": {"since": "2026-01-01T00:00:00Z"}, "min_visibility_token": 1, "consistency_timeout_ms": 3000},
        {"columns": [{"name": "kind", "type": "VARCHAR"}, {"name": "n", "type": "BIGINT"}],
         "rows": [["click", 42]], "row_count": 1, "truncated": False, "snapshot_id": 88,
         "snapshot_time": "2026-01-01T10:00:01.204+00:00", "max_visibility_token": 1234,
         "stats": {"duration_ms": 4.2, "wait_ms": 0.0, "scanned_files": 3, "scanned_bytes": 48213}},
    ),
    ("post", "/v1/query/translate"): Operation(
        "Suggest SQL for a question (query_reader)",
        "Asks the configured OpenAI-compatible model for one DuckDB SELECT over the caller's own tables"
        " (their schemas and a few sample rows go into the prompt, never another tenant's). The SQL is only a"
        " suggestion: it is not run, and `sandbox_ok` says whether `POST /v1/query` would accept it. 501"
        " `TRANSLATE_NOT_CONFIGURED` while `DUCKMESH_AI_TRANSLATE_ENABLED` is off.",
        {"prompt": "clicks per day last week"},
        {"sql": "SELECT date_trunc('day', at) AS day, count(*) FROM events GROUP BY 1 ORDER BY 1",
         "provider": "openai-compatible", "model": "local-model", "sandbox_ok": True, "sandbox_error_code": None,
         "warnings": [], "referenced_tables": ["events"]},
    ),
    ("get", "/v1/ui/schema"): Operation(
        "Tables with columns, row counts and sample rows (query_reader)",
        "For tools and the console: every live table with typed columns, primary key, row count and up to"
        " `sample_rows` rows (read through the query sandbox), at the latest snapshot.",
        None,
        {"tables": [{"table_name": "events", "columns": [{"name": "id", "type": "int64", "nullable": False}],
                     "primary_key": [], "row_count": 42, "sample_rows": [[1]]}],
         "snapshot_id": 88, "snapshot_time": "2026-01-01T10:00:01.204+00:00", "max_visibility_token": 1234},
    ),
    ("get", "/v1/tables"): Operation(
        "List tables (query_reader or table_admin)", "Every live table of the tenant with its current schema"
        " and stats.", None, {"tenant_id": 1, "tables": [_TABLE_INFO]},
    ),
    ("post", "/v1/tables"): Operation(
        "Create a table (table_admin)",
        "Column types: boolean, int32, int64, float32, float64, decimal(p,s), string, binary, date, timestamp,"
        " json. A `primary_key` makes the table keyed (upsert/delete; one row per key).",
        {"table_name": "events", "columns": _COLUMNS, "primary_key": ["id"]}, _TABLE_INFO,
    ),
    ("get", "/v1/tables/{table}"): Operation("Describe a table (query_reader or table_admin)",
                                             "The table's current schema and stats.", None, _TABLE_INFO),
    ("patch", "/v1/tables/{table}"): Operation(
        "Evolve a table's schema (table_admin)",
        "Send the whole new column list; a compatible change creates the next schema version, an incompatible"
        " one answers 409 `SCHEMA_INCOMPATIBLE` with every reason.",
        {"columns": [*_COLUMNS, {"name": "country", "type": "string", "nullable": True}]},
        {**_TABLE_INFO, "schema_version": 2},
    ),
    ("delete", "/v1/tables/{table}"): Operation(
        "Drop a table (table_admin)", "Publishes a `drop` snapshot; older snapshots still show the table.",
        None, {"table_id": 3, "table_name": "events", "dropped": True, "snapshot_id": 90},
    ),
    ("get", "/v1/tables/{table}/schemas"): Operation(
        "Schema history (query_reader or table_admin)", "Every schema version of the table, oldest first.", None,
        {"table_id": 3, "table_name": "events", "schema_version": 1, "schemas": [
            {"schema_version": 1, "compatibility_mode": "backward", "created_at": "2026-01-01T10:00:00+00:00",
             "columns": _COLUMNS, "primary_key": ["id"], "partition_by": []}]},
    ),
    ("post", "/v1/tables/{table}/backfill"): Operation(
        "Bulk-load a file as one snapshot (table_admin)",
        "NDJSON (one payload per line) or one Parquet file (`Content-Type: application/vnd.apache.parquet`),"
        " validated like ingest and published as one `backfill` snapshot. The same `backfill_id` with the"
        " same bytes returns the original result.",
        '{"id": 1, "kind": "click", "at": "2026-01-01T10:00:00Z"}\n',
        {"backfill_id": "2026-01-load", "status": "published", "record_count": 1, "min_visibility_token": 1235,
         "max_visibility_token": 1235, "snapshot_id": 91},
    ),
    ("get", "/v1/snapshots"): Operation(
        "List snapshots (query_reader, table_admin or ops_admin)",
        "Newest first; page with `before=<next_before>`.", None, {"snapshots": [_SNAPSHOT], "next_before": None},
    ),
    ("get", "/v1/snapshots/{snapshot_id}"): Operation(
        "One snapshot with its files", "The snapshot and the live data files of each table.", None,
        {**_SNAPSHOT, "files": {"events": [{"file_id": 7, "path": "1/3/date=2026-01-01/part-88-0.parquet",
                                            "record_count": 1200, "file_size_bytes": 48213, "min_token": 1,
                                            "max_token": 1234, "schema_version": 1}]}},
    ),
    ("post", "/v1/snapshots/restore"): Operation(
        "Restore an old snapshot (ops_admin)",
        "Publishes a NEW `restore` snapshot whose file sets equal the old one's; history is kept and the"
        " watermark does not go back. With `dry_run: true` it publishes nothing and answers 200 with, per"
        " live table, `changed`, files and rows (`rows_*` as queries see them, `stored_rows_*` every stored"
        " row) now and after.", {"snapshot_id": 80}, {**_SNAPSHOT, "snapshot_id": 92, "kind": "restore"},
    ),
    ("post", "/v1/snapshots/pin"): Operation(
        "Pin a snapshot (ops_admin)", "A pinned snapshot is never expired by retention.",
        {"snapshot_id": 88, "reason": "quarter-end report", "expires_at": "2026-04-01T00:00:00Z"},
        {"snapshot_id": 88, "reason": "quarter-end report", "created_at": "2026-01-02T09:00:00+00:00",
         "expires_at": "2026-04-01T00:00:00+00:00"},
    ),
    ("delete", "/v1/snapshots/pin/{snapshot_id}"): Operation("Unpin a snapshot (ops_admin)",
                                                             "Retention may expire it again.", None, None),
    ("post", "/v1/compaction/run"): Operation(
        "Compact now (ops_admin)", "Merges small files of the caller's tenant (optionally one table);"
        " `dry_run` only plans.", {"table": "events", "dry_run": False}, _RUN,
    ),
    ("post", "/v1/retention/run"): Operation(
        "Retention and GC now (ops_admin)",
        "Expires old snapshots, deletes unreferenced files and orphans, cleans the ingest bus; `dry_run` counts.",
        {"dry_run": True}, {"status": "completed", "summary": {"dry_run": True, "expired_snapshots": 12}},
    ),
    ("post", "/v1/integrity/run"): Operation(
        "Integrity check now (ops_admin)",
        "Checks every retained file against the object store (`deep`: content hashes and row counts); a"
        " failure is 409 `INTEGRITY_CHECK_FAILED` listing the bad files in `context.bad_files`.",
        {"deep": False}, {"status": "completed", "summary": {"files_checked": 3, "bad_files": [], "orphans": []}},
    ),
    ("get", "/v1/dead-letters"): Operation(
        "Dead letters (ops_admin)", "Events that could not be materialized, oldest first; page with `after`.",
        None, {"dead_letters": [{"event_id": 5012, "table_name": "events", "idempotency_key": "evt-9",
                                 "failure_reason": "table_dropped", "failed_at": "2026-01-01T10:05:00+00:00"}],
               "next_after": None},
    ),
    ("post", "/v1/dead-letters/replay"): Operation(
        "Replay dead letters (ops_admin)", "Each becomes a new event with a new token (key `KEY~replay-ID`).",
        {"event_ids": [5012]}, {"replayed": [{"event_id": 5012, "visibility_token": 1301}], "replayed_count": 1,
                                "skipped_event_ids": [], "max_visibility_token": 1301},
    ),
    ("get", "/v1/lag"): Operation(
        "Ingest lag and freshness (ops_admin)",
        "Pending, claimed and failed events, the oldest pending age, issued vs visible tokens and the latest"
        " snapshot of the caller's tenant; `tables` gives the same counts per live table with the table's"
        " watermark in the head snapshot and its newest waiting token.", None,
        {"tenant_id": 1, "pending_events": 120, "claimed_events": 500, "failed_events": 0,
         "oldest_pending_age_ms": 840, "latest_issued_token": 1854, "latest_visibility_token": 1234,
         "token_lag": 620, "latest_snapshot_id": 88, "latest_snapshot_time": "2026-01-01T10:00:01.204+00:00",
         "tables": {"events": {"table_id": 3, "table_name": "events", "pending_events": 120, "claimed_events": 500,
                               "failed_events": 0, "oldest_pending_age_ms": 840, "latest_pending_token": 1854,
                               "watermark": 1234}}},
    ),
    ("get", "/v1/read-only"): Operation(
        "Read-only mode of the tenant (ops_admin)",
        "Whether the caller's tenant may write now, and the switch that stops it: its own (`tenant`) or the"
        " operator's global one (`global`, set only with the CLI: `duckmesh read-only on --global`).", None,
        _READ_ONLY_EXAMPLE,
    ),
    ("put", "/v1/read-only"): Operation(
        "Switch the tenant's read-only mode (ops_admin)",
        "`enabled: true` (with a `reason`) refuses the tenant's ingest, backfills, table changes and replays with"
        " 503 `READ_ONLY` (retryable, `Retry-After`) while queries are served and accepted events still become"
        " visible; `enabled: false` ends it. Audited; every API process applies it at once (NOTIFY), at the"
        " latest after 5 s.",
        {"enabled": True, "reason": "restoring a backup"},
        _READ_ONLY_EXAMPLE,
    ),
    ("post", "/v1/keys"): Operation(
        "Create an API key (ops_admin)",
        "A new key of the caller's tenant with the given roles and an optional `expires_at` (RFC 3339). The"
        " secret (`key`) is in this answer only; the catalog keeps a salted hash. Audited as `key.create`.",
        {"roles": ["ingest_writer", "query_reader"], "expires_at": "2026-12-31T00:00:00Z"},
        {"key_id": "3f2a9c0d1e4b5a69", "tenant_id": 1, "roles": ["ingest_writer", "query_reader"],
         "created_at": "2026-01-01T10:00:00+00:00", "expires_at": "2026-12-31T00:00:00+00:00", "revoked_at": None,
         "last_used_at": None, "key": "dm_3f2a9c0d1e4b5a69_k1Zr0...shown-once"},
    ),
    ("get", "/v1/keys"): Operation(
        "List API keys (ops_admin)",
        "Every key of the caller's tenant with its roles, creation, expiry, revocation and last use (about a"
        " minute precise); never a secret.", None,
        {"keys": [{"key_id": "3f2a9c0d1e4b5a69", "tenant_id": 1, "roles": ["query_reader"],
                   "created_at": "2026-01-01T10:00:00+00:00", "expires_at": None, "revoked_at": None,
                   "last_used_at": "2026-01-02T08:15:00+00:00"}]},
    ),
    ("delete", "/v1/keys/{key_id}"): Operation(
        "Revoke an API key (ops_admin)",
        "Revokes a key of the caller's tenant; every server refuses it from its next request (revocations are"
        " broadcast to the servers' key caches). Audited as `key.revoke`; revoked keys never come back.", None,
        {"key_id": "3f2a9c0d1e4b5a69", "tenant_id": 1, "roles": ["query_reader"],
         "created_at": "2026-01-01T10:00:00+00:00", "expires_at": None, "revoked_at": "2026-01-03T09:00:00+00:00",
         "last_used_at": "2026-01-02T08:15:00+00:00"},
    ),
    ("get", "/v1/audit"): Operation(
        "Audit trail (ops_admin)", "Admin and security-relevant actions of the tenant, newest first.", None,
        {"entries": [{"audit_id": 17, "action": "table.create", "object_type": "table", "object_id": "3",
                      "actor": "k_123", "created_at": "2026-01-01T10:00:00+00:00"}], "next_before": None},
    ),
    ("get", "/v1/health"): Operation("Liveness", "The process is alive (no key needed).", None, {"status": "ok"}),
    ("get", "/v1/ready"): Operation(
        "Readiness", "Catalog reachable, migrations current, object store writable; otherwise 503 `NOT_READY`"
        " naming the failed check (no key needed). Read-only mode is still ready: `mode` is `read_only` while the"
        " global switch is on, and `read_only.tenants` counts the tenants switched on.", None,
        {"status": "ready", "checks": {"catalog": "ok", "migrations": "ok", "object_store": "ok"},
         "mode": "read_write", "read_only": {"global": False, "tenants": 0}},
    ),
}


def _apply(path: str, method: str, operation: dict[str, Any]) -> None:
    doc = OPERATIONS.get((method, path))
    if doc is not None:
        operation["summary"] = doc.summary
        operation["description"] = doc.description
    body = operation.get("requestBody", {}).get("content", {})
    if doc is not None and doc.request is not None:
        for media in body.values():
            media["example"] = doc.request
    for status, response in operation.get("responses", {}).items():
        if status.startswith("2") and doc is not None and doc.response is not None:
            content = response.setdefault("content", {})
            if not content:
                kind = "text/plain" if isinstance(doc.response, str) else "application/json"
                content[kind] = {"schema": {"type": "string"} if isinstance(doc.response, str) else {}}
            for media_type, media in content.items():
                if media_type in ("application/json", "text/plain"):
                    media["example"] = doc.response
    if "401" in operation.get("responses", {}):
        operation["security"] = SECURITY


def document(app: FastAPI) -> dict[str, Any]:
    """The served document says what the API really answers: request validation errors are 400
    (never FastAPI's 422), every error uses the one error body, protected routes name their auth."""
    schema = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_BODY
    # The ingest route reads its body raw (validated per table by the ingest service): its
    # object form is documented from the model.
    ingest = IngestRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components["schemas"].update(ingest.pop("$defs", {}))
    components["schemas"]["IngestRequest"] = ingest
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {})
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["description"] = response.get("description") or "error"
                    response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            _apply(path, method, operation)
    components["schemas"].pop("HTTPValidationError", None)
    components["schemas"].pop("ValidationError", None)
    return schema
