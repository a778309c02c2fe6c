"""One LISTEN connection per process, fanned out to any number of in-process waiters.

Used for new ingest work (wakes coordinators) and for snapshot publication (wakes
visibility barriers). A missed notification is harmless: every waiter also has a
timeout after which it re-checks the catalog (the slow safety-net poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

INGEST_CHANNEL = "duckmesh_ingest"
SNAPSHOT_CHANNEL = "duckmesh_snapshot"
READ_ONLY_CHANNEL = "duckmesh_read_only"


class Listener:
    def __init__(
        self, dsn: str, channels: tuple[str, ...], on_notify: Callable[[str, str], None] | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._channels = channels
        self._on_notify = on_notify
        # Called on every (re)connection: notifications sent while disconnected are lost.
        self._on_connect = on_connect
        self._generation = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.last_payload: dict[str, str] = {}
        self.connected = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="catalog-listener")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    for channel in self._channels:
                        await conn.execute(f"LISTEN {channel}")
                    if self._on_connect is not None:
                        self._on_connect()
                    self.connected.set()
                    backoff = 0.1
                    # Wake everyone once after (re)connecting: notifications may have been missed.
                    await self._bump()
                    async for note in conn.notifies():
                        self.last_payload[note.channel] = note.payload
                        if self._on_notify is not None:
                            self._on_notify(note.channel, note.payload)
                        await self._bump()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.connected.clear()
                log.warning("catalog_listener_reconnect", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _bump(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    @property
    def generation(self) -> int:
        return self._generation

    async def wait(self, since: int, timeout: float) -> int:
        """Wait until a notification newer than generation ``since`` arrives, or the timeout."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self._generation > since), timeout)
            return self._generation
