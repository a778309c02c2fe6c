"""Turn claimed events into an Arrow table in the data-file schema (pure CPU; run off the event loop)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from duckmesh.bus.base import ClaimedEvent
from duckmesh.columnar import canonical_table
from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN
from duckmesh.schema import TableSchema


def build_table(events: Sequence[ClaimedEvent], schema: TableSchema) -> pa.Table:
    """User columns plus the hidden columns; ``_dm_token`` is each event's version (its token, or
    a replayed event's original token), which orders versions of a key."""
    payload = canonical_table([e.payload_json for e in events], schema)
    hidden = [
        pa.array([e.version for e in events], pa.int64()),
        pa.array([e.op.value for e in events], pa.string()),
        pa.array([e.event_time for e in events], pa.timestamp("us", tz="UTC")),
    ]
    table = pa.table(
        [*payload.columns, *hidden],
        names=[*payload.column_names, TOKEN_COLUMN, OP_COLUMN, EVENT_TIME_COLUMN],
    )
    return table.cast(schema.arrow_schema())
