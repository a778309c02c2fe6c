"""Integrity validation of the catalog against object storage.

Shallow: every file a retained snapshot references exists with the catalog's size.
Deep: also its SHA-256 and the Parquet footer's row count. Orphans (objects no catalog row
names) and catalog rows naming missing tables are reported too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import pyarrow.parquet as pq

from duckmesh.catalog import maintenance
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId
from duckmesh.errors import IntegrityCheckFailed, StorageError
from duckmesh.observability import metrics
from duckmesh.storage.base import ObjectStore


def _deep_problem(data: bytes, expected_hash: str, expected_rows: int) -> str | None:
    if hashlib.sha256(data).hexdigest() != expected_hash:
        return "content hash mismatch"
    try:
        rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    except Exception:
        return "not a readable Parquet file"
    return None if rows == expected_rows else f"row count {rows} != catalog {expected_rows}"


def _reference_counters(snapshots: int, references: int, checked: int, bad: list[dict[str, Any]]) -> dict[str, int]:
    """The counters the reference implementation's summary carries (a run covers one tenant)."""
    return {
        "tenants_scanned": 1, "snapshots_scanned": snapshots, "referenced_files": references,
        "unique_files_checked": checked,
        "missing_files": sum(1 for b in bad if b["problem"] == "missing"),
        "size_mismatch_files": sum(1 for b in bad if b["problem"].startswith("size")),
        "operational_failures": sum(1 for b in bad if b["problem"].startswith("unreadable")),
    }


class IntegrityValidator:
    def __init__(self, pool: CatalogPool, store: ObjectStore, owner: str) -> None:
        self._pool = pool
        self._store = store
        self.owner = owner

    async def run(self, tenant_id: TenantId, deep: bool = False, table_id: int | None = None) -> dict[str, Any]:
        """Check and record the run; raise IntegrityCheckFailed (409) listing bad files."""
        async with self._pool.connection() as conn:
            run_id = await maintenance.start_run(conn, "integrity", tenant_id, self.owner, deep=deep)
            files = await maintenance.retained_files(conn, tenant_id)
            dangling = await maintenance.dangling_files(conn, tenant_id)
            known = await maintenance.known_paths(conn, tenant_id)
            snapshot_count, references = await maintenance.retained_references(conn, tenant_id, table_id)
        if table_id is not None:
            files = [f for f in files if f["table_id"] == table_id]
        bad = [problem for f in files if (problem := await self._check(f, deep)) is not None]
        listed = await asyncio.to_thread(lambda: list(self._store.list(f"{tenant_id}/")))
        orphans = sorted(o.key for o in listed if o.key not in known)
        summary = {
            "deep": deep, "files_checked": len(files), "bad_files": bad, "orphans": orphans,
            "dangling_rows": [{"file_id": d["file_id"], "path": d["path"]} for d in dangling],
            **_reference_counters(snapshot_count, references, len(files), bad),
        }
        failed = bool(bad or dangling)
        status = "failed" if failed else "completed"
        async with self._pool.connection() as conn:
            await maintenance.finish_run(conn, "integrity", run_id, status, summary)
        metrics.INTEGRITY_RUNS.labels(status).inc()
        metrics.INTEGRITY_FILES_CHECKED.inc(len(files))
        metrics.INTEGRITY_MISSING.inc(sum(1 for b in bad if b["problem"] == "missing"))
        metrics.INTEGRITY_SIZE_MISMATCH.inc(sum(1 for b in bad if b["problem"].startswith("size")))
        metrics.INTEGRITY_CONTENT_MISMATCH.inc(
            sum(1 for b in bad if b["problem"] not in ("missing",) and not b["problem"].startswith("size"))
        )
        if failed:
            raise IntegrityCheckFailed(
                f"{len(bad)} bad file(s), {len(dangling)} dangling row(s)", run_id=run_id, **summary
            )
        return {"status": status, "run_id": run_id, **summary}

    async def _check(self, data_file: dict[str, Any], deep: bool) -> dict[str, Any] | None:
        path = data_file["path"]
        try:
            info = await asyncio.to_thread(self._store.head, path)
        except StorageError as exc:
            return {"file_id": data_file["file_id"], "path": path, "problem": f"unreadable: {exc.error_code}"}
        if info is None:
            return {"file_id": data_file["file_id"], "path": path, "problem": "missing"}
        if info.size != data_file["file_size_bytes"]:
            return {"file_id": data_file["file_id"], "path": path,
                    "problem": f"size {info.size} != catalog {data_file['file_size_bytes']}"}
        if deep:
            data = await asyncio.to_thread(self._store.get, path)
            problem = _deep_problem(data, data_file["content_hash"], data_file["record_count"])
            if problem is not None:
                return {"file_id": data_file["file_id"], "path": path, "problem": problem}
        return None
