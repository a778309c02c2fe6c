"""Compaction: merge a table's small files into well-sized, sorted ones.

Plan (which files) → merge in DuckDB outside any catalog transaction → one short publish
transaction that re-checks every input is still live. If another writer changed the table
first, the publish aborts and our outputs are deleted (they were never referenced by any
snapshot, so nothing visible changes; if the process dies instead, GC removes them later).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckmesh.catalog import maintenance, snapshots, tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import DataFile, LiveSetChanged, NewDataFile, PublishPlan
from duckmesh.catalog.tables import TableDef
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN, SnapshotKind, TenantId
from duckmesh.observability import metrics
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)
JOB = "compaction"


@dataclass(frozen=True)
class CompactionPolicy:
    min_input_files: int = 8
    target_file_bytes: int = 128 * 1024 * 1024
    max_input_bytes: int = 1024 * 1024 * 1024
    memory_limit: str = "1GB"

    @property
    def small_file_bytes(self) -> int:
        """Files below this size are candidates (well-sized files are left alone)."""
        return self.target_file_bytes // 2


@dataclass(frozen=True)
class CompactionPlan:
    table: TableDef
    inputs: list[DataFile]
    drop_tombstones: bool

    @property
    def input_bytes(self) -> int:
        return sum(f.file_size_bytes for f in self.inputs)


def _partition(path: str) -> str:
    return next((part for part in path.split("/") if part.startswith("date=")), "")


def plan(table: TableDef, live: list[DataFile], policy: CompactionPolicy) -> CompactionPlan | None:
    """Choose inputs: small files of one schema version and one date partition, oldest tokens
    first, up to the byte budget. Tombstones may be dropped only when the inputs are every
    live file of the table (no older version anywhere that a dropped delete would uncover)."""
    groups: dict[tuple[int, str], list[DataFile]] = defaultdict(list)
    for data_file in live:
        if data_file.file_size_bytes < policy.small_file_bytes:
            groups[(data_file.schema_version, _partition(data_file.path))].append(data_file)
    best: list[DataFile] = []
    for candidates in groups.values():
        chosen: list[DataFile] = []
        budget = policy.max_input_bytes
        for data_file in sorted(candidates, key=lambda f: f.min_token or 0):
            if data_file.file_size_bytes > budget and chosen:
                break
            chosen.append(data_file)
            budget -= data_file.file_size_bytes
        if len(chosen) > len(best):
            best = chosen
    if len(best) < max(policy.min_input_files, 2):
        return None
    covers_all = {f.file_id for f in best} == {f.file_id for f in live}
    return CompactionPlan(table, best, drop_tombstones=covers_all)


def _merge_sql(plan_: CompactionPlan, paths: list[str], out_dir: str, target_bytes: int) -> str:
    schema = plan_.table.schema
    files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    source = f"read_parquet([{files}], hive_partitioning = false)"
    if schema.keyed:
        keys = ", ".join(f'"{k}"' for k in schema.primary_key)
        keep = f" AND {OP_COLUMN} <> 'delete'" if plan_.drop_tombstones else ""
        query = (f"SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {TOKEN_COLUMN} DESC)"
                 f" = 1{keep} ORDER BY {keys}")
    else:
        query = f"SELECT * FROM {source} ORDER BY {EVENT_TIME_COLUMN}, {TOKEN_COLUMN}"
    return (f"COPY ({query}) TO '{out_dir}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072,"
            f" FILE_SIZE_BYTES {max(target_bytes, 1 << 20)}, PER_THREAD_OUTPUT false)")


def merge(plan_: CompactionPlan, local_inputs: list[str], work_dir: Path, policy: CompactionPolicy) -> list[Path]:
    """Write the merged files into ``work_dir``; blocking, run in a thread."""
    out_dir = work_dir / "out"
    with duckdb.connect(":memory:", config={"memory_limit": policy.memory_limit, "threads": 2}) as con:
        con.execute(_merge_sql(plan_, local_inputs, str(out_dir), policy.target_file_bytes))
    return sorted(out_dir.glob("*.parquet"))


def describe_output(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    metadata = pq.ParquetFile(path).metadata
    table = pq.read_table(path, columns=[TOKEN_COLUMN, EVENT_TIME_COLUMN])
    tokens = pc.min_max(table.column(TOKEN_COLUMN)).as_py()
    times = pc.min_max(table.column(EVENT_TIME_COLUMN)).as_py()
    return {
        "data": data, "rows": metadata.num_rows, "hash": hashlib.sha256(data).hexdigest(),
        "min_token": tokens["min"], "max_token": tokens["max"], "min_time": times["min"], "max_time": times["max"],
    }


class Compactor:
    def __init__(self, pool: CatalogPool, store: ObjectStore, policy: CompactionPolicy, owner: str) -> None:
        self._pool = pool
        self._store = store
        self.policy = policy
        self.owner = owner

    async def run(self, tenant_id: TenantId, table_name: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            if table_name is not None:
                targets = [await tables.get_table(conn, tenant_id, table_name)]
            else:
                targets = await tables.list_tables(conn, tenant_id)
        results = {t.table_name: await self.compact_table(tenant_id, t, dry_run) for t in targets}
        return {"dry_run": dry_run, "tables": results}

    async def compact_table(self, tenant_id: TenantId, table: TableDef, dry_run: bool = False) -> dict[str, Any]:
        # The lease owner is unique per run: a second run, in another process or in this one
        # (the loop and an admin request), skips the table instead of duplicating the work.
        run_owner = f"{self.owner}:{uuid.uuid4().hex[:8]}"
        async with self._pool.connection() as conn:
            if not await maintenance.acquire_job(conn, tenant_id, table.table_id, JOB, run_owner, 3600):
                return {"status": "skipped", "reason": "another compaction run holds this table"}
        try:
            return await self._compact_locked(tenant_id, table, dry_run)
        finally:
            async with self._pool.connection() as conn:
                await maintenance.release_job(conn, tenant_id, table.table_id, JOB, run_owner)

    async def _compact_locked(self, tenant_id: TenantId, table: TableDef, dry_run: bool) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            live = await snapshots.current_files(conn, tenant_id, table.table_id)
        chosen = plan(table, live, self.policy)
        if chosen is None:
            return {"status": "nothing_to_do", "live_files": len(live)}
        summary: dict[str, Any] = {
            "input_files": len(chosen.inputs), "input_bytes": chosen.input_bytes,
            "drop_tombstones": chosen.drop_tombstones,
        }
        if dry_run:
            return {"status": "planned", **summary}
        async with self._pool.connection() as conn:
            run_id = await maintenance.start_run(conn, "compaction", tenant_id, self.owner, table_id=table.table_id)
        try:
            outputs = await self.write_outputs(tenant_id, run_id, chosen)
            status = await self.publish(tenant_id, chosen, outputs)
        except Exception as exc:
            async with self._pool.connection() as conn:
                await maintenance.finish_run(conn, "compaction", run_id, "failed", {**summary, "error": str(exc)[:300]})
            raise
        summary.update(output_files=len(outputs), output_bytes=sum(o.file_size_bytes for o in outputs),
                       output_rows=sum(o.record_count for o in outputs))
        async with self._pool.connection() as conn:
            await maintenance.finish_run(conn, "compaction", run_id, status, summary)
        if status == "completed":
            metrics.COMPACTION_RUNS.labels("completed").inc()
            metrics.COMPACTION_BYTES.inc(chosen.input_bytes)
        else:
            metrics.COMPACTION_RUNS.labels(status).inc()
        return {"status": status, "run_id": run_id, **summary}

    async def write_outputs(self, tenant_id: TenantId, run_id: int, chosen: CompactionPlan) -> list[NewDataFile]:
        """Merge the inputs and upload the results (not yet part of any snapshot)."""
        work_dir = Path(tempfile.mkdtemp(prefix="duckmesh-compact-"))
        try:
            local = []
            for data_file in chosen.inputs:
                in_place = self._store.local_path(data_file.path)
                if in_place is None:
                    target = work_dir / "in" / f"{data_file.file_id}.parquet"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(await asyncio.to_thread(self._store.get, data_file.path))
                    in_place = str(target)
                local.append(in_place)
            merged = await asyncio.to_thread(merge, chosen, local, work_dir, self.policy)
            partition = _partition(chosen.inputs[0].path) or "date=unknown"
            outputs = []
            for seq, path in enumerate(merged):
                info = await asyncio.to_thread(describe_output, path)
                if info["rows"] == 0:
                    continue
                name = f"part-c{run_id}-{seq:04d}-{uuid.uuid4().hex[:8]}.parquet"
                key = f"{tenant_id}/{chosen.table.table_id}/{partition}/{name}"
                await asyncio.to_thread(self._store.put, key, info["data"])
                outputs.append(NewDataFile(
                    table_id=chosen.table.table_id, path=key, record_count=info["rows"],
                    file_size_bytes=len(info["data"]), content_hash=info["hash"], min_token=info["min_token"],
                    max_token=info["max_token"], min_event_time=info["min_time"], max_event_time=info["max_time"],
                    schema_version=chosen.inputs[0].schema_version,
                ))
            return outputs
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    async def publish(self, tenant_id: TenantId, chosen: CompactionPlan, outputs: list[NewDataFile]) -> str:
        plan_ = PublishPlan(tenant_id, SnapshotKind.COMPACTION, self.owner, add=outputs,
                            remove=[f.file_id for f in chosen.inputs])
        try:
            async with self._pool.transaction() as tx:
                await snapshots.publish_keeping_watermark(tx, plan_)
        except LiveSetChanged:
            for output in outputs:  # never referenced by a snapshot: safe to delete right away
                await asyncio.to_thread(self._store.delete, output.path)
            log.info("compaction_aborted_inputs_changed", extra={"tenant_id": tenant_id})
            return "aborted"
        metrics.SNAPSHOTS_PUBLISHED.labels(str(tenant_id), "compaction").inc()
        return "completed"
