"""What the API needs, built once by the composition root (``cli.py``) and shared by requests."""

from __future__ import annotations

from dataclasses import dataclass

from duckmesh.bus.base import IngestBus
from duckmesh.catalog.db import CatalogPool
from duckmesh.config import Settings
from duckmesh.ingest.backfill import BackfillService
from duckmesh.ingest.service import IngestService
from duckmesh.maintenance.service import MaintenanceService
from duckmesh.query.assist import QueryAssistant
from duckmesh.query.service import QueryService
from duckmesh.storage.base import ObjectStore


@dataclass
class AppContext:
    settings: Settings
    pool: CatalogPool
    bus: IngestBus
    store: ObjectStore
    ingest: IngestService
    query: QueryService
    maintenance: MaintenanceService
    backfill: BackfillService
    assist: QueryAssistant | None = None  # None: query assist is off (POST /v1/query/translate answers 501)
