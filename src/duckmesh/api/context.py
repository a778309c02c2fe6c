"""What the HTTP servers need, built once by the composition root (``duckmesh.cli.runtime``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from duckmesh.bus.base import IngestBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.read_only import ReadOnlyCache
from duckmesh.catalog.tenants import VerifiedKeys
from duckmesh.config import Settings
from duckmesh.ingest.backfill import BackfillService
from duckmesh.ingest.service import IngestService
from duckmesh.maintenance.service import MaintenanceService
from duckmesh.query.assist import QueryAssistant
from duckmesh.query.service import QueryService
from duckmesh.storage.base import ObjectStore


@dataclass
class OpsContext:
    """What every process's HTTP server needs for its probes and metrics (worker processes serve only those)."""

    settings: Settings
    pool: CatalogPool
    store: ObjectStore

    @cached_property
    def read_only(self) -> ReadOnlyCache:
        """The read-only switches as this process sees them (reported by /v1/ready)."""
        return ReadOnlyCache(self.pool)


@dataclass
class AppContext:
    """What the full API needs: the data plane's services, shared by every request."""

    settings: Settings
    pool: CatalogPool
    bus: IngestBus
    store: ObjectStore
    ingest: IngestService
    query: QueryService
    maintenance: MaintenanceService
    backfill: BackfillService
    assist: QueryAssistant | None = None  # None: query assist is off (POST /v1/query/translate answers 501)
    # Keys verified recently (revocations reach it through NOTIFY, see cli/runtime.py).
    keys: VerifiedKeys = field(default_factory=VerifiedKeys)

    @cached_property
    def read_only(self) -> ReadOnlyCache:
        """The read-only switches as this process sees them: every write checks them (ADR 0012)."""
        return ReadOnlyCache(self.pool)
