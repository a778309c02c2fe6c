"""Shared fixtures: a real PostgreSQL for every test, cloned from a migrated template.

DSN: ``DUCKMESH_TEST_DSN`` when set, else the local server on 127.0.0.1:5432 when it answers,
else an embedded server (pgserver) under a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import migrate, tenants
from duckmesh.catalog.db import CatalogPool
from duckmesh.catalog.notify import INGEST_CHANNEL, Listener
from duckmesh.cli.runtime import build_maintenance_service, build_query_service
from duckmesh.config import Settings
from duckmesh.coordinator.worker import Coordinator, CoordinatorConfig
from duckmesh.domain import ALL_ROLES, Role
from duckmesh.ingest.backfill import BackfillService
from duckmesh.ingest.service import IngestService
from duckmesh.query.barrier import VisibilityBarrier
from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.retry import RetryingObjectStore

# The test session must not pick up a developer's DUCKMESH_* settings.
_TEST_DSN = os.environ.get("DUCKMESH_TEST_DSN")
for _name in [n for n in os.environ if n.startswith("DUCKMESH_")]:
    del os.environ[_name]

_LOCAL_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The OpenAPI fuzz's counts (tests/integration/test_fuzz_openapi.py), when it ran."""
    fuzz = sys.modules.get("tests.integration.test_fuzz_openapi")
    for line in getattr(fuzz, "REPORT", []):
        terminalreporter.write_line(line)


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _TEST_DSN:
        yield _TEST_DSN
        return
    for dsn in _LOCAL_DSNS:
        if _answers(dsn):
            yield dsn
            return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri("postgres")


def _with_db(dsn: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> str:
    """A database migrated to the latest version, named after the migrations' content."""
    digest = hashlib.sha256("".join(m.up for m in migrate.available()).encode()).hexdigest()[:12]
    name = f"duckmesh_tpl_{digest}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")
        try:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                building = f"{name}_build_{os.getpid()}"
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(building)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
                migrate.upgrade(_with_db(admin_dsn, building))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(building), sql.Identifier(name)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(4242)")
    return name


@pytest.fixture
def dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated catalog database for one test."""
    name = f"dmtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))
    yield _with_db(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A database with no schema at all (for migration tests)."""
    name = f"dmempty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_db(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[CatalogPool]:
    async with CatalogPool(dsn, max_size=20) as opened:
        yield opened


@pytest.fixture
async def listener(dsn: str) -> AsyncIterator[Listener]:
    started = Listener(dsn, (INGEST_CHANNEL,))
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def bus(pool: CatalogPool) -> PostgresBus:
    return PostgresBus(pool)


@pytest.fixture
def object_dir(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def store(object_dir: Path) -> RetryingObjectStore:
    return RetryingObjectStore(LocalObjectStore(object_dir.as_uri()), attempts=3, base_delay=0.001)


def make_settings(**overrides: Any) -> Settings:
    return Settings(**{"profile": "test", "catalog_dsn": "postgresql://unused", **overrides})


@pytest.fixture
def settings(object_dir: Path, dsn: str) -> Settings:
    # scratch (backfill bodies, compaction) under the test's own folder, never the working directory
    return make_settings(object_store_url=object_dir.as_uri(), catalog_dsn=dsn, state_dir=object_dir.parent / "state")


@pytest.fixture
async def barrier(pool: CatalogPool, dsn: str) -> AsyncIterator[VisibilityBarrier]:
    async with VisibilityBarrier(pool, dsn, poll_interval=0.5) as started:
        yield started


@pytest.fixture
async def app_context(
    settings: Settings, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore, barrier: VisibilityBarrier,
    tmp_path: Path, dsn: str,
) -> AsyncIterator[AppContext]:
    ingest = IngestService(
        pool, bus, max_records=settings.max_records_per_request, max_payload_bytes=settings.max_payload_bytes,
        wait_for_visibility=barrier.wait_for_ingest,
    )
    settings = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    query = build_query_service(settings, pool, store, barrier)
    maintenance = build_maintenance_service(settings, pool, store)
    keys = tenants.VerifiedKeys()
    revocations = Listener(dsn, (tenants.KEYS_CHANNEL,), on_notify=keys.on_notify, on_connect=keys.clear)
    await revocations.start()
    yield AppContext(settings, pool, bus, store, ingest, query, maintenance, BackfillService(pool, store), keys=keys)
    await revocations.stop()
    await query.close()  # its audit rows, its worker processes


@pytest.fixture
async def client(app_context: AppContext) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_context)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


KeyMaker = Callable[..., Any]


@pytest.fixture
def make_key(pool: CatalogPool) -> KeyMaker:
    """``await make_key("tenant", roles=[...])`` -> auth headers; creates the tenant if needed."""

    async def make(tenant: str = "acme", roles: list[Role] | None = None) -> dict[str, str]:
        async with pool.connection() as conn:
            found = await tenants.ensure_tenant(conn, tenant)
            _, secret = await tenants.create_key(conn, found.tenant_id, roles or list(ALL_ROLES))
        return {"Authorization": f"Bearer {secret}"}

    return make


REGION = "us-east-1"
DUMMY_SECRET = "testing"


class MotoServer:
    """moto's S3 on 127.0.0.1; ``stop`` and ``start`` again on the same port keep the buckets (moto's
    state lives in this process), which is how a test takes the endpoint down and back up."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def bucket(self, prefix: str = "dm") -> str:
        """A new, empty bucket."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=DUMMY_SECRET,
                     aws_secret_access_key=DUMMY_SECRET).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """An S3 endpoint (moto server) on 127.0.0.1 for the whole test session."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer) -> str:
    return moto_server.endpoint


@pytest.fixture
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and no shared config, so a developer's AWS setup never leaks in."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "BOTO_"))]:
        monkeypatch.delenv(name)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="duckmesh-test-") as path:
        yield Path(path)


QueryCtx = tuple[httpx.AsyncClient, dict[str, str], Coordinator]


@pytest.fixture
async def ctx(
    client: httpx.AsyncClient, make_key: KeyMaker, pool: CatalogPool, bus: PostgresBus, store: RetryingObjectStore
) -> QueryCtx:
    """An API client, all-roles headers of tenant "acme", and a coordinator to publish with."""
    headers = await make_key("acme")
    return client, headers, Coordinator(pool, bus, store, CoordinatorConfig(owner="c"))
