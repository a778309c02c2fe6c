"""Domain names shared by every plane: typed ids, states and roles."""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

TenantId = NewType("TenantId", int)
TableId = NewType("TableId", int)
SnapshotId = NewType("SnapshotId", int)
VisibilityToken = NewType("VisibilityToken", int)
ReservationId = NewType("ReservationId", int)
EventId = NewType("EventId", int)
FileId = NewType("FileId", int)


class Role(StrEnum):
    INGEST_WRITER = "ingest_writer"
    QUERY_READER = "query_reader"
    TABLE_ADMIN = "table_admin"
    OPS_ADMIN = "ops_admin"


ALL_ROLES: frozenset[Role] = frozenset(Role)


class Op(StrEnum):
    INSERT = "insert"
    UPSERT = "upsert"
    DELETE = "delete"


class EventState(StrEnum):
    ACCEPTED = "accepted"
    CLAIMED = "claimed"
    COMMITTED = "committed"
    FAILED = "failed"


class SnapshotKind(StrEnum):
    INGEST = "ingest"
    COMPACTION = "compaction"
    RESTORE = "restore"
    BACKFILL = "backfill"
    DROP = "drop"
    SCHEMA = "schema"  # a table was created or its schema changed: the snapshot pins the new version


# Hidden columns every data file carries; they never reach a query result.
TOKEN_COLUMN = "_dm_token"
OP_COLUMN = "_dm_op"
EVENT_TIME_COLUMN = "_dm_event_time"
HIDDEN_COLUMNS = (TOKEN_COLUMN, OP_COLUMN, EVENT_TIME_COLUMN)
# Columns of a bus segment beside the user columns (never in data files).
KEY_COLUMN = "_dm_key"  # the record's idempotency key (null when the request had none)
VERSION_COLUMN = "_dm_version"  # only in replays: the version (original token) of each record
SegmentId = NewType("SegmentId", int)
