"""Run work while a lease is kept alive: the one pattern every lease holder (coordinator batch,
backfill, compaction) uses so that a worker never outlives its lease silently."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def while_extending(
    work: Coroutine[Any, Any, T], extend: Callable[[], Awaitable[None]], period: float
) -> T:
    """Run ``work`` and call ``extend`` every ``period`` seconds until it finishes. When an
    extension fails, the work is cancelled and the extension's error is raised: whatever the work
    would still publish, its commit would be refused anyway (the lease is gone)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(period)
            await extend()

    job = asyncio.ensure_future(work)
    beating = asyncio.ensure_future(beat())
    try:
        await asyncio.wait({job, beating}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            beating.result()  # raises the extension failure
        return job.result()
    finally:
        for task in (job, beating):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await beating
