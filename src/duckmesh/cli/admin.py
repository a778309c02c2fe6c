"""Catalog commands: they talk to the catalog database directly (DUCKMESH_CATALOG_DSN or the
embedded PostgreSQL under DUCKMESH_STATE_DIR), never to a server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from duckmesh import __version__
from duckmesh.bus import operations
from duckmesh.catalog import audit, keys, maintenance, migrate, read_only, tenants
from duckmesh.catalog.db import AsyncConn, CatalogPool
from duckmesh.cli.runtime import (
    bad_file_lines,
    build_maintenance_service,
    catalog_dsn,
    cli_errors,
    fail,
    load_settings,
)
from duckmesh.config import Settings, parse_duration
from duckmesh.domain import Role, TenantId
from duckmesh.errors import IntegrityCheckFailed
from duckmesh.maintenance import backup, drill
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
leases_app = typer.Typer(
    help="Leases held by workers: coordinators' ingest claims, compactors' job leases.", invoke_without_command=True,
)
read_only_app = typer.Typer(
    help="Emergency read-only mode: ingest, backfills, table changes and replays answer 503 READ_ONLY while"
         " queries are served. --global (every tenant) is set only here; a tenant's ops_admin can also switch"
         " its own tenant over HTTP (PUT /v1/read-only).",
    no_args_is_help=True,
)

TenantOpt = Annotated[str, typer.Option(help="tenant name")]

CLI_CONNECT_SECONDS = 5.0  # a one-shot command says the catalog is unreachable soon (a server waits longer)


def _cli_pool(settings: Settings, size: int) -> CatalogPool:
    return CatalogPool(catalog_dsn(settings), max_size=size, name="duckmesh-cli", open_timeout=CLI_CONNECT_SECONDS)


def _run_catalog(job: Callable[[AsyncConn], Awaitable[T]]) -> T:
    settings = load_settings("cli")

    async def main() -> T:
        async with _cli_pool(settings, 2) as pool, \
                pool.connection() as conn:
            return await job(conn)

    with cli_errors():
        return asyncio.run(main())


def _run_maintenance(job: Callable[[CatalogPool, MaintenanceService], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    settings = load_settings("cli")

    async def main() -> dict[str, Any]:
        async with _cli_pool(settings, 4) as pool:
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
        async with _cli_pool(settings, 4) as pool:
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


def _lease_line(kind: str, row: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, **row}, default=str)


@leases_app.callback()
def leases_list(
    ctx: typer.Context, tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
) -> None:
    """List every lease (one JSON object per line): owner, tenant, what it holds, until when, expired."""
    if ctx.invoked_subcommand is not None:
        return

    async def listing(pool: CatalogPool, _: MaintenanceService) -> dict[str, Any]:
        tenant_id = await _tenant_id(pool, tenant) if tenant else None
        async with pool.connection() as conn:
            jobs = await maintenance.job_leases(conn, tenant_id)
        return {"ingest": await operations.ingest_leases(pool, tenant_id), "jobs": jobs}

    found = _run_maintenance(listing)
    for row in found["ingest"]:
        typer.echo(_lease_line("ingest", row))
    for row in found["jobs"]:
        typer.echo(_lease_line(row.pop("job"), row))


@leases_app.command("expire")
def leases_expire(owner: Annotated[str, typer.Option("--owner", help="the lease owner (from `duckmesh leases`)")]
                  ) -> None:
    """End every lease of OWNER now (a hung worker): its events and jobs go to the others (audited)."""

    async def expire(pool: CatalogPool, _: MaintenanceService) -> dict[str, Any]:
        events = await operations.expire_ingest_leases(pool, owner)
        async with pool.connection() as conn:
            jobs = await maintenance.expire_job_leases(conn, owner)
            await audit.record(conn, None, "leases.expire", "lease_owner", owner, {"events": events, "jobs": jobs},
                               actor="cli")
        return {"owner": owner, "events": events, "jobs": jobs}

    typer.echo(json.dumps(_run_maintenance(expire)))


GlobalOpt = Annotated[bool, typer.Option("--global", help="every tenant (the operator's switch)")]
ScopeTenantOpt = Annotated[str | None, typer.Option("--tenant", help="tenant name")]


async def _scope(conn: AsyncConn, tenant: str | None, every: bool) -> TenantId | None:
    if (tenant is None) == (not every):
        raise fail("error: give either --tenant NAME or --global", code=2)
    return None if every else (await tenants.get_tenant(conn, tenant or "")).tenant_id


@read_only_app.command("on")
def read_only_on(
    reason: Annotated[str, typer.Option("--reason", help="why (shown to refused writers and in the audit)")],
    tenant: ScopeTenantOpt = None, every: GlobalOpt = False,
) -> None:
    """Switch read-only mode on for one tenant or globally (JSON); API processes apply it at once."""

    async def switch(conn: AsyncConn) -> read_only.Switch:
        return await read_only.switch_on(conn, await _scope(conn, tenant, every), reason, read_only.Actor())

    typer.echo(json.dumps(_run_catalog(switch).to_json()))


@read_only_app.command("off")
def read_only_off(tenant: ScopeTenantOpt = None, every: GlobalOpt = False) -> None:
    """Switch read-only mode off for one tenant or globally (JSON: the switch that was on, or null)."""

    async def switch(conn: AsyncConn) -> read_only.Switch | None:
        return await read_only.switch_off(conn, await _scope(conn, tenant, every), read_only.Actor())

    ended = _run_catalog(switch)
    typer.echo(json.dumps(ended.to_json() if ended else None))


@read_only_app.command("status")
def read_only_status() -> None:
    """Every switch that is on, one JSON object per line (nothing: the service is read-write)."""
    state = _run_catalog(read_only.load)
    for switch in ([state.global_switch] if state.global_switch else []) + list(state.tenants.values()):
        typer.echo(json.dumps(switch.to_json()))


def backup_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="a new (or empty) directory for the backup")],
    method: Annotated[backup.Method, typer.Option("--method", help="auto: pg_dump when a suitable one exists"
                                                  " (on PATH or bundled with pgserver), else the logical export")]
    = backup.Method.AUTO,
) -> None:
    """Back up the catalog with a manifest of every retained data file (exit 1: a file is bad).

    The catalog is read at one instant (pg_dump, else a logical export); each file's size and SHA-256
    are read back from the object store. Missing or altered files are listed on stderr."""
    settings = load_settings("cli")
    with cli_errors():
        manifest = backup.create_backup(catalog_dsn(settings), open_object_store(settings), output, method,
                                        __version__)
    for problem in manifest["problems"]:
        typer.echo(f"bad file {problem['path']} (file {problem['file_id']}): {problem['problem']}", err=True)
    typer.echo(json.dumps({"backup": str(output), "method": manifest["catalog"]["method"],
                           "tool": manifest["catalog"]["tool"], "problems": len(manifest["problems"]),
                           **manifest["totals"]}))
    if manifest["problems"]:
        raise typer.Exit(1)


def restore_drill_command(
    directory: Annotated[Path, typer.Argument(help="a backup directory (duckmesh backup --output)")],
    scratch_dsn: Annotated[str | None, typer.Option("--scratch-dsn", help="a server where the drill may create"
                                                    " and drop its scratch database [default: the catalog's]")]
    = None,
    deep: Annotated[bool, typer.Option("--deep", help="integrity also re-reads content and row counts")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="keep the scratch database (its DSN is printed)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Restore a backup into a scratch database and check it (exit 1 unless every check passes).

    Checks: the backup's files, the restore, schema version, row counts, relational consistency,
    the manifest against the restored catalog, integrity against the object store, object hashes."""
    settings = load_settings("cli")
    with cli_errors():
        report = drill.restore_drill(directory, scratch_dsn or catalog_dsn(settings), open_object_store(settings),
                                      deep=deep, keep=keep)
    if as_json:
        typer.echo(json.dumps(report.to_json(), default=str))
    else:
        for check in report.checks:
            mark = "PASS" if check.passed else "FAIL"
            typer.echo(f"{mark}  {check.name} ({check.seconds:.2f} s): {json.dumps(check.detail, default=str)}")
        if report.kept and report.scratch_database:
            typer.echo(f"scratch database kept: {report.scratch_database}")
        typer.echo(f"restore drill {'passed' if report.passed else 'FAILED'} in {report.seconds:.1f} s")
    if not report.passed:
        raise typer.Exit(1)


