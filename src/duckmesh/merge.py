"""The keyed-table rule, rendered once for queries and for compaction: per key the version with
the highest ``_dm_token`` wins, and a winning delete hides the key. Also the read-side view of a
table over files written with older schema versions, matched by stable field id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from duckmesh.domain import EVENT_TIME_COLUMN, OP_COLUMN, TOKEN_COLUMN
from duckmesh.schema import TableSchema, duckdb_type


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def read_parquet(paths: Sequence[str]) -> str:
    return f"read_parquet([{', '.join(literal(p) for p in paths)}], hive_partitioning = false)"


def latest_version_filter(schema: TableSchema, *, hide_deletes: bool) -> str:
    """The QUALIFY clause that keeps one row per key: the highest token; a delete marker is kept
    only when ``hide_deletes`` is false (compaction that must keep tombstones)."""
    keys = ", ".join(quote(k) for k in schema.primary_key)
    rule = f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {TOKEN_COLUMN} DESC) = 1"
    return rule + (f" AND {OP_COLUMN} <> 'delete'" if hide_deletes else "")


@dataclass(frozen=True)
class FileGroup:
    """Data files written with one schema version."""

    written: TableSchema
    paths: tuple[str, ...]


def _projection(current: TableSchema, written: TableSchema) -> list[str]:
    """Every current column as read from files of ``written``: the column with the same field id
    (cast when it was narrower, JSON text typed as JSON), or NULL when those files never had it.
    A name the files carry under another field id (dropped, then re-added) reads as NULL."""
    by_id = {c.field_id: c for c in written.columns}
    parts = []
    for column in current.columns:
        stored = by_id.get(column.field_id)
        target = duckdb_type(column.type)
        name = quote(column.name)
        if stored is None:
            parts.append(f"CAST(NULL AS {target}) AS {name}")
        elif stored.type != column.type or column.type == "json" or stored.name != column.name:
            parts.append(f"CAST({quote(stored.name)} AS {target}) AS {name}")
        else:
            parts.append(name)
    return parts


def view_sql(current: TableSchema, groups: Sequence[FileGroup], *, with_event_time: bool = False) -> str:
    """The SELECT a table's view runs: user columns only (plus the event time when asked), keyed
    tables resolved on read."""
    groups = [g for g in groups if g.paths]
    extra = [EVENT_TIME_COLUMN] if with_event_time else []
    if not groups:
        empty = [f"CAST(NULL AS {duckdb_type(c.type)}) AS {quote(c.name)}" for c in current.columns]
        empty += [f"CAST(NULL AS TIMESTAMPTZ) AS {name}" for name in extra]
        return f"SELECT {', '.join(empty)} WHERE false"
    hidden = [TOKEN_COLUMN, OP_COLUMN] if current.keyed else []
    if len(groups) == 1:
        source = read_parquet(groups[0].paths)
        projection = ", ".join([*_projection(current, groups[0].written), *extra])
    else:
        branches = [
            f"SELECT {', '.join([*_projection(current, g.written), *hidden, *extra])} FROM {read_parquet(g.paths)}"
            for g in groups
        ]
        source = "(" + " UNION ALL ".join(branches) + ")"
        projection = ", ".join([*(quote(c.name) for c in current.columns), *extra])
    if not current.keyed:
        return f"SELECT {projection} FROM {source}"
    return f"SELECT {projection} FROM {source} {latest_version_filter(current, hide_deletes=True)}"
