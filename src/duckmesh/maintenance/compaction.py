"""Compaction: merge a table's small files into well-sized, sorted ones.

Plan (which files) → merge in DuckDB outside any catalog transaction → upload the outputs under
write intents → commit with the job lease still held, every input still live and, when delete
markers are dropped, no older version of any key outside the inputs (``NoOlderVersionsOutside``),
all checked by the database clock. The job lease and the intents are extended while the run
works. If the commit is refused, nothing visible changed and our outputs are deleted; if the
process dies instead, the intents expire and GC removes the outputs later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from duckmesh.catalog import intents, maintenance, snapshots, tables
from duckmesh.catalog.commit import (
    CommitPlan,
    JobLeaseHeld,
    NoOlderVersionsOutside,
    Step,
    WatermarkPolicy,
    commit,
    older_versions_outside,
)
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.snapshots import DataFile
from duckmesh.catalog.tables import TableDef
from duckmesh.datafiles import (
    DUCKDB_PARQUET_OPTIONS,
    NewDataFile,
    ParquetFile,
    compaction_key,
    describe,
    partition_of,
)
from duckmesh.domain import EVENT_TIME_COLUMN, TOKEN_COLUMN, SnapshotKind, TenantId
from duckmesh.errors import CommitConflict
from duckmesh.heartbeat import while_extending
from duckmesh.merge import latest_version_filter, quote, read_parquet
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
    lease_seconds: float = 60.0  # job lease, extended every third while the run works

    @property
    def small_file_bytes(self) -> int:
        """Files below this size are candidates (well-sized files are left alone)."""
        return self.target_file_bytes // 2


@dataclass(frozen=True)
class CompactionPlan:
    table: TableDef
    inputs: list[DataFile]
    drop_tombstones: bool
    across_dates: bool = False  # the inputs span several date folders (too few files in each)

    @property
    def input_bytes(self) -> int:
        return sum(f.file_size_bytes for f in self.inputs)

    @property
    def max_token(self) -> int:
        return max(f.max_token or 0 for f in self.inputs)

    @property
    def date_folder(self) -> str:
        """Where the outputs go: the inputs' date folder (the earliest one when they span several)."""
        return min((partition_of(f.path) for f in self.inputs), default="")


@dataclass(frozen=True)
class NothingToDo:
    """Why a table was not compacted (answered to the caller and logged)."""

    reason: str
    live_files: int
    small_files: int


def _fill(candidates: list[DataFile], budget: int) -> list[DataFile]:
    """Oldest tokens first, up to the byte budget (at least one file)."""
    chosen: list[DataFile] = []
    for data_file in sorted(candidates, key=lambda f: f.min_token or 0):
        if data_file.file_size_bytes > budget and chosen:
            break
        chosen.append(data_file)
        budget -= data_file.file_size_bytes
    return chosen


def _largest(groups: Iterable[list[DataFile]], budget: int) -> list[DataFile]:
    best: list[DataFile] = []
    for candidates in groups:
        chosen = _fill(candidates, budget)
        if len(chosen) > len(best):
            best = chosen
    return best


def plan(table: TableDef, live: list[DataFile], policy: CompactionPolicy) -> CompactionPlan | NothingToDo:
    """Choose inputs: small files of one schema version and one set of partition values, oldest
    tokens first, up to the byte budget — from one date folder when one has enough of them, else
    across date folders (a backfilled month of one tiny file per day is merged too). Tombstones
    may be dropped only when the inputs are every live file of the table (no older version
    anywhere that a dropped delete would uncover); the run then also asks the catalog about
    unresolved records, dead letters and reservations."""
    minimum = max(policy.min_input_files, 2)
    small = [f for f in live if f.file_size_bytes < policy.small_file_bytes]
    same_layout: dict[tuple[int, str], list[DataFile]] = defaultdict(list)
    same_day: dict[tuple[int, str, str], list[DataFile]] = defaultdict(list)
    for data_file in small:
        layout = (data_file.schema_version, json.dumps(data_file.partition, sort_keys=True))
        same_layout[layout].append(data_file)
        same_day[(*layout, partition_of(data_file.path))].append(data_file)
    best = _largest(same_day.values(), policy.max_input_bytes)
    across_dates = False
    if len(best) < minimum:
        best = _largest(same_layout.values(), policy.max_input_bytes)
        across_dates = len({partition_of(f.path) for f in best}) > 1
    if len(best) < minimum:
        return NothingToDo(_why_not(live, small, same_layout, minimum, policy), len(live), len(small))
    covers_all = {f.file_id for f in best} == {f.file_id for f in live}
    return CompactionPlan(table, best, drop_tombstones=covers_all and table.schema.keyed, across_dates=across_dates)


