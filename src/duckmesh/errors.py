"""One error root. Each subclass knows its error code, HTTP status and whether a retry may help."""

from __future__ import annotations

from typing import Any, ClassVar


class DuckMeshError(Exception):
    error_code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class InvalidJson(DuckMeshError):
    error_code, http_status = "INVALID_JSON", 400


class RequestInvalid(DuckMeshError):
    error_code, http_status = "REQUEST_INVALID", 400


class RecordsRequired(DuckMeshError):
    error_code, http_status = "RECORDS_REQUIRED", 400


class ValidationFailed(DuckMeshError):
    error_code, http_status = "VALIDATION_FAILED", 400


class OpNotSupported(DuckMeshError):
    error_code, http_status = "OP_NOT_SUPPORTED", 400


class VisibilityTokenInvalid(DuckMeshError):
    error_code, http_status = "VISIBILITY_TOKEN_INVALID", 400


class TokenScopeMismatch(DuckMeshError):
    error_code, http_status = "TOKEN_SCOPE_MISMATCH", 400


class Unauthorized(DuckMeshError):
    error_code, http_status = "UNAUTHORIZED", 401


class Forbidden(DuckMeshError):
    error_code, http_status = "FORBIDDEN", 403


class NotFound(DuckMeshError):
    error_code, http_status = "NOT_FOUND", 404


class TableNotFound(DuckMeshError):
    error_code, http_status = "TABLE_NOT_FOUND", 404


class SchemaChanged(DuckMeshError):
    """The table's schema version moved between validation and acceptance (a concurrent ALTER);
    the request is validated again against the new version."""

    error_code, http_status, retryable = "SCHEMA_CHANGED", 409, True


class TenantNotFound(DuckMeshError):
    error_code, http_status = "TENANT_NOT_FOUND", 404


class SnapshotNotFound(DuckMeshError):
    error_code, http_status = "SNAPSHOT_NOT_FOUND", 404


class MethodNotAllowed(DuckMeshError):
    error_code, http_status = "METHOD_NOT_ALLOWED", 405


class TableExists(DuckMeshError):
    error_code, http_status = "TABLE_EXISTS", 409


class TenantExists(DuckMeshError):
    error_code, http_status = "TENANT_EXISTS", 409


class KeyExists(DuckMeshError):
    """An API key with this secret (or id) is already stored; revoked keys are never re-activated."""

    error_code, http_status = "KEY_EXISTS", 409


class IdempotencyKeyReused(DuckMeshError):
    error_code, http_status = "IDEMPOTENCY_KEY_REUSED", 409


class PayloadTooLarge(DuckMeshError):
    error_code, http_status = "PAYLOAD_TOO_LARGE", 413


class ConsistencyTimeout(DuckMeshError):
    error_code, http_status, retryable = "CONSISTENCY_TIMEOUT", 504, True


class NotReady(DuckMeshError):
    error_code, http_status, retryable = "NOT_READY", 503, True


class CatalogUnavailable(DuckMeshError):
    error_code, http_status, retryable = "CATALOG_UNAVAILABLE", 503, True


class ReadOnly(DuckMeshError):
    """The tenant, or the whole service, is in emergency read-only mode: writes are refused while
    queries are served. Retrying later helps once an operator switches it off (``Retry-After``)."""

    error_code, http_status, retryable = "READ_ONLY", 503, True


class StorageError(DuckMeshError):
    """An object-store operation failed and retrying will not help (e.g. access denied)."""

    error_code, http_status = "STORAGE_ERROR", 500


class TransientStorageError(StorageError):
    """An object-store operation failed in a way a retry may fix (timeouts, 5xx, throttling)."""

    error_code, http_status, retryable = "STORAGE_UNAVAILABLE", 503, True


class ObjectNotFound(StorageError):
    error_code, http_status = "OBJECT_NOT_FOUND", 404


class CommitConflict(DuckMeshError):
    """A precondition of a snapshot commit no longer holds (inputs changed, a lease or write
    intent expired...); nothing was published. The caller may plan again."""

    error_code, http_status, retryable = "COMMIT_CONFLICT", 409, True