def restore_command(
    directory: Annotated[Path, typer.Argument(help="a backup directory (check it first: duckmesh restore-drill)")],
    target_dsn: Annotated[str, typer.Option("--target-dsn", help="an EMPTY database to restore the catalog into")],
    create: Annotated[bool, typer.Option("--create", help="create the target database first (connecting to the"
                                                          " server's `postgres` database)")] = False,
) -> None:
    """Restore a backup's catalog into an empty database.

    Then point DUCKMESH_CATALOG_DSN at it and start the processes (docs/runbooks/restore.md)."""
    load_settings("cli")
    with cli_errors():
        manifest = backup.load_manifest(directory)
        if create:
            backup.create_database(target_dsn)
        backup.restore_catalog(directory, target_dsn, manifest)
    typer.echo(json.dumps({"restored": str(directory), "method": manifest["catalog"]["method"],
                           "snapshot_at": manifest["catalog"]["snapshot_at"],
                           "rows": sum(manifest["catalog"]["row_counts"].values())}))


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
                      (compaction_app, "compaction"), (retention_app, "retention"), (integrity_app, "integrity"),
                      (leases_app, "leases"), (read_only_app, "read-only")):
        app.add_typer(sub, name=name, rich_help_panel=panel)
    for command, name in ((backup_command, "backup"), (restore_drill_command, "restore-drill"),
                          (restore_command, "restore")):
        app.command(name, rich_help_panel=panel)(command)
