"""Claimed segments to data files: decode, group by table / schema version / day / partition
values, build the file
table and isolate records that cannot be materialized. Pure CPU, columnar (no per-record Python
except on the rare path of a failure); run off the event loop."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.bus.base import ClaimedSegment, DeadLetter
from duckmesh.columnar import canonical_rows
from duckmesh.datafiles import NewDataFile, ParquetFile, ingest_key, partition_value, split_by, write_parquet
from duckmesh.domain import EVENT_TIME_COLUMN, KEY_COLUMN, OP_COLUMN, TOKEN_COLUMN, VERSION_COLUMN, SegmentId, TableId
from duckmesh.schema import TableSchema

log = logging.getLogger(__name__)
_TOKEN = "__token"  # a record's visibility token while it is being materialized (never in files)
_DAY = "__day"  # the day of its event time (the date folder of its file)


def build_table(records: pa.Table, schema: TableSchema) -> pa.Table:
    """Records of one schema version (with their versions in ``_dm_token``) in the data-file
    schema: user columns plus the hidden token/op/event-time columns."""
    names = [c.name for c in schema.columns]
    return records.select([*names, TOKEN_COLUMN, OP_COLUMN, EVENT_TIME_COLUMN]).cast(schema.arrow_schema())


@dataclass
class Materialized:
    """What one tenant's part of a claim produced."""

    files: list[tuple[NewDataFile, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    records: int = 0


def with_tokens(segment: ClaimedSegment) -> pa.Table:
    """The segment's records with their visibility tokens (``__token``) and versions (``_dm_token``:
    the token, or a replayed record's original one)."""
    table = segment.records()
    tokens = pa.array(range(segment.min_token, segment.min_token + table.num_rows), pa.int64())
    versions = table.column(VERSION_COLUMN) if VERSION_COLUMN in table.column_names else tokens
    table = table.append_column(_TOKEN, tokens).append_column(TOKEN_COLUMN, versions)
    return table.append_column("__segment", pa.array([segment.segment_id] * table.num_rows, pa.int64()))


@dataclass(frozen=True)
class _Origin:
    """Per segment: what a dead letter of it records besides the record itself."""

    attempts: dict[int, int]
    traces: dict[int, str | None]


def materialize(
    segments: Sequence[ClaimedSegment], schemas: dict[tuple[TableId, int], TableSchema], claim_id: int
) -> Materialized:
    """One Parquet file per (table, schema version, day of event time, partition values), rows in
    token order."""
    out = Materialized()
    parts: dict[tuple[TableId, int], list[tuple[ClaimedSegment, pa.Table]]] = defaultdict(list)
    for segment in segments:
        parts[(segment.table_id, segment.schema_version)].append((segment, with_tokens(segment)))
    seq = 0
    for (table_id, version), members in sorted(parts.items()):
        schema = schemas.get((table_id, version))
        combined = pa.concat_tables([t for _, t in members], promote_options="permissive")
        origin = _Origin({s.segment_id: s.attempts for s, _ in members}, {s.segment_id: s.trace_id for s, _ in members})
        if schema is None:
            out.dead += dead_letters(combined, table_id, None, version, origin,
                                     "table or schema version no longer exists")
            continue
        combined = combined.append_column(_DAY, pc.cast(combined.column(EVENT_TIME_COLUMN), pa.date32()))
        columns = list(schema.partition_by)
        for values, part in sorted(split_by(combined, [_DAY, *columns]), key=_partition_order):
            good, dead = _isolating_poison(part, table_id, schema, version, origin)
            out.dead += dead
            if good is not None:
                path = ingest_key(members[0][0].tenant_id, table_id, values[0] or date(1970, 1, 1), claim_id, seq)
                seq += 1
                partition = {name: partition_value(v) for name, v in zip(columns, values[1:], strict=True)}
                out.files.append((good[1].new_file(table_id, version, path, partition), good[1].data))
                out.records += good[0]
    return out


def _partition_order(group: tuple[tuple[Any, ...], pa.Table]) -> tuple[str, ...]:
    return tuple("" if v is None else str(v) for v in group[0])


def _isolating_poison(
    part: pa.Table, table_id: TableId, schema: TableSchema, version: int, origin: _Origin
) -> tuple[tuple[int, ParquetFile] | None, list[DeadLetter]]:
    """One file for the part; if it cannot be built, find the records that cannot (one by one,
    only on this rare path), dead-letter them and build the rest."""
    try:
        return (part.num_rows, write_parquet(build_table(part, schema))), []
    except Exception:
        log.warning("materialize_group_failed", exc_info=True)
    good: list[int] = []
    dead: list[DeadLetter] = []
    for index in range(part.num_rows):
        row = part.slice(index, 1)
        try:
            build_table(row, schema)
            good.append(index)
        except Exception as exc:
            dead += dead_letters(row, table_id, schema, version, origin,
                                 f"cannot materialize: {type(exc).__name__}: {exc}")
    if not good:
        return None, dead
    kept = part.take(pa.array(good, pa.int64()))
    return (kept.num_rows, write_parquet(build_table(kept, schema))), dead


def dead_letters(
    records: pa.Table, table_id: TableId, schema: TableSchema | None, version: int, origin: _Origin, reason: str
) -> list[DeadLetter]:
    """Records (with ``__token``, ``_dm_token`` and ``__segment``) as dead letters in canonical JSON."""
    payloads = canonical_rows(records, schema) if schema is not None else ["{}"] * records.num_rows
    columns = {name: records.column(name).to_pylist()
               for name in (_TOKEN, TOKEN_COLUMN, "__segment", KEY_COLUMN, OP_COLUMN, EVENT_TIME_COLUMN)}
    return [
        DeadLetter(table_id, SegmentId(segment), token, version_token, key, op, payload, version, event_time,
                   origin.attempts.get(segment, 0), reason[:1000], origin.traces.get(segment))
        for token, version_token, segment, key, op, event_time, payload in zip(
            columns[_TOKEN], columns[TOKEN_COLUMN], columns["__segment"], columns[KEY_COLUMN], columns[OP_COLUMN],
            columns[EVENT_TIME_COLUMN], payloads, strict=True)
    ]


def all_dead(segments: Sequence[ClaimedSegment], schemas: dict[tuple[TableId, int], TableSchema],
             reason: str) -> list[DeadLetter]:
    """Every record of ``segments`` as a dead letter (segments out of attempts)."""
    letters: list[DeadLetter] = []
    for segment in segments:
        origin = _Origin({segment.segment_id: segment.attempts}, {segment.segment_id: segment.trace_id})
        letters += dead_letters(with_tokens(segment), segment.table_id,
                                schemas.get((segment.table_id, segment.schema_version)), segment.schema_version,
                                origin, reason)
    return letters
