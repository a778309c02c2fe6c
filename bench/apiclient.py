"""Small synchronous calls to the DuckMesh HTTP API (setup, queries, maintenance runs)."""

from __future__ import annotations

import time
from typing import Any

import httpx


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, url: str, key: str, timeout: float = 600.0) -> None:
        self.url = url
        self.key = key
        self.client = httpx.Client(base_url=url, trust_env=False, timeout=timeout,
                                   headers={"Authorization": f"Bearer {key}"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 300:
            raise ApiError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:500]}")
        return response.json() if response.content else None

    def create_table(self, name: str, columns: list[dict[str, Any]]) -> None:
        self._check(self.client.post("/v1/tables", json={"table_name": name, "columns": columns}))

    def ingest(self, table: str, body: bytes, wait: bool = False) -> dict[str, Any]:
        if wait:
            body = body[:-1] + b',"wait_for_visibility":true,"visibility_timeout_ms":60000}'
        return dict(self._check(self.client.post(f"/v1/ingest/{table}", content=body,
                                                 headers={"Content-Type": "application/json"})))

    def backfill(self, table: str, backfill_id: str, parquet: bytes) -> dict[str, Any]:
        return dict(self._check(self.client.post(
            f"/v1/tables/{table}/backfill", params={"backfill_id": backfill_id}, content=parquet,
            headers={"Content-Type": "application/vnd.apache.parquet"})))

    def query(self, sql: str, **extra: Any) -> tuple[dict[str, Any], float]:
        """The JSON answer and the client-side seconds (request sent -> body parsed)."""
        started = time.perf_counter()
        response = self.client.post("/v1/query", json={"sql": sql, **extra})
        answer = self._check(response)
        return answer, time.perf_counter() - started

    def lag(self) -> dict[str, Any]:
        return dict(self._check(self.client.get("/v1/lag")))

    def wait_drained(self, timeout: float = 300.0) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.lag()["token_lag"] <= 0:
                return time.perf_counter() - started
            time.sleep(0.05)
        raise ApiError(f"the bus did not drain within {timeout:.0f}s: {self.lag()}")

    def compact(self, table: str | None = None) -> dict[str, Any]:
        return dict(self._check(self.client.post("/v1/compaction/run", json={"table": table})))

    def retain(self) -> dict[str, Any]:
        return dict(self._check(self.client.post("/v1/retention/run", json={})))

    def restore(self, snapshot_id: int) -> dict[str, Any]:
        return dict(self._check(self.client.post("/v1/snapshots/restore", json={"snapshot_id": snapshot_id})))

    def head_snapshot(self) -> int:
        return int(self.lag()["latest_snapshot_id"])
