"""Catalog commands: they talk to the catalog database directly (DUCKMESH_CATALOG_DSN or the
embedded PostgreSQL under DUCKMESH_STATE_DIR), never to a server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from duckmesh.catalog import audit, keys, migrate, tenants
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.cli.runtime import (
    bad_file_lines,
    build_maintenance_service,
    catalog_dsn,
    cli_errors,
    fail,
    load_settings,
)
from duckmesh.config import parse_duration
from duckmesh.domain import Role, TenantId
from duckmesh.errors import IntegrityCheckFailed
from duckmesh.maintenance.service import MaintenanceService
from duckmesh.schema import parse_timestamp
from duckmesh.storage.factory import open_object_store

T = TypeVar("T")

migrate_app = typer.Typer(help="Catalog schema migrations.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
compaction_app = typer.Typer(help="Compaction of one tenant.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention and garbage collection.", no_args_is_help=True)
integrity_app = typer.Typer(help="Integrity validation.", no_args_is_help=True)

TenantOpt = Annotated[str, typer.Option(help="tenant name")]


def _run_catalog(job: Callable[[AsyncConn], Awaitable[T]]) -> T:
    settings = load_settings("cli")

    async def main() -> T:
        async with CatalogPool(catalog_dsn(settings), max_size=2, name="duckmesh-cli") as pool, \
                pool.connection() as conn:
            return await job(conn)

    with cli_errors():
        return asyncio.run(main())


def _run_maintenance(job: Callable[[CatalogPool, MaintenanceService], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    settings = load_settings("cli")

    async def main() -> dict[str, Any]:
        async with CatalogPool(catalog_dsn(settings), max_size=4, name="duckmesh-cli") as pool:
            service = build_maintenance_service(settings, pool, open_object_store(settings))
            return await job(pool, service)

    with cli_errors():
        return asyncio.run(main())


async def _tenant_id(pool: CatalogPool, name: str) -> TenantId:
    async with pool.connection() as conn:
        return (await tenants.get_tenant(conn, name)).tenant_id


@compaction_app.command("run")
def compaction_run(
    tenant: TenantOpt,
    table: Annotated[str | None, typer.Option(help="only this table")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, change nothing")] = False,
) -> None:
    """Compact small files of the tenant's tables now (JSON summary)."""

    async def job(pool: CatalogPool, service: MaintenanceService) -> dict[str, Any]:
        return await service.compact(await _tenant_id(pool, tenant), table, dry_run)

    typer.echo(json.dumps(_run_maintenance(job), default=str))


@retention_app.command("run")
def retention_run(
    tenant: TenantOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only, change nothing")] = False,
) -> None:
    """Expire snapshots, delete unreferenced files and orphans, clean the ingest bus (JSON summary)."""

    async def job(pool: CatalogPool, service: MaintenanceService) -> dict[str, Any]:
        return await service.retain(await _tenant_id(pool, tenant), dry_run)

    typer.echo(json.dumps(_run_maintenance(job), default=str))


@integrity_app.command("run")
def integrity_run(
    tenant: TenantOpt,
    deep: Annotated[bool, typer.Option("--deep", help="also verify content hashes and row counts")] = False,
) -> None:
    """Check every retained file against the object store; on failure list the bad files and exit 1."""
    settings = load_settings("cli")

    async def main() -> dict[str, Any]:
        async with CatalogPool(catalog_dsn(settings), max_size=4, name="duckmesh-cli") as pool:
            service = build_maintenance_service(settings, pool, open_object_store(settings))
            return await service.validate(await _tenant_id(pool, tenant), deep)

    with cli_errors():
        try:
            summary = asyncio.run(main())
        except IntegrityCheckFailed as exc:
            for line in bad_file_lines(exc.context):
                typer.echo(line, err=True)
            raise
    typer.echo(json.dumps(summary, default=str))


@migrate_app.command("up")
def migrate_up(target: Annotated[int | None, typer.Option(help="stop at this version")] = None) -> None:
    """Apply pending migrations (to the latest version, or up to --target)."""
    settings = load_settings("cli")
    with cli_errors():
        applied = migrate.upgrade(catalog_dsn(settings), target)
    typer.echo(f"applied: {applied or 'nothing (up to date)'}")


