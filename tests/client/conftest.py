"""A real DuckMesh server for client and CLI tests: the API served by uvicorn on a free loopback
port inside the test's event loop, plus a coordinator, against the test's own catalog database.

CLI commands run as real processes (``python -m duckmesh ...``) so the event loop keeps serving
while they talk to it; their environment has no DUCKMESH_* setting except the ones a test gives,
and a private XDG_CONFIG_HOME so no developer profile leaks in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import Listener
from duckmesh.cli.serve import _bind
from duckmesh.config import Settings
from duckmesh.storage.base import ObjectStore
from tests.conftest import KeyMaker
from tests.helpers import running_coordinators

CLI_TIMEOUT = 120.0


@dataclass
class LiveServer:
    url: str
    key: str
    headers: dict[str, str]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


@contextlib.asynccontextmanager
async def serve(ctx: AppContext) -> AsyncIterator[str]:
    """Serve ``ctx``'s API on a free 127.0.0.1 port until the block ends; yields the base URL."""
    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def live_server(
    app_context: AppContext, make_key: KeyMaker, pool: CatalogPool, store: ObjectStore, listener: Listener
) -> AsyncIterator[LiveServer]:
    headers = await make_key("acme")
    key = headers["Authorization"].removeprefix("Bearer ")
    async with serve(app_context) as url, running_coordinators(pool, store, listener, count=1):
        yield LiveServer(url, key, headers)


@pytest.fixture
def context_with(app_context: AppContext) -> Callable[..., AppContext]:
    """The test's context with some settings changed (e.g. a smaller body limit)."""

    def make(**settings: Any) -> AppContext:
        changed: Settings = app_context.settings.model_copy(update=settings)
        return dataclasses.replace(app_context, settings=changed)

    return make


def cli_env(home: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DUCKMESH_")}
    env.update({"XDG_CONFIG_HOME": str(home / "config"), "HOME": str(home), "PYTHONUNBUFFERED": "1",
                "COLUMNS": "200", "NO_COLOR": "1"})
    env.update(settings)
    return env


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., Any]:
    """``await run_cli("sql", "SELECT 1", server=live)`` runs ``duckmesh`` as a process."""

    async def run(*args: str, server: LiveServer | None = None, stdin: bytes | None = None,
                  env: dict[str, str] | None = None) -> CliResult:
        settings = {"DUCKMESH_SERVER": server.url, "DUCKMESH_API_KEY": server.key} if server else {}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "duckmesh", *args, env=cli_env(tmp_path, **settings, **(env or {})),
            cwd=tmp_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), out)

    return run
