"""The maintenance plane's entry points: on-demand runs and the compactor's interval loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId
from duckmesh.errors import DuckMeshError, IntegrityCheckFailed
from duckmesh.maintenance.compaction import CompactionPolicy, Compactor
from duckmesh.maintenance.integrity import IntegrityValidator
from duckmesh.maintenance.retention import RetentionPolicy, RetentionRunner
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceIntervals:
    compaction: float = 60.0
    retention: float = 300.0
    integrity: float = 3600.0


class MaintenanceService:
    def __init__(
        self, pool: CatalogPool, store: ObjectStore, compaction: CompactionPolicy, retention: RetentionPolicy,
        owner: str, scratch_dir: Path | None = None,
    ) -> None:
        self._pool = pool
        self.compactor = Compactor(pool, store, compaction, owner, scratch_dir)
        self.retention = RetentionRunner(pool, store, retention, owner)
        self.integrity = IntegrityValidator(pool, store, owner)

    async def compact(self, tenant_id: TenantId, table: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        return await self.compactor.run(tenant_id, table, dry_run)

    async def retain(self, tenant_id: TenantId, dry_run: bool = False) -> dict[str, Any]:
        return await self.retention.run(tenant_id, dry_run)

    async def validate(self, tenant_id: TenantId, deep: bool = False) -> dict[str, Any]:
        return await self.integrity.run(tenant_id, deep)

    async def tenant_ids(self) -> list[TenantId]:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT tenant_id FROM tenant WHERE status = 'active' ORDER BY tenant_id")
            return [TenantId(r["tenant_id"]) for r in await cur.fetchall()]

    async def run_loops(self, stop: asyncio.Event, intervals: MaintenanceIntervals) -> None:
        """Compaction, retention and integrity loops over every tenant until ``stop``."""
        await asyncio.gather(
            self._loop("compaction", lambda t: self.compact(t), intervals.compaction, stop),
            self._loop("retention", lambda t: self.retain(t), intervals.retention, stop),
            self._loop("integrity", lambda t: self.validate(t), intervals.integrity, stop),
        )

    async def _loop(
        self, name: str, job: Callable[[TenantId], Awaitable[Any]], interval: float, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                for tenant_id in await self.tenant_ids():
                    if stop.is_set():
                        break
                    try:
                        await job(tenant_id)
                    except IntegrityCheckFailed as exc:
                        log.error("integrity_check_failed", extra={"tenant_id": tenant_id, **exc.context})
                    except DuckMeshError as exc:
                        log.warning("maintenance_job_failed", extra={"job": name, "tenant_id": tenant_id,
                                                                    "error_code": exc.error_code})
            except Exception:
                log.exception("maintenance_loop_failed", extra={"job": name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
