"""Ingest: validate a request into columnar records (every bad record reported), then accept all of
it or none in a group commit with the tenant's other concurrent requests (one segment each)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from duckmesh.bus.base import IngestBus, NewSegment, PublishOutcome, encode_segment
from duckmesh.catalog import tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Op, SnapshotId, TableId, TenantId, VisibilityToken
from duckmesh.errors import (
    ConsistencyTimeout,
    DuckMeshError,
    OpNotSupported,
    SchemaChanged,
    TableNotFound,
    ValidationFailed,
)
from duckmesh.ingest.backpressure import Admission
from duckmesh.ingest.group import GroupCommitter
from duckmesh.ingest.models import IngestReceipt
from duckmesh.ingest.validate import BodyForm, Records, RecordValidator
from duckmesh.observability import metrics

# Waits until a token is visible in a table of a tenant; returns the snapshot id that covers it.
VisibilityWaiter = Callable[[TenantId, TableId, VisibilityToken, float], Awaitable[SnapshotId]]
# Bodies at least this large are validated in a worker thread, so the event loop keeps serving.
_OFF_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True)
class IngestOptions:
    """What a request says besides its records (headers and query string)."""

    form: BodyForm = BodyForm.OBJECT
    request_key: str | None = None  # the Idempotency-Key header
    op: Op = Op.INSERT  # for array and NDJSON bodies
    wait_for_visibility: bool = False  # array/NDJSON bodies: from the query string
    visibility_timeout_ms: int = 3000


@dataclass(frozen=True)
class IngestResult:
    receipt: IngestReceipt
    replayed: bool  # a repeated Idempotency-Key: the receipt is the first request's


class IngestService:
    def __init__(
        self,
        pool: CatalogPool,
        bus: IngestBus,
        *,
        max_records: int,
        max_payload_bytes: int,
        wait_for_visibility: VisibilityWaiter | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._max_records = max_records
        self._max_payload_bytes = max_payload_bytes
        self._wait = wait_for_visibility
        self.admission = admission or Admission()
        self._committer = GroupCommitter(bus)
        self._validators: dict[tuple[TableId, int], RecordValidator] = {}
        # Table definitions by (tenant, name); a stale one is noticed by the accepting transaction
        # (dropped table, newer schema version) and reloaded once.
        self._tables: dict[tuple[TenantId, str], TableDef] = {}

    async def _table(self, tenant_id: TenantId, name: str, *, fresh: bool) -> TableDef:
        key = (tenant_id, name)
        table = None if fresh else self._tables.get(key)
        if table is None:
            self._tables.pop(key, None)
            async with self._pool.connection() as conn:
                table = self._tables[key] = await tables.get_table(conn, tenant_id, name)
        return table

    def _validator(self, table: TableDef) -> RecordValidator:
        key = (table.table_id, table.schema_version)
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = RecordValidator(
                table.schema, max_records=self._max_records, max_payload_bytes=self._max_payload_bytes)
        return validator

    async def ingest(
        self, principal: Principal, table_name: str, body: bytes, options: IngestOptions, trace_id: str | None
    ) -> IngestResult:
        started = time.perf_counter()
        tenant = str(principal.tenant_id)
        body_hash = hashlib.sha256(body).digest() if options.request_key else None
        admitted = False
        for attempt in range(2):
            cached = attempt == 0 and (principal.tenant_id, table_name) in self._tables
            table = await self._table(principal.tenant_id, table_name, fresh=attempt > 0)
            try:
                records = await self._parse(table, body, options)
            except (ValidationFailed, OpNotSupported):
                if cached:
                    continue  # the cached definition may be older than the table: look again
                raise
            if not admitted:
                self._admit(principal.tenant_id, records.count)
                admitted = True
            segment = NewSegment(
                table.table_id, table.schema_version, await _serialized(records), records.count,
                records.keys, records.digests, options.request_key, body_hash, trace_id,
            )
            outcome = await self._committer.submit(principal.tenant_id, segment)
            if isinstance(outcome, SchemaChanged | TableNotFound) and attempt == 0:
                continue  # the table changed since we looked it up: look again, validate again
            break
        if isinstance(outcome, Exception):
            metrics.INGEST_REQUESTS.labels(tenant, "error").inc()
            raise outcome
        receipt = _receipt(outcome)
        metrics.INGEST_REQUESTS.labels(tenant, "ok").inc()
        metrics.INGEST_RECORDS.labels(tenant, table_name).inc(outcome.accepted_count)
        metrics.INGEST_DUPLICATES.labels(tenant, table_name).inc(outcome.duplicate_count)
        metrics.INGEST_ACK_LATENCY.labels(tenant).observe(time.perf_counter() - started)
        wait = options.wait_for_visibility if records.wait_for_visibility is None else records.wait_for_visibility
        timeout = options.visibility_timeout_ms if records.visibility_timeout_ms is None \
            else records.visibility_timeout_ms
        if wait and self._wait is not None and receipt.max_visibility_token:
            receipt = await self._wait_visible(principal.tenant_id, table.table_id, outcome, receipt, timeout / 1000)
        return IngestResult(receipt, replayed=outcome.earlier_receipt is not None)

    async def _parse(self, table: TableDef, body: bytes, options: IngestOptions) -> Records:
        validator = self._validator(table)
        keys_required = options.request_key is None and options.form is BodyForm.OBJECT
        try:
            if len(body) >= _OFF_LOOP_BYTES:
                return await asyncio.to_thread(validator.parse, body, options.form, default_op=options.op,
                                               keys_required=keys_required)
            return validator.parse(body, options.form, default_op=options.op, keys_required=keys_required)
        except DuckMeshError as exc:
            metrics.INGEST_REJECTED.labels(str(table.tenant_id), "validation").inc()
            exc.context.setdefault("table", table.table_name)
            raise

    def _admit(self, tenant_id: TenantId, records: int) -> None:
        try:
            self.admission.admit(tenant_id, records)
        except DuckMeshError:
            metrics.INGEST_REJECTED.labels(str(tenant_id), "backpressure").inc(records)
            raise

    async def _wait_visible(
        self, tenant_id: TenantId, table_id: TableId, outcome: PublishOutcome, receipt: IngestReceipt, timeout: float
    ) -> IngestReceipt:
        """Wait until the table's watermark covers the request, then say what became of it: a
        record dead-lettered instead of materialized is reported (status and count), never
        passed off as visible."""
        assert self._wait is not None
        try:
            snapshot_id = await self._wait(tenant_id, table_id, receipt_token(receipt), timeout)
        except ConsistencyTimeout as exc:
            # The write itself was accepted: the context says so, and retrying is safe.
            exc.context.update(max_visibility_token=receipt.max_visibility_token, accepted=True)
            raise
        tokens = outcome.tokens or [VisibilityToken(receipt.max_visibility_token)]
        failed = set(await self._bus.failed_tokens(tenant_id, sorted(set(tokens))))
        return receipt.model_copy(update={
            "visible_snapshot_id": snapshot_id, "status": "dead_lettered" if failed else "visible",
            "failed_count": sum(1 for t in tokens if t in failed),
        })


async def _serialized(records: Records) -> bytes:
    if records.table.nbytes >= _OFF_LOOP_BYTES:
        return await asyncio.to_thread(encode_segment, records.table)
    return encode_segment(records.table)


def receipt_token(receipt: IngestReceipt) -> VisibilityToken:
    return VisibilityToken(receipt.max_visibility_token)


def _receipt(outcome: PublishOutcome) -> IngestReceipt:
    if outcome.earlier_receipt is not None:  # a repeated Idempotency-Key: the first request's answer
        return IngestReceipt(visible_snapshot_id=None, **outcome.earlier_receipt)
    return IngestReceipt(
        accepted_count=outcome.accepted_count,
        duplicate_count=outcome.duplicate_count,
        max_visibility_token=outcome.max_token,
        visible_snapshot_id=None,
        status="partial_duplicate" if outcome.duplicate_count else "accepted",
        schema_version=outcome.schema_version,
    )
