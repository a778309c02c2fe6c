"""The restore drill (ADR 0013): restore a backup into a scratch database and check it.

Checks, each recorded with its detail and duration: the manifest, problems the backup already
recorded, the scratch database, the restore, schema version, per-table row counts, relational
consistency, the manifest against the restored catalog, the integrity validator over every tenant
against the object store, and every object's hash. The drill passes only if every check does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from duckmesh.catalog import backup as catalog_backup
from duckmesh.catalog.db import CatalogPool
from duckmesh.domain import TenantId
from duckmesh.errors import BackupFailed, DuckMeshError, IntegrityCheckFailed
from duckmesh.maintenance.backup import admin_execute, hash_objects, load_manifest, restore_catalog, with_db
from duckmesh.maintenance.integrity import IntegrityValidator
from duckmesh.storage.base import ObjectStore


@dataclass
class Check:
    name: str
    passed: bool
    detail: Any = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "passed": self.passed, "detail": self.detail, "seconds": round(self.seconds, 3)}


@dataclass
class DrillReport:
    backup: str
    checks: list[Check] = field(default_factory=list)
    scratch_database: str | None = None
    kept: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"backup": self.backup, "passed": self.passed, "seconds": round(self.seconds, 3),
                "scratch_database": self.scratch_database if self.kept else None,
                "checks": [c.to_json() for c in self.checks]}

    def run(self, name: str, step: Callable[[], Any]) -> bool:
        """Run one check; an exception is its failure (its message the detail)."""
        started = time.monotonic()
        try:
            outcome = step()
            passed, detail = outcome if isinstance(outcome, tuple) else (True, outcome)
        except DuckMeshError as exc:
            passed, detail = False, f"{exc.error_code}: {exc.message}"
        except (psycopg.Error, OSError) as exc:
            passed, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        self.checks.append(Check(name, passed, detail, time.monotonic() - started))
        return passed








def _compare_counts(expected: dict[str, int], found: dict[str, int]) -> tuple[bool, Any]:
    differing = {name: {"backup": expected.get(name), "restored": found.get(name)}
                 for name in sorted(set(expected) | set(found)) if expected.get(name) != found.get(name)}
    return not differing, differing or {"tables": len(found), "rows": sum(found.values())}


def _compare_manifest(manifest: dict[str, Any], restored: list[dict[str, Any]]) -> tuple[bool, Any]:
    """The manifest names exactly the files the restored catalog's retained snapshots reference,
    with the sizes and hashes the catalog records."""
    listed = {o["path"]: o for o in manifest["objects"]}
    catalog = {f["path"]: f for f in restored}
    problems = [f"{p}: in the catalog, not in the manifest" for p in sorted(set(catalog) - set(listed))]
    problems += [f"{p}: in the manifest, not in the catalog" for p in sorted(set(listed) - set(catalog))]
    for path in sorted(set(listed) & set(catalog)):
        entry, row = listed[path], catalog[path]
        if entry["bytes"] is not None and (entry["bytes"], entry["sha256"]) != (row["file_size_bytes"],
                                                                               row["content_hash"]):
            problems.append(f"{path}: manifest size/hash differ from the catalog's")
    return not problems, problems or {"files": len(catalog)}


def _compare_objects(manifest: dict[str, Any], store: ObjectStore) -> tuple[bool, Any]:
    """Every object of the manifest is in the store, byte for byte (size and SHA-256)."""
    listed = manifest["objects"]
    found = hash_objects(store, [o["path"] for o in listed])
    problems = []
    for entry in listed:
        now = found[entry["path"]]
        if "problem" in now:
            problems.append({"path": entry["path"], "problem": now["problem"]})
        elif (now["bytes"], now["sha256"]) != (entry["bytes"], entry["sha256"]):
            problems.append({"path": entry["path"], "problem": "content differs from the manifest"})
    checked = {"objects": len(listed), "bytes": sum(o["bytes"] or 0 for o in listed)}
    return not problems, problems or checked


async def _integrity(dsn: str, store: ObjectStore, deep: bool) -> tuple[bool, Any]:
    """The integrity validator over every tenant of the restored catalog."""
    async with CatalogPool(dsn, max_size=2, name="duckmesh-restore-drill") as pool:
        validator = IntegrityValidator(pool, store, "restore-drill")
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT tenant_id FROM tenant ORDER BY tenant_id")
            tenants = [TenantId(r["tenant_id"]) for r in await cur.fetchall()]
        failures: list[Any] = []
        checked = 0
        for tenant_id in tenants:
            try:
                checked += int((await validator.run(tenant_id, deep))["files_checked"])
            except IntegrityCheckFailed as exc:
                failures += [{"tenant_id": tenant_id, **bad} for bad in exc.context.get("bad_files", [])]
                failures += [{"tenant_id": tenant_id, "dangling": d} for d in exc.context.get("dangling_rows", [])]
    return not failures, failures or {"tenants": len(tenants), "files_checked": checked, "deep": deep}


def _restored_checks(report: DrillReport, manifest: dict[str, Any], scratch: str) -> None:
    catalog = manifest["catalog"]
    with catalog_backup.connect(scratch, "duckmesh-restore-drill") as conn:
        report.run("schema version", lambda: (catalog_backup.migrations(conn) == catalog["migrations"],
                                              {"migrations": catalog_backup.migrations(conn)}))
        report.run("row counts", lambda: _compare_counts(
            catalog["row_counts"], catalog_backup.row_counts(conn, list(catalog["row_counts"]))))

        def relations() -> tuple[bool, Any]:
            found = catalog_backup.consistency(conn)
            bad = {name: n for name, n in found.items() if n}
            return not bad, bad or {"checks": len(found)}

        report.run("relational consistency", relations)
        report.run("manifest matches the restored catalog",
                   lambda: _compare_manifest(manifest, catalog_backup.retained_objects(conn)))


def restore_drill(directory: Path, admin_dsn: str, store: ObjectStore, *, deep: bool = False,
                  keep: bool = False) -> DrillReport:
    """Restore the backup into a scratch database on ``admin_dsn``'s server and check it."""
    started = time.monotonic()
    report = DrillReport(str(directory))
    try:
        manifest = load_manifest(directory)
    except BackupFailed as exc:
        report.checks.append(Check("manifest", False, exc.message))
        report.seconds = time.monotonic() - started
        return report
    report.checks.append(Check("manifest", True, {"objects": len(manifest["objects"]),
                                                  "method": manifest["catalog"]["method"]}))
    report.run("backup problems", lambda: (not manifest["problems"], manifest["problems"] or None))
    name = f"duckmesh_drill_{uuid.uuid4().hex[:12]}"
    scratch = with_db(admin_dsn, name)
    report.scratch_database = scratch

    def create() -> dict[str, str]:
        admin_execute(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return {"database": name}

    def restore() -> dict[str, str]:
        restore_catalog(directory, scratch, manifest)
        return {"method": manifest["catalog"]["method"]}

    if not report.run("scratch database", create):
        report.seconds = time.monotonic() - started
        return report
    try:
        if report.run("restore", restore):
            _restored_checks(report, manifest, scratch)
            report.run("integrity", lambda: asyncio.run(_integrity(scratch, store, deep)))
        report.run("object hashes", lambda: _compare_objects(manifest, store))
    finally:
        report.kept = keep
        if not keep:
            admin_execute(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    report.seconds = time.monotonic() - started
    return report
