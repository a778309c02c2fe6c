"""Processes, the scratch database and machine facts for the benchmarks.

Everything stays on this machine: the PostgreSQL named by the admin DSN (127.0.0.1 or a local
socket; a scratch database is created in it and dropped afterwards), a temporary local-directory
object store, and ``duckmesh api`` / ``coordinator`` / ``compactor`` processes on free loopback
ports. Every process is started and stopped by pid; its peak RSS (VmHWM) is read just before it
stops, so a restarted role keeps the highest value any of its processes reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
from psycopg import sql

LOOPBACK = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
ALL_ROLES = ("table_admin", "ingest_writer", "query_reader", "ops_admin")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def with_database(dsn: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def snapshot_source(into: Path) -> Path:
    """Copy src/ (the duckmesh package as it is in the work tree now) to ``into`` and check it imports.

    Every process of the run imports this copy (PYTHONPATH), and so does the benchmark itself, so
    the whole run measures one version of the code even while src/ is being edited."""
    shutil.copytree(ROOT / "src", into, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    check = subprocess.run([sys.executable, "-c", "import duckmesh.cli"], env={**os.environ, "PYTHONPATH": str(into)},
                           capture_output=True, text=True, timeout=120, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"src/ does not import as it is now (mid-edit?):\n{check.stderr[-1500:]}")
    return into


def check_local_dsn(dsn: str) -> None:
    """The benchmark never talks to another machine: loopback TCP or a local socket only."""
    host = str(psycopg.conninfo.conninfo_to_dict(dsn).get("host") or "")
    if host not in (LOOPBACK, "localhost", "::1") and not host.startswith("/"):
        sys.exit(f"the DSN must point at {LOOPBACK} or a local socket (got host {host!r})")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    name: str  # e.g. "api-1"
    role: str  # the duckmesh command
    popen: subprocess.Popen[bytes]
    stderr_path: Path
    addr: str
    env: dict[str, str]
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def peak_rss_bytes(self) -> int:
        return proc_status_kb(self.pid, "VmHWM") * 1024

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connections but does no work until ``resume``."""
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for handle in self.files:
            handle.close()
        return self.popen.returncode


_CREATE_TENANT = """
import asyncio, sys
from duckmesh.catalog import tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import Role

async def create():
    async with CatalogPool(sys.argv[1], max_size=1) as pool, pool.connection() as conn:
        tenant = await tenants.create_tenant(conn, sys.argv[2])
        _, secret = await tenants.create_key(conn, tenant.tenant_id, [Role(r) for r in sys.argv[3:]])
        print(secret)

asyncio.run(create())
"""