@migrate_app.command("down")
def migrate_down(
    target: Annotated[int, typer.Option(help="revert every migration above this version (0 = everything)")],
    yes: Annotated[bool, typer.Option("--yes", help="confirm: reverting drops catalog tables and their data")] = False,
) -> None:
    """Revert migrations above --target. Needs --yes, and refuses while DuckMesh servers are connected."""
    if not yes:
        raise fail(f"error: refusing to revert migrations above {target} without --yes (this drops catalog data)")
    settings = load_settings("cli")
    with cli_errors():
        dsn = catalog_dsn(settings)
        connected = migrate.connected_processes(dsn)
        if connected:
            names = ", ".join(f"{c['application_name']} (pid {c['pid']})" for c in connected)
            raise fail(f"error: refusing to revert migrations while DuckMesh processes are connected: {names}")
        reverted = migrate.downgrade(dsn, target)
    typer.echo(f"reverted: {reverted or 'nothing'}")


@migrate_app.command("status")
def migrate_status() -> None:
    """Current, latest, applied and pending versions (JSON)."""
    settings = load_settings("cli")
    with cli_errors():
        typer.echo(json.dumps(migrate.status(catalog_dsn(settings))))


@tenant_app.command("create")
def tenant_create(name: str) -> None:
    """Create a tenant (JSON)."""

    async def create(conn: AsyncConn) -> tenants.Tenant:
        created = await tenants.create_tenant(conn, name)
        await audit.record(conn, None, "tenant.create", "tenant", str(created.tenant_id), {"name": name},
                           tenant_id=created.tenant_id, actor="cli")
        return created

    tenant = _run_catalog(create)
    typer.echo(json.dumps({"tenant_id": tenant.tenant_id, "name": tenant.name}))


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    if expires_in and expires_at:
        raise fail("error: give --expires-in or --expires-at, not both")
    if expires_in:
        try:
            return datetime.now(UTC) + parse_duration(expires_in)
        except ValueError as exc:
            raise fail(f"error: --expires-in: {exc}") from None
    if expires_at:
        try:
            return parse_timestamp(expires_at)
        except ValueError as exc:
            raise fail(f"error: --expires-at: {exc}") from None
    return None


@key_app.command("create")
def key_create(
    tenant: TenantOpt,
    role: Annotated[list[Role], typer.Option(help="role (repeatable)")],
    expires_in: Annotated[str | None, typer.Option(help="expire after this long: 30d, 12h, 90 days")] = None,
    expires_at: Annotated[str | None, typer.Option(help="expire at this RFC 3339 time")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create an API key (the secret is shown once); audited as key.create by actor cli."""
    expiry = _expiry(expires_in, expires_at)

    async def create(conn: AsyncConn) -> tuple[tenants.ApiKey, str]:
        found = await tenants.get_tenant(conn, tenant)
        return await keys.create(conn, found.tenant_id, role, expires_at=expiry, actor="cli")

    key, secret = _run_catalog(create)
    out = {**key.to_json(), "key": secret}
    expiry_note = f"  expires: {out['expires_at']}" if key.expires_at else ""
    typer.echo(json.dumps(out) if as_json else
               f"key {key.key_id} (shown once): {secret}  roles: {out['roles']}{expiry_note}")


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke a key (every server refuses it from its next request); audited as key.revoke."""

    async def revoke(conn: AsyncConn) -> tenants.ApiKey:
        return await keys.revoke(conn, key_id, actor="cli")

    key = _run_catalog(revoke)
    typer.echo(json.dumps({"key_id": key.key_id, "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}))


@key_app.command("list")
def key_list(tenant: TenantOpt) -> None:
    """List keys (ids, roles, created/expiry/revoked/last-used dates; never secrets), one JSON object per line."""

    async def listing(conn: AsyncConn) -> list[tenants.ApiKey]:
        found = await tenants.get_tenant(conn, tenant)
        return await tenants.list_keys(conn, found.tenant_id)

    for key in _run_catalog(listing):
        typer.echo(json.dumps(key.to_json()))


def register(app: typer.Typer, panel: str) -> None:
    for sub, name in ((migrate_app, "migrate"), (tenant_app, "tenant"), (key_app, "key"),
                      (compaction_app, "compaction"), (retention_app, "retention"), (integrity_app, "integrity")):
        app.add_typer(sub, name=name, rich_help_panel=panel)
