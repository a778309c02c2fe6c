"""Connections to the catalog database: DSN resolution (embedded or external) and the pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from duckmesh.errors import CatalogUnavailable, RequestInvalid

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "duckmesh"
IDLE_IN_TRANSACTION_MS = 15_000
AsyncConn = psycopg.AsyncConnection[dict[str, Any]]


def embedded_dsn(state_dir: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL under ``state_dir/pg`` and return its DSN.

    pgserver keeps one server per data directory and counts the processes holding it, so the
    CLI can attach while ``duckmesh up`` runs; the server stops when the last holder exits.
    """
    import pgserver  # imported lazily: only the zero-config path needs it

    pgdata = (state_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
    log.info("embedded_catalog_started", extra={"pgdata": str(pgdata)})
    return str(server.get_uri(EMBEDDED_DATABASE))


def redact_dsn(dsn: str) -> str:
    """A DSN safe for logs: host and database only."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    return f"host={info.get('host', '?')} dbname={info.get('dbname', '?')}"


def _sqlstate_name(exc: psycopg.Error) -> str:
    """The error's SQLSTATE name (never its message, which may quote values)."""
    diag = getattr(exc, "sqlstate", None)
    return type(exc).__name__ if diag is None else f"{type(exc).__name__} ({diag})"


class CatalogPool:
    """An async connection pool with dict rows; translate connection failures at the edge."""

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 8, name: str = "duckmesh", open_timeout: float = 15.0
    ) -> None:
        self.dsn = dsn
        self._open_timeout = open_timeout  # how long open() keeps trying to reach the catalog
        self._pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name=name,
            # application_name lets `duckmesh migrate down` see which DuckMesh processes are connected.
            # A session that stalls inside a transaction (a SIGSTOPped worker holding the tenant's
            # head or counter lock) is ended by the server, which releases its locks.
            kwargs={"autocommit": True, "row_factory": dict_row, "application_name": name[:63],
                    "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"},
            timeout=10.0,
        )

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._open_timeout)
        except Exception as exc:  # any driver failure at startup is "catalog unreachable"
            raise CatalogUnavailable("catalog database is not reachable", dsn=redact_dsn(self.dsn)) from exc

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConn]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise CatalogUnavailable("catalog database is not reachable") from exc
        except psycopg.DataError as exc:
            # A value from the request the catalog cannot hold or compare: a NUL character, an
            # integer beyond 64 bits, a time out of range. The caller's mistake, never a crash.
            raise RequestInvalid(
                "a value in the request is out of range or contains a character the catalog cannot store"
                " (NUL, invalid Unicode)", reason=_sqlstate_name(exc)
            ) from None
        except UnicodeEncodeError:
            raise RequestInvalid("the request contains text that is not valid Unicode (a lone surrogate)") from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConn]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def __aenter__(self) -> CatalogPool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