class NothingToCommit(CommitConflict):
    """A commit step found nothing left to do (another worker did it first); nothing was published."""


class LeaseLost(CommitConflict):
    """A worker's lease expired and another worker may own the work now; the worker must stop."""

    error_code, http_status, retryable = "LEASE_LOST", 409, True


class DataFileMissing(DuckMeshError):
    """A data file a snapshot references is gone from the object store (run an integrity check)."""

    error_code, http_status = "DATA_FILE_MISSING", 500


class ConfigError(DuckMeshError):
    error_code, http_status = "CONFIG_INVALID", 500


class SqlRequired(DuckMeshError):
    error_code, http_status = "SQL_REQUIRED", 400


class SqlNotAllowed(DuckMeshError):
    error_code, http_status = "SQL_NOT_ALLOWED", 400


class QueryInvalid(DuckMeshError):
    error_code, http_status = "QUERY_INVALID", 400


class SnapshotSelectorConflict(DuckMeshError):
    error_code, http_status = "SNAPSHOT_SELECTOR_CONFLICT", 400


class QueryTimeout(DuckMeshError):
    """The query ran out of time; running it again will too (raise timeout_ms or narrow the query)."""

    error_code, http_status = "QUERY_TIMEOUT", 408


class QueryConcurrencyLimit(DuckMeshError):
    error_code, http_status, retryable = "QUERY_CONCURRENCY_LIMIT", 429, True


class QueryResourceLimit(DuckMeshError):
    """The query needed more memory than its limit allows."""

    error_code, http_status = "QUERY_RESOURCE_LIMIT", 400


class IntegrityCheckFailed(DuckMeshError):
    error_code, http_status = "INTEGRITY_CHECK_FAILED", 409


class BackupFailed(DuckMeshError):
    """A backup, restore or restore drill could not be made (a tool failed, a file is missing or
    altered, the target is not empty...); the message says what."""

    error_code = "BACKUP_FAILED"


class SchemaIncompatible(DuckMeshError):
    error_code, http_status = "SCHEMA_INCOMPATIBLE", 409


class IngestBackpressure(DuckMeshError):
    """The tenant has too many accepted events not yet visible; nothing of the request was stored."""

    error_code, http_status, retryable = "INGEST_BACKPRESSURE", 429, True


class RateLimited(DuckMeshError):
    error_code, http_status, retryable = "RATE_LIMITED", 429, True


class PromptRequired(DuckMeshError):
    error_code, http_status = "PROMPT_REQUIRED", 400


class TranslateNotConfigured(DuckMeshError):
    """Query assist is off (``DUCKMESH_AI_TRANSLATE_ENABLED`` is not set)."""

    error_code, http_status = "TRANSLATE_NOT_CONFIGURED", 501


class TranslateFailed(DuckMeshError):
    """The model endpoint failed: unreachable, an HTTP error, or not a chat-completions answer."""

    error_code, http_status, retryable = "TRANSLATE_FAILED", 502, True


class TranslateAnswerInvalid(TranslateFailed):
    """The model answered, but not with a SQL statement."""

    error_code = "TRANSLATE_ANSWER_INVALID"


class TranslateTimeout(TranslateFailed):
    error_code, http_status = "TRANSLATE_TIMEOUT", 504


class RemoteError(DuckMeshError):
    """An error answer of a DuckMesh server, as a client sees it: the server's code, status and flag."""

    error_code = "REMOTE_ERROR"

    def __init__(
        self, server_code: str, message: str, *, status: int, server_retryable: bool = False,
        trace_id: str | None = None, retry_after: float | None = None, **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.server_code = server_code
        self.status = status
        self.server_retryable = server_retryable
        self.trace_id = trace_id
        self.retry_after = retry_after


class ServerUnreachable(DuckMeshError):
    """A client could not talk to the server at all (connection refused, timeout, not DuckMesh)."""

    error_code, retryable = "SERVER_UNREACHABLE", True


class ClientConfigError(DuckMeshError):
    """A client has no usable server address or key (flags, environment, profile file)."""

    error_code, http_status = "CLIENT_CONFIG_INVALID", 400
