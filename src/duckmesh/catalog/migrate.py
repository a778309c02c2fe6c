"""Numbered SQL migrations: ``NNNN_name.up.sql`` / ``NNNN_name.down.sql`` beside this module."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row

from duckmesh.errors import CatalogUnavailable

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")
# Serializes concurrent migrators (several processes starting at once).
_LOCK_KEY = 0x44_4D_4D_49  # "DMMI"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


def available() -> list[Migration]:
    files: dict[tuple[int, str], dict[str, str]] = {}
    for entry in resources.files("duckmesh.catalog.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            files.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = entry.read_text()
    return [Migration(v, n, sql["up"], sql.get("down", "")) for (v, n), sql in sorted(files.items())]


def latest_version() -> int:
    migrations = available()
    return migrations[-1].version if migrations else 0


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A migration connection; an unreachable catalog is CatalogUnavailable (one clear CLI line)."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="duckmesh-migrate")
    except psycopg.OperationalError as exc:
        raise CatalogUnavailable("catalog database is not reachable") from exc
    with conn:
        yield conn


def connected_processes(dsn: str) -> list[dict[str, Any]]:
    """Other sessions of DuckMesh processes (their pools set application_name) on the catalog database."""
    with _connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT pid, application_name, backend_start FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name LIKE 'duckmesh%%' AND application_name <> 'duckmesh-migrate'"
            " ORDER BY backend_start"
        )
        return list(cur.fetchall())


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )


def applied(conn: psycopg.Connection) -> list[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def upgrade(dsn: str, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: latest); each in its own transaction."""
    done: list[int] = []
    with _connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            _ensure_table(conn)
            current = set(applied(conn))
            for migration in available():
                if migration.version in current or (target is not None and migration.version > target):
                    continue
                with conn.transaction():
                    conn.execute(migration.up.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                done.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done


def downgrade(dsn: str, target: int = 0) -> list[int]:
    """Revert applied migrations above ``target``, newest first."""
    undone: list[int] = []
    by_version = {m.version: m for m in available()}
    with _connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            _ensure_table(conn)
            for version in sorted(applied(conn), reverse=True):
                if version <= target:
                    break
                with conn.transaction():
                    conn.execute(by_version[version].down.encode())
                    conn.execute("DELETE FROM schema_migrations WHERE version = %s", (version,))
                undone.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return undone


def status(dsn: str) -> dict[str, object]:
    with _connect(dsn) as conn:
        done = applied(conn)
    names = {m.version: m.name for m in available()}
    return {
        "current": max(done, default=0),
        "latest": latest_version(),
        "applied": done,
        "pending": [v for v in names if v not in done],
    }
