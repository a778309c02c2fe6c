"""The client's requests and answers without I/O: what to send, how to read the answer, when to retry.

The sync ``Client`` and the async ``AsyncClient`` both run these ``Call`` objects, so the two can
never disagree about a path, a body or an error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from duckmesh.errors import RemoteError

T = TypeVar("T")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
# Statuses worth another try even when the body is not DuckMesh's (a proxy in between).
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A query that ran out of time will run out of time again: never retried by the client.
# Retrying these repeats the same outcome (a query that ran out of time) or another call to a
# paid model endpoint (query assist): the caller decides.
_NEVER_RETRY = frozenset({"QUERY_TIMEOUT", "TRANSLATE_TIMEOUT", "TRANSLATE_FAILED", "TRANSLATE_ANSWER_INVALID"})


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and the function that turns its 2xx answer into a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.params:
            kwargs["params"] = {k: v for k, v in self.params.items() if v is not None}
        if self.content is not None:
            kwargs["content"] = self.content
            kwargs["headers"] = {"Content-Type": "application/json", **self.headers}
        elif self.json is not None:
            kwargs["content"] = orjson.dumps(self.json)
            kwargs["headers"] = {"Content-Type": "application/json", **self.headers}
        return kwargs


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After is a lower bound."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, min(retry_after or 0.0, self.max_delay * 3))


def should_retry(error: RemoteError) -> bool:
    if error.server_code in _NEVER_RETRY:
        return False
    return error.server_retryable or error.status in _RETRY_STATUSES


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None


def raise_for_error(response: httpx.Response) -> None:
    """A non-2xx answer becomes a RemoteError with the server's error_code, message and context."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error_code" not in body:
        text = response.text.strip().replace("\n", " ")[:200] or response.reason_phrase
        raise RemoteError(f"HTTP_{response.status_code}", text, status=response.status_code,
                          retry_after=_retry_after(response))
    error = RemoteError(
        str(body["error_code"]), str(body.get("message", "")), status=response.status_code,
        server_retryable=bool(body.get("retryable")), trace_id=body.get("trace_id"),
        retry_after=_retry_after(response),
    )
    error.context = dict(body.get("context") or {})
    raise error


def json_body(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


def json_object(response: httpx.Response) -> dict[str, Any]:
    body = json_body(response)
    return body if isinstance(body, dict) else {"value": body}


def no_body(response: httpx.Response) -> None:
    return None


def raw_body(response: httpx.Response) -> httpx.Response:
    return response


def get(path: str, params: dict[str, Any] | None = None) -> Call[dict[str, Any]]:
    return Call("GET", path, json_object, params=params)


def post(path: str, body: Any) -> Call[dict[str, Any]]:
    return Call("POST", path, json_object, json=body)


def delete(path: str) -> Call[dict[str, Any]]:
    return Call("DELETE", path, json_object)


def restore(snapshot_id: int, dry_run: bool) -> Call[dict[str, Any]]:
    """``dry_run`` is sent only when set, so a restore works against servers without dry runs."""
    return post("/v1/snapshots/restore", {"snapshot_id": int(snapshot_id), **({"dry_run": True} if dry_run else {})})


def key_path(key_id: str) -> str:
    return f"/v1/keys/{quote(key_id, safe='')}"


def query_body(
    sql: str, *, params: dict[str, Any] | list[Any] | None = None, snapshot_id: int | None = None,
    snapshot_time: str | None = None, min_visibility_token: int | None = None,
    consistency_timeout_ms: int | None = None, row_limit: int | None = None, timeout_ms: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"sql": sql}
    optional = {
        "params": params, "snapshot_id": snapshot_id, "snapshot_time": snapshot_time,
        "min_visibility_token": min_visibility_token, "consistency_timeout_ms": consistency_timeout_ms,
        "row_limit": row_limit, "timeout_ms": timeout_ms,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def query_export(body: dict[str, Any], fmt: str) -> Call[httpx.Response]:
    headers = {"Accept": ARROW_STREAM} if fmt == "arrow" else {}
    return Call("POST", "/v1/query", raw_body, json=body, params={"format": fmt}, headers=headers)


def ingest_body(
    parts: list[bytes], *, wait_for_visibility: bool = False, visibility_timeout_ms: int | None = None
) -> bytes:
    """The ingest request body from already-serialized records (batches are sized by their bytes)."""
    tail: dict[str, Any] = {"wait_for_visibility": wait_for_visibility}
    if visibility_timeout_ms is not None:
        tail["visibility_timeout_ms"] = visibility_timeout_ms
    return b'{"records":[' + b",".join(parts) + b"]," + orjson.dumps(tail)[1:]


def ingest(table: str, body: bytes) -> Call[dict[str, Any]]:
    return Call("POST", f"/v1/ingest/{quote(table, safe='')}", json_object, content=body)
