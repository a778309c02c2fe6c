"""Real DuckMesh processes for the acceptance suite: spawn, wait until ready, always clean up.

Every process runs ``python -m duckmesh ...`` with a controlled environment (this process's
environment minus every ``DUCKMESH_*`` variable, plus the settings the test names), writes its
stdout and stderr to files under the test's temporary directory, and talks only to 127.0.0.1.
Whatever the test does, teardown terminates (then kills) every process it started, by pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.acceptance.faults import ThrowawayPostgres, new_throwaway_postgres
from tests.conftest import free_port

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_ADDR = f"{LOOPBACK}:8080"
# Commands that serve HTTP (and so can be waited on through /v1/ready).
SERVERS = ("up", "api", "coordinator")

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.acceptance)


def process_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any DUCKMESH_* setting, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DUCKMESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    # Each process its own metrics port (the default 127.0.0.1:9464 would be shared by every test process).
    env["DUCKMESH_METRICS_ADDR"] = f"{LOOPBACK}:{free_port()}"
    for name, value in (settings or {}).items():
        assert name.startswith("DUCKMESH_"), f"not a DuckMesh setting: {name}"
        env[name] = value
    return env


def external_settings(dsn: str, object_dir: Path, **extra: str) -> dict[str, str]:
    """Settings for a process against an external catalog and a local object store, on a free port."""
    return {
        "DUCKMESH_CATALOG_DSN": dsn,
        "DUCKMESH_OBJECT_STORE_URL": object_dir.as_uri(),
        "DUCKMESH_HTTP_ADDR": f"{LOOPBACK}:{free_port()}",
        **{f"DUCKMESH_{name.upper()}": value for name, value in extra.items()},
    }


def http_client(base_url: str) -> httpx.AsyncClient:
    """A client that never uses proxy settings from the environment: traffic stays on loopback."""
    assert base_url.startswith(f"http://{LOOPBACK}:"), base_url
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30.0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "<no output file>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


@dataclass
class DuckMeshProcess:
    name: str
    args: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    http_addr: str | None
    metrics_addr: str | None = None
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        assert self.http_addr is not None, f"{self.name} does not serve HTTP"
        return f"http://{self.http_addr}"

    @property
    def metrics_url(self) -> str:
        """The process's metrics listener (DUCKMESH_METRICS_ADDR)."""
        assert self.metrics_addr is not None, f"{self.name} has no metrics listener"
        return f"http://{self.metrics_addr}"

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.returncode is None else f"exit code {self.returncode}"
        return (
            f"{self.name} (pid {self.pid}, duckmesh {' '.join(self.args)}, {state})\n"
            f"--- stderr tail ({self.stderr_path}) ---\n{tail(self.stderr_path, lines)}"
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll GET /v1/ready until it answers 200; fail with the stderr tail otherwise."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.returncode is not None:
                    pytest.fail(f"{self.name} exited before it was ready\n{self.describe()}")
                try:
                    response = client.get(f"{self.base_url}/v1/ready")
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:300]}"
                time.sleep(0.1)
        pytest.fail(f"{self.name} not ready within {timeout:.0f}s (last answer: {last})\n{self.describe()}")

    def send(self, sig: signal.Signals) -> None:
        if self.returncode is None:
            self.popen.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:.0f}s\n{self.describe()}")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for the exit code (the graceful path under test)."""
        self.send(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> int:
        """SIGKILL: the crash under test. Returns once the process is gone."""
        self.send(signal.SIGKILL)
        return self.popen.wait(10)

    def close(self) -> None:
        """Teardown: make sure the process is gone, whatever state the test left it in."""
        if self.returncode is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for handle in self._files:
            handle.close()


class Spawner:
    """Starts DuckMesh processes and one-shot CLI commands; ``close`` stops everything it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[DuckMeshProcess] = []
        self._cleanups: list[Callable[[], None]] = []
        self._seq = 0

    def _command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "duckmesh", *args]

    def start(
        self,
        *args: str,
        settings: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        wait_ready: bool = True,
        ready_timeout: float = READY_TIMEOUT,
    ) -> DuckMeshProcess:
        self._seq += 1
        label = name or f"{args[0]}-{self._seq}"
        http_addr = None
        if args[0] in SERVERS:
            http_addr = (settings or {}).get("DUCKMESH_HTTP_ADDR", DEFAULT_HTTP_ADDR)
            assert http_addr.startswith(f"{LOOPBACK}:"), f"acceptance processes listen on loopback only: {http_addr}"
        out_path = self.workdir / f"{label}.stdout"
        err_path = self.workdir / f"{label}.stderr"
        out, err = open(out_path, "wb"), open(err_path, "wb")  # noqa: SIM115 - closed in DuckMeshProcess.close
        env = process_env(settings)
        popen = subprocess.Popen(
            self._command(args), env=env, cwd=cwd or self.workdir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        metrics_addr = env["DUCKMESH_METRICS_ADDR"] if args[0] in SERVERS else None
        proc = DuckMeshProcess(label, tuple(args), popen, out_path, err_path, http_addr, metrics_addr, [out, err])
        self._procs.append(proc)
        if wait_ready:
            proc.wait_ready(ready_timeout)
        return proc

    def run(
        self,
        *args: str,
        settings: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``duckmesh`` command to completion (killed if it outlives ``timeout``)."""
        return subprocess.run(
            self._command(args), env=process_env(settings), cwd=cwd or self.workdir, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def after_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` once every process has been stopped (e.g. stop an embedded database)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Stop every process, then run the cleanups; safe to call more than once."""
        procs, self._procs = self._procs, []
        cleanups, self._cleanups = self._cleanups, []
        for proc in reversed(procs):
            proc.close()
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    logs = tmp_path / "processes"
    logs.mkdir()
    spawner = Spawner(logs)
    try:
        yield spawner
    finally:
        spawner.close()


# The catalog fixtures of tests/conftest.py, wrapped so that every process is stopped before its
# database is dropped, whatever order a test lists its fixtures in.
@pytest.fixture
def dsn(dsn: str, spawn: Spawner) -> Iterator[str]:
    yield dsn
    spawn.close()


@pytest.fixture
def empty_dsn(empty_dsn: str, spawn: Spawner) -> Iterator[str]:
    yield empty_dsn
    spawn.close()


def postgres_pids(pgdata: Path) -> list[int]:
    """Pids of PostgreSQL servers whose command line names ``pgdata`` (the postmaster does)."""
    needle = str(pgdata).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"postgres" in cmdline and needle in cmdline:
                found.append(int(entry.name))
    return found


def _stop_embedded_postgres(pgdata: Path) -> None:
    """Fast-shutdown an embedded server a test left behind (e.g. after killing ``duckmesh up``)."""
    for pid in postgres_pids(pgdata):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def embedded_home(spawn: Spawner) -> Path:
    """A fresh working directory for ``duckmesh up`` (its ./.duckmesh holds the embedded database).

    Kept short and outside pytest's private temp dir: the PostgreSQL socket lives in it, and the
    embedded server runs as another user when the tests run as root.
    """
    home = Path(tempfile.mkdtemp(prefix="dm-up-"))

    def cleanup() -> None:
        _stop_embedded_postgres(home / ".duckmesh" / "pg")
        shutil.rmtree(home, ignore_errors=True)

    spawn.after_close(cleanup)
    return home


@pytest.fixture
def throwaway_postgres(spawn: Spawner) -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own (its own directory and TCP port), which the test may
    stop and start; removed after every process the test started has stopped."""
    server = new_throwaway_postgres()
    spawn.after_close(server.remove)
    yield server
    spawn.close()


KEY_PATTERN = re.compile(r"\bdm_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}\b")