def _why_not(live: list[DataFile], small: list[DataFile], same_layout: dict[tuple[int, str], list[DataFile]],
             minimum: int, policy: CompactionPolicy) -> str:
    if not live:
        return "the table has no data files"
    if not small:
        return (f"all {len(live)} files are well-sized (at least {policy.small_file_bytes:,} bytes,"
                " half the target file size)")
    if len(small) < minimum:
        return (f"{len(small)} small files, fewer than the minimum of {minimum} input files"
                " (DUCKMESH_MAINTENANCE_COMPACTION_MIN_INPUT_FILES)")
    largest = max(len(group) for group in same_layout.values())
    return (f"{len(small)} small files, but at most {largest} share a schema version and partition values"
            f" (minimum {minimum}); files of different schema versions or partitions are never merged")


def _merge_sql(plan_: CompactionPlan, paths: list[str], out_dir: str, target_bytes: int) -> str:
    schema = plan_.table.schema
    source = read_parquet(paths)
    if schema.keyed:
        keys = ", ".join(quote(k) for k in schema.primary_key)
        rule = latest_version_filter(schema, hide_deletes=plan_.drop_tombstones)
        query = f"SELECT * FROM {source} {rule} ORDER BY {keys}"
    else:
        query = f"SELECT * FROM {source} ORDER BY {EVENT_TIME_COLUMN}, {TOKEN_COLUMN}"
    return (f"COPY ({query}) TO '{out_dir}' ({DUCKDB_PARQUET_OPTIONS},"
            f" FILE_SIZE_BYTES {max(target_bytes, 1 << 20)}, PER_THREAD_OUTPUT false)")


def _describe_file(path: Path) -> ParquetFile:
    return describe(path.read_bytes())


def merge(plan_: CompactionPlan, local_inputs: list[str], work_dir: Path, policy: CompactionPolicy) -> list[Path]:
    """Write the merged files into ``work_dir``; blocking, run in a thread."""
    out_dir = work_dir / "out"
    with duckdb.connect(":memory:", config={"memory_limit": policy.memory_limit, "threads": 2}) as con:
        con.execute(_merge_sql(plan_, local_inputs, str(out_dir), policy.target_file_bytes))
    return sorted(out_dir.glob("*.parquet"))