class Cluster:
    """The scratch database, the object store directory and the DuckMesh processes."""

    def __init__(self, admin_dsn: str, keep: bool = False, source: Path | None = None, python: str | None = None,
                 **settings: str) -> None:
        """``source``: a directory holding the ``duckmesh`` package that every process imports (a
        snapshot of src/, so edits made to the work tree during a run do not reach it). ``python``:
        the interpreter of every DuckMesh process (default this one; a ``--baseline-ref`` run gives
        the interpreter of a temporary environment where another commit is installed)."""
        check_local_dsn(admin_dsn)
        self.admin_dsn = admin_dsn
        self.db_name = f"duckmesh_bench_{uuid.uuid4().hex[:10]}"
        self.dsn = with_database(admin_dsn, self.db_name)
        self.workdir = Path(tempfile.mkdtemp(prefix="duckmesh-bench-"))
        self.objects = self.workdir / "objects"
        self.keep = keep
        self.settings = {k.upper(): v for k, v in settings.items()}  # DUCKMESH_<NAME> for every process
        self.source = source
        self.python = python or sys.executable
        self.procs: list[Proc] = []
        self.peak_rss: dict[str, int] = {}  # role -> highest VmHWM of any of its processes
        self.warnings: list[str] = []
        self._serial = 0

    # -- environment, CLI, database ---------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
        env.update({
            "DUCKMESH_CATALOG_DSN": self.dsn,
            "DUCKMESH_OBJECT_STORE_URL": self.objects.as_uri(),
            "DUCKMESH_STATE_DIR": str(self.workdir / "state"),
            "PYTHONUNBUFFERED": "1",
        })
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        env.update({f"DUCKMESH_{k}": v for k, v in self.settings.items()})
        env.update({f"DUCKMESH_{k.upper()}": v for k, v in extra.items()})
        return env

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [self.python, "-m", "duckmesh", *args], env=self.env(), cwd=self.workdir,
            capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"duckmesh {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return result.stdout

    def create_database(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        self.cli("migrate", "up")

    def create_tenant(self, name: str, roles: Iterable[str] = ALL_ROLES) -> str:
        """A tenant and an API key with ``roles``, through the catalog code the CLI uses (in-process:
        one ``duckmesh tenant create`` + ``key create`` pair costs two interpreter starts; in the
        measured interpreter when that is another one, whose duckmesh may differ from ours)."""
        if self.python != sys.executable:
            done = subprocess.run([self.python, "-c", _CREATE_TENANT, self.dsn, name, *roles], env=self.env(),
                                  capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"creating tenant {name} failed:\n{done.stderr[-2000:]}")
            return done.stdout.strip().splitlines()[-1]
        from duckmesh.catalog import tenants
        from duckmesh.catalog.db import CatalogPool
        from duckmesh.domain import Role

        async def create() -> str:
            async with CatalogPool(self.dsn, max_size=1) as pool, pool.connection() as conn:
                tenant = await tenants.create_tenant(conn, name)
                _, secret = await tenants.create_key(conn, tenant.tenant_id, [Role(r) for r in roles])
                return secret

        return asyncio.run(create())

    def query(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return list(conn.execute(statement, params).fetchall())

    def execute(self, statement: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement)

    # -- processes --------------------------------------------------------------------------------

    def start(self, command: str, name: str | None = None, wait: bool = True, python_path: str | None = None,
              **extra: str) -> Proc:
        """Start ``duckmesh <command>`` on a free port (``python_path``: only for bench experiments)."""
        self._serial += 1
        name = name or command
        addr = f"{LOOPBACK}:{free_port()}"
        stem = f"{self._serial:03d}-{name}"
        out = open(self.workdir / f"{stem}.stdout", "wb")  # noqa: SIM115 - closed in Proc.stop
        err = open(self.workdir / f"{stem}.stderr", "wb")  # noqa: SIM115
        env = self.env(http_addr=addr, **{"metrics_addr": f"{LOOPBACK}:{free_port()}", **extra})
        if python_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, env.get("PYTHONPATH")) if p)
        popen = subprocess.Popen(
            [self.python, "-m", "duckmesh", command], env=env, cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        proc = Proc(name, command, popen, self.workdir / f"{stem}.stderr", addr, env, [out, err])
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        self.peak_rss[proc.role] = max(self.peak_rss.get(proc.role, 0), proc.peak_rss_bytes())
        code = proc.stop()
        if code not in (0, None, -signal.SIGTERM):
            self.warnings.append(f"{proc.name} exited with {code}: {proc.tail(5)}")
        if proc in self.procs:
            self.procs.remove(proc)

    def restart(self, proc: Proc, **extra: str) -> Proc:
        """Stop ``proc`` and start the same command again (with ``extra`` settings on top)."""
        self.stop(proc)
        return self.start(proc.role, proc.name, **extra)

    def running(self, role: str) -> list[Proc]:
        return [p for p in self.procs if p.role == role]

    def scale(self, role: str, count: int, **extra: str) -> list[Proc]:
        """Exactly ``count`` processes of ``role``, all started with ``extra`` (restarting them
        when ``extra`` differs from what they run with)."""
        def settings(env: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in env.items() if k.startswith("DUCKMESH_") and k != "DUCKMESH_HTTP_ADDR"}

        wanted = settings(self.env(**extra))
        for proc in list(self.running(role)):
            if settings(proc.env) != wanted:
                self.stop(proc)
        while len(self.running(role)) > count:
            self.stop(self.running(role)[-1])
        while len(self.running(role)) < count:
            self.start(role, f"{role}-{len(self.running(role)) + 1}", **extra)
        return self.running(role)

    @staticmethod
    def wait_ready(proc: Proc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{proc.url}/v1/ready").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")

    def postgres_cpu_seconds(self) -> float:
        """CPU time of the PostgreSQL backends serving the scratch database (their process title
        names the database), so the catalog's share of the machine shows next to ours."""
        total = 0.0
        marker = f" {self.db_name} ".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmdline.startswith(b"postgres:") and marker in cmdline:
                total += proc_cpu_seconds(int(entry.name))
        return total

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        if self.keep:
            print(f"kept database {self.db_name} and {self.workdir}", file=sys.stderr)
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))
        shutil.rmtree(self.workdir, ignore_errors=True)


class CpuMeter:
    """CPU seconds used by a set of processes (and this client, and the catalog backends)
    between ``start()`` and ``stop()``; reported as % of one core."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.begin: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        sample = {p.name: p.cpu_seconds() for p in self.cluster.procs}
        times = os.times()
        sample["bench client"] = times.user + times.system
        sample["postgres"] = self.cluster.postgres_cpu_seconds()
        return sample

    def start(self) -> None:
        self.begin = self._sample()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        self.wall = time.perf_counter() - self._t0
        self.used = {k: end[k] - self.begin.get(k, 0.0) for k in end}
        return {k: 100 * v / self.wall for k, v in self.used.items()} if self.wall else {}


# --- drop the OS page cache (cold reads) ---------------------------------------------------------


def drop_page_cache() -> bool:
    """Ask the kernel to drop clean page-cache pages; False when not permitted (not root, or a
    container with a read-only /proc/sys)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


# --- machine facts -------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=HERE, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE, timeout=10, check=False).stdout.strip()
    except OSError:
        return "unknown"
    return (out.stdout.strip() or "unknown") + (" (dirty)" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kb = int(line.split()[1])
    return f"{kb / 1024 / 1024:.1f} GiB"


def machine_info(admin_dsn: str) -> list[tuple[str, str]]:
    versions = []
    for package in ("duckmesh", "duckdb", "pyarrow", "psycopg", "fastapi", "uvicorn", "pydantic", "orjson", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    rows = [
        ("commit", git_commit()),
        ("CPU", f"{_cpu_model()} × {os.cpu_count()} logical CPUs"),
        ("memory", _memory_gib()),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", ", ".join(versions)),
    ]
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            settings = conn.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'wal_level')"
                " ORDER BY name"
            ).fetchall()
        rows.append(("PostgreSQL", f"{version[0] if version else '?'} on {LOOPBACK} (shared with other users of the machine)"))
        rows.append(("PostgreSQL settings", ", ".join(f"{n}={s}{u or ''}" for n, s, u in settings)))
    except psycopg.Error as exc:
        rows.append(("PostgreSQL", f"unknown ({type(exc).__name__})"))
    with contextlib.suppress(OSError):
        rows.append(("load average at start", " ".join(Path("/proc/loadavg").read_text().split()[:3])))
    return rows
