"""Ingest: validate every record, report every bad one, then publish all or nothing."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from duckmesh.bus.base import IngestBus, NewEvent, PublishOutcome
from duckmesh.catalog import tables
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.tables import TableDef
from duckmesh.catalog.tenants import Principal
from duckmesh.domain import Op, SnapshotId, TableId, TenantId, VisibilityToken
from duckmesh.errors import (
    ConsistencyTimeout,
    DuckMeshError,
    OpNotSupported,
    PayloadTooLarge,
    RecordsRequired,
    ValidationFailed,
)
from duckmesh.ingest.backpressure import Admission
from duckmesh.ingest.models import IngestReceipt, IngestRecord, IngestRequest
from duckmesh.observability import metrics
from duckmesh.schema import PayloadValidator, parse_timestamp

# Waits until a token is visible in a table of a tenant; returns the snapshot id that covers it.
VisibilityWaiter = Callable[[TenantId, TableId, VisibilityToken, float], Awaitable[SnapshotId]]


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
        self._validators: dict[tuple[TableId, int], PayloadValidator] = {}

    def _validator(self, table: TableDef) -> PayloadValidator:
        key = (table.table_id, table.schema_version)
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = PayloadValidator(table.schema)
        return validator

    async def ingest(
        self, principal: Principal, table_name: str, request: IngestRequest, trace_id: str | None
    ) -> IngestReceipt:
        started = time.perf_counter()
        tenant = str(principal.tenant_id)
        if not request.records:
            raise RecordsRequired("the request has no records")
        if len(request.records) > self._max_records:
            raise PayloadTooLarge(
                "too many records in one request", records=len(request.records), max_records=self._max_records
            )
        try:
            self.admission.admit(principal.tenant_id, len(request.records))
        except DuckMeshError:
            metrics.INGEST_REJECTED.labels(tenant, "backpressure").inc(len(request.records))
            raise
        async with self._pool.connection() as conn:
            table = await tables.get_table(conn, principal.tenant_id, table_name)
        events = self._validate(table, request.records)
        try:
            outcome = await self._bus.publish(
                principal.tenant_id, table.table_id, table.schema_version, events, trace_id
            )
        except Exception:
            metrics.INGEST_REQUESTS.labels(tenant, "error").inc()
            raise
        receipt = _receipt(outcome, table.schema_version)
        metrics.INGEST_REQUESTS.labels(tenant, "ok").inc()
        metrics.INGEST_RECORDS.labels(tenant, table_name).inc(outcome.accepted_count)
        metrics.INGEST_DUPLICATES.labels(tenant, table_name).inc(outcome.duplicate_count)
        metrics.INGEST_ACK_LATENCY.labels(tenant).observe(time.perf_counter() - started)
        if request.wait_for_visibility and self._wait is not None:
            receipt = await self._wait_visible(principal.tenant_id, table.table_id, outcome, receipt,
                                               request.visibility_timeout_ms / 1000)
        return receipt

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
        failed = set(await self._bus.failed_tokens(tenant_id, sorted(set(outcome.tokens))))
        return receipt.model_copy(update={
            "visible_snapshot_id": snapshot_id, "status": "dead_lettered" if failed else "visible",
            "failed_count": sum(1 for t in outcome.tokens if t in failed),
        })

    def _validate(self, table: TableDef, records: Sequence[IngestRecord]) -> list[NewEvent]:
        validator = self._validator(table)
        now = datetime.now(UTC)
        events: list[NewEvent] = []
        problems: list[dict[str, Any]] = []
        unsupported: list[int] = []
        for index, record in enumerate(records):
            errors: list[str] = []
            try:
                op = Op(record.op)
            except ValueError:
                problems.append({"index": index, "idempotency_key": record.idempotency_key,
                                 "errors": [f"unknown op {record.op!r}; use insert, upsert or delete"]})
                continue
            if op is not Op.INSERT and not table.schema.keyed:
                unsupported.append(index)
                continue
            canonical, errors = validator.canonical(record.payload, op)
            event_time = now
            if record.event_time is not None:
                try:
                    event_time = parse_timestamp(record.event_time)
                except ValueError as exc:
                    errors.append(f"event_time: {exc}")
            payload_json = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS).decode()
            if len(payload_json) > self._max_payload_bytes:
                errors.append(f"payload is larger than {self._max_payload_bytes} bytes")
            if errors:
                problems.append({"index": index, "idempotency_key": record.idempotency_key, "errors": errors})
                continue
            # The hash covers what makes two writes "the same": payload and an explicit event time.
            digest = hashlib.sha256(payload_json.encode())
            digest.update(b"|" + (record.event_time or "").encode())
            events.append(NewEvent(record.idempotency_key, op, payload_json, digest.digest(), event_time))
        if unsupported:
            raise OpNotSupported(
                "upsert and delete need a table with a primary key", table=table.table_name, indexes=unsupported
            )
        if problems:
            metrics.INGEST_REJECTED.labels(str(table.tenant_id), "validation").inc(len(problems))
            raise ValidationFailed(
                f"{len(problems)} of {len(records)} records are invalid; nothing was stored", errors=problems
            )
        return events


def receipt_token(receipt: IngestReceipt) -> VisibilityToken:
    return VisibilityToken(receipt.max_visibility_token)


def _receipt(outcome: PublishOutcome, schema_version: int) -> IngestReceipt:
    return IngestReceipt(
        accepted_count=outcome.accepted_count,
        duplicate_count=outcome.duplicate_count,
        max_visibility_token=outcome.max_token,
        visible_snapshot_id=None,
        status="partial_duplicate" if outcome.duplicate_count else "accepted",
        schema_version=schema_version,
    )