class Compactor:
    def __init__(
        self, pool: CatalogPool, store: ObjectStore, policy: CompactionPolicy, owner: str,
        scratch_dir: Path | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self.policy = policy
        self.owner = owner
        self.scratch_dir = scratch_dir
        self._open_intents: dict[str, int] = {}  # run owner -> write intents it holds

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
            if not await maintenance.acquire_job(
                conn, tenant_id, table.table_id, JOB, run_owner, self.policy.lease_seconds
            ):
                return {"status": "skipped", "reason": "another compaction run holds this table"}

        async def extend() -> None:
            async with self._pool.connection() as conn:
                await maintenance.extend_job(
                    conn, tenant_id, table.table_id, JOB, run_owner, self.policy.lease_seconds
                )
            await intents.extend(self._pool, run_owner, self.policy.lease_seconds,
                                 self._open_intents.get(run_owner, 0))

        try:
            return await while_extending(
                self._compact_locked(tenant_id, table, dry_run, run_owner), extend, self.policy.lease_seconds / 3
            )
        finally:
            self._open_intents.pop(run_owner, None)
            async with self._pool.connection() as conn:
                await maintenance.release_job(conn, tenant_id, table.table_id, JOB, run_owner)

    async def plan_table(self, tenant_id: TenantId, table: TableDef) -> CompactionPlan | NothingToDo:
        async with self._pool.connection() as conn:
            live = await snapshots.current_files(conn, tenant_id, table.table_id)
            chosen = plan(table, live, self.policy)
            if isinstance(chosen, CompactionPlan) and chosen.drop_tombstones:
                blocking = await older_versions_outside(
                    conn, tenant_id, table.table_id, [f.file_id for f in chosen.inputs], chosen.max_token
                )
                if blocking:  # keep the delete markers this time; the commit would refuse to drop them
                    chosen = replace(chosen, drop_tombstones=False)
        return chosen

    async def _compact_locked(
        self, tenant_id: TenantId, table: TableDef, dry_run: bool, run_owner: str
    ) -> dict[str, Any]:
        chosen = await self.plan_table(tenant_id, table)
        if isinstance(chosen, NothingToDo):
            return {"status": "nothing_to_do", "reason": chosen.reason, "live_files": chosen.live_files,
                    "small_files": chosen.small_files}
        summary: dict[str, Any] = {
            "input_files": len(chosen.inputs), "input_bytes": chosen.input_bytes,
            "drop_tombstones": chosen.drop_tombstones, "across_dates": chosen.across_dates,
        }
        if dry_run:
            return {"status": "planned", **summary}
        async with self._pool.connection() as conn:
            run_id = await maintenance.start_run(conn, "compaction", tenant_id, self.owner, table_id=table.table_id)
        try:
            outputs = await self.write_outputs(tenant_id, run_id, chosen, run_owner)
            status = await self.publish(tenant_id, chosen, outputs, run_owner)
        except Exception as exc:
            async with self._pool.connection() as conn:
                await maintenance.finish_run(conn, "compaction", run_id, "failed", {**summary, "error": str(exc)[:300]})
            raise
        summary.update(output_files=len(outputs), output_bytes=sum(o.file_size_bytes for o in outputs),
                       output_rows=sum(o.record_count for o in outputs))
        async with self._pool.connection() as conn:
            await maintenance.finish_run(conn, "compaction", run_id, status, summary)
        log.info("compaction_finished", extra={"tenant_id": tenant_id, "table": table.table_name, "status": status,
                                               "run_id": run_id, **summary})
        if status == "completed":
            metrics.COMPACTION_RUNS.labels("completed").inc()
            metrics.COMPACTION_BYTES.inc(chosen.input_bytes)
        else:
            metrics.COMPACTION_RUNS.labels(status).inc()
        return {"status": status, "run_id": run_id, **summary}

    async def write_outputs(
        self, tenant_id: TenantId, run_id: int, chosen: CompactionPlan, owner: str
    ) -> list[NewDataFile]:
        """Merge the inputs and upload the results under ``owner``'s write intents (not yet part
        of any snapshot)."""
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        work_dir = Path(tempfile.mkdtemp(prefix="compact-", dir=self.scratch_dir))
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
            described = [d for path in merged if (d := await asyncio.to_thread(_describe_file, path)).record_count]
            keys = [compaction_key(tenant_id, chosen.table.table_id, chosen.date_folder, run_id, seq)
                    for seq in range(len(described))]
            await intents.record(self._pool, tenant_id, owner, keys, self.policy.lease_seconds)
            self._open_intents[owner] = self._open_intents.get(owner, 0) + len(keys)
            outputs = []
            for key, parquet in zip(keys, described, strict=True):
                await asyncio.to_thread(self._store.put, key, parquet.data)
                outputs.append(parquet.new_file(chosen.table.table_id, chosen.inputs[0].schema_version, key,
                                                chosen.inputs[0].partition))
            return outputs
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    async def publish(
        self, tenant_id: TenantId, chosen: CompactionPlan, outputs: list[NewDataFile], owner: str
    ) -> str:
        requires: list[Step] = [JobLeaseHeld(chosen.table.table_id, JOB, owner)]
        if chosen.drop_tombstones:
            requires.append(NoOlderVersionsOutside(
                chosen.table.table_id, [f.file_id for f in chosen.inputs], chosen.max_token))
        plan_ = CommitPlan(tenant_id, SnapshotKind.COMPACTION, self.owner, add=outputs,
                           remove=[f.file_id for f in chosen.inputs], requires=requires,
                           watermark=WatermarkPolicy.KEEP)
        try:
            await commit(self._pool, plan_)
            self._open_intents.pop(owner, None)
        except CommitConflict as exc:
            self._open_intents.pop(owner, None)
            for output in outputs:  # never referenced by a snapshot: safe to delete right away
                await asyncio.to_thread(self._store.delete, output.path)
            await intents.release(self._pool, [o.path for o in outputs])
            log.info("compaction_aborted", extra={"tenant_id": tenant_id, "error_code": exc.error_code,
                                                  "reason": exc.message})
            return "aborted"
        metrics.SNAPSHOTS_PUBLISHED.labels(str(tenant_id), "compaction").inc()
        return "completed"
