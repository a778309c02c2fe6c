"""Load and faults for the recovery tests: writers that retry like a well-behaved client (the same
body, so the same idempotency keys, until acknowledged), and a PostgreSQL server of the test's own
that can be restarted (never the machine's shared one).

Writers record what was acknowledged; ``assert_all_visible`` checks each acknowledged row is in the
table exactly once. Waits are bounded by deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.helpers import records

LOOPBACK = "127.0.0.1"
REQUEST_DEADLINE = 90.0  # a request not acknowledged within this (retries included) fails the test
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def http_client(base_url: str) -> httpx.AsyncClient:
    assert base_url.startswith(f"http://{LOOPBACK}:"), base_url
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30.0)


@dataclass
class Writers:
    """``count`` writers, each sending ``batches`` requests of ``rows`` new rows to ``table``."""

    base_url: str
    headers: dict[str, str]
    count: int = 3
    batches: int = 20
    rows: int = 50
    table: str = "events"
    pause: float = 0.02
    acked: int = 0
    max_token: int = 0
    latencies: list[float] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def total(self) -> int:
        return self.count * self.batches * self.rows

    async def run(self) -> None:
        async with http_client(self.base_url) as http:
            await asyncio.gather(*(self._writer(http, w) for w in range(self.count)))

    async def acknowledged(self, rows: int) -> None:
        """Wait until at least ``rows`` rows are acknowledged (the moment to inject a fault)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.acked >= rows), REQUEST_DEADLINE)

    async def _writer(self, http: httpx.AsyncClient, writer: int) -> None:
        for batch in range(self.batches):
            start = (writer * self.batches + batch) * self.rows
            body = {"records": records(start, self.rows, prefix=f"w{writer}")}
            token = await self._send(http, body)
            async with self._progress:
                self.acked += self.rows
                self.max_token = max(self.max_token, token)
                self._progress.notify_all()
            await asyncio.sleep(self.pause)

    async def _send(self, http: httpx.AsyncClient, body: dict[str, Any]) -> int:
        started = time.monotonic()
        while True:
            try:
                response = await http.post(f"/v1/ingest/{self.table}", headers=self.headers, json=body, timeout=30)
            except httpx.TransportError as exc:
                self.retries[type(exc).__name__] += 1
            else:
                if response.status_code == 200:
                    self.latencies.append(time.monotonic() - started)
                    return int(response.json()["max_visibility_token"])
                assert response.status_code in RETRY_STATUSES, f"{response.status_code}: {response.text}"
                self.retries[response.json().get("error_code", str(response.status_code))] += 1
            assert time.monotonic() - started < REQUEST_DEADLINE, f"not acknowledged in time; retries {self.retries}"
            await asyncio.sleep(0.1)

    def latency_summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {"requests": len(ordered), "p50_s": round(statistics.median(ordered), 4),
                "p95_s": round(ordered[int(len(ordered) * 0.95) - 1], 4), "max_s": round(ordered[-1], 4)}


async def assert_all_visible(base_url: str, headers: dict[str, str], writers: Writers, table: str = "events") -> None:
    """Every acknowledged row is visible exactly once (a strict read at the last acknowledged token)."""
    body = {"sql": f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}",
            "min_visibility_token": writers.max_token, "consistency_timeout_ms": 60_000}
    deadline = time.monotonic() + 90
    async with http_client(base_url) as http:
        while True:
            response = await http.post("/v1/query", headers=headers, json=body, timeout=90)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert response.status_code in RETRY_STATUSES, response.text
            await asyncio.sleep(0.2)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[writers.total, writers.total, 0, writers.total - 1]]


async def wait_ready(base_url: str, timeout: float = 60.0) -> float:
    """Seconds until GET /v1/ready answers 200."""
    started = time.monotonic()
    async with http_client(base_url) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/v1/ready", timeout=5)).status_code == 200:
                    return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"{base_url} not ready again within {timeout:.0f}s"
            await asyncio.sleep(0.05)


# --- a PostgreSQL server of the test's own ------------------------------------------------------


def _pg_user() -> str | None:
    """initdb refuses to run as root: pgserver's binaries then run as its own user (as `up` does)."""
    return "pgserver" if os.geteuid() == 0 else None


def pg_ctl(pgdata: Path, *args: str, timeout: float = 60) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args], check=True, timeout=timeout,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=_pg_user())


def new_throwaway_postgres() -> ThrowawayPostgres:
    """initdb a new server under a short temporary directory (owned by the server's user) and start it."""
    from pgserver._commands import POSTGRES_BIN_PATH

    base = Path(tempfile.mkdtemp(prefix="dm-pg-"))  # short: the socket lives here
    user = _pg_user()
    if user is not None:
        import pwd

        from pgserver.utils import ensure_user_exists

        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o755)
    server = ThrowawayPostgres(base, free_port())
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(server.pgdata), "--auth=trust", "-U", "postgres",
                    "--encoding=utf8", "--no-sync"], check=True, timeout=120, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=user)
    server.start()
    return server


@dataclass
class ThrowawayPostgres:
    """A server in a temporary directory on its own TCP port on 127.0.0.1, from pgserver's binaries."""

    base: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.base / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        pg_ctl(self.pgdata, "-w", "-l", str(self.base / "log"), "-o",
               f"-p {self.port} -h 127.0.0.1 -k {self.base} -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        pg_ctl(self.pgdata, "-w", "-m", mode, "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
