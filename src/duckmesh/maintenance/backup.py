"""Backup, restore and the restore drill (ADR 0013).

A backup is a directory: the catalog as of one instant (a pg_dump archive, or a logical export of
every table when no suitable pg_dump exists) and ``manifest.json``, written last, naming what the
catalog holds (row counts, migrations, sequences) and every data file a retained snapshot
references, with its size and SHA-256 read back from the object store. Objects are not copied: the
object store keeps them (its versioning or replication is the copy); the manifest proves which
ones the catalog needs and what they must contain.

Restoring (``restore_catalog``) needs an empty database; the drill (``drill.py``) restores into a
scratch one and checks it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from duckmesh.catalog import backup as catalog_backup
from duckmesh.catalog import migrate, pgtools
from duckmesh.errors import BackupFailed, DuckMeshError, ObjectNotFound
from duckmesh.storage.base import ObjectStore

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "duckmesh-backup"
FORMAT_VERSION = 1
PG_ARCHIVE = "catalog.pgdump"
LOGICAL_DIR = "catalog"
HASH_WORKERS = 4


class Method(StrEnum):
    AUTO = "auto"
    PG_DUMP = "pg_dump"
    LOGICAL = "logical"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_object(store: ObjectStore, path: str) -> dict[str, Any]:
    try:
        data = store.get(path)
    except ObjectNotFound:
        return {"path": path, "problem": "missing"}
    except DuckMeshError as exc:
        return {"path": path, "problem": f"unreadable: {exc.error_code}"}
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def hash_objects(store: ObjectStore, paths: Iterable[str], workers: int = HASH_WORKERS) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each object as the store returns it now (or the problem reading it)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dm-hash") as pool:
        return {found["path"]: found for found in pool.map(lambda p: _hash_object(store, p), paths)}


def _object_entries(files: list[dict[str, Any]], hashed: dict[str, dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Manifest entries (what the store holds) and the problems against what the catalog says."""
    entries, problems = [], []
    for f in files:
        found = hashed[f["path"]]
        entry = {"path": f["path"], "tenant_id": f["tenant_id"], "file_id": f["file_id"],
                 "bytes": found.get("bytes"), "sha256": found.get("sha256")}
        entries.append(entry)
        problem = found.get("problem")
        if problem is None and found["bytes"] != f["file_size_bytes"]:
            problem = f"size {found['bytes']} != catalog {f['file_size_bytes']}"
        elif problem is None and found["sha256"] != f["content_hash"]:
            problem = "content hash differs from the catalog's"
        if problem is not None:
            problems.append({"path": f["path"], "file_id": f["file_id"], "problem": problem})
    return entries, problems


def _prepare(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise BackupFailed(f"{directory} is not empty: give a new directory for each backup", directory=str(directory))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _choose_tool(method: Method, server_major: int) -> pgtools.PgTool | None:
    if method is Method.LOGICAL:
        return None
    tool = pgtools.find("pg_dump", server_major)
    if tool is None and method is Method.PG_DUMP:
        raise BackupFailed(f"no pg_dump of version {server_major} or newer on PATH or bundled with pgserver;"
                           " use --method logical (or auto)")
    return tool


def _dump_catalog(read: catalog_backup.ConsistentRead, dsn: str, directory: Path,
                  tool: pgtools.PgTool | None, tables: list[catalog_backup.TableDef]) -> list[dict[str, Any]]:
    """The catalog files of the backup (their names, sizes, hashes)."""
    if tool is not None:
        target = directory / PG_ARCHIVE
        pgtools.dump(tool, dsn, read.snapshot, target)
        written = [target]
    else:
        (directory / LOGICAL_DIR).mkdir(mode=0o700)
        written = []
        for table in tables:
            target = directory / LOGICAL_DIR / f"{table.name}.copy.gz"
            catalog_backup.export_table(read.conn, table, target)
            written.append(target)
    return [{"path": p.relative_to(directory).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256_file(p)}
            for p in written]


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    temp = directory / f".{MANIFEST}.tmp"
    temp.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    os.replace(temp, directory / MANIFEST)


def create_backup(dsn: str, store: ObjectStore, directory: Path, method: Method = Method.AUTO,
                  version: str = "") -> dict[str, Any]:
    """Write a backup of the catalog at ``dsn`` into ``directory`` (new or empty); the manifest.
    Object problems (missing, altered) are recorded in ``problems``: the backup is still written."""
    started = time.monotonic()
    _prepare(directory)
    with catalog_backup.consistent_read(dsn) as read:
        tool = _choose_tool(method, catalog_backup.server_major(read.conn))
        tables = catalog_backup.tables(read.conn)
        catalog: dict[str, Any] = {
            "method": Method.PG_DUMP.value if tool else Method.LOGICAL.value,
            "tool": tool.describe() if tool else None, "tool_major": tool.major if tool else None,
            "server_version": catalog_backup.server_version(read.conn), "snapshot_at": read.at.isoformat(),
            "migrations": catalog_backup.migrations(read.conn),
            "tables": [{"name": t.name, "columns": list(t.columns)} for t in tables],
            "row_counts": catalog_backup.row_counts(read.conn, [t.name for t in tables]),
            "sequences": catalog_backup.sequences(read.conn),
        }
        files = catalog_backup.retained_objects(read.conn)
        catalog["files"] = _dump_catalog(read, dsn, directory, tool, tables)
    dumped = time.monotonic()
    entries, problems = _object_entries(files, hash_objects(store, [f["path"] for f in files]))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "duckmesh_version": version,
        "object_store": store.url, "catalog": catalog, "objects": entries, "problems": problems,
        "totals": {"objects": len(entries), "object_bytes": sum(e["bytes"] or 0 for e in entries),
                   "catalog_bytes": sum(f["bytes"] for f in catalog["files"]),
                   "catalog_seconds": round(dumped - started, 3),
                   "seconds": round(time.monotonic() - started, 3)},
    }
    _write_manifest(directory, manifest)
    log.info("backup_written", extra={"directory": str(directory), "objects": len(entries),
                                      "problems": len(problems), "method": catalog["method"]})
    return manifest


def load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupFailed(f"{directory} has no {MANIFEST}: not a backup, or an interrupted one") from None
    except ValueError:
        raise BackupFailed(f"{path} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupFailed(f"{path} is not a DuckMesh backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupFailed(f"backup format version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def verify_catalog_files(directory: Path, manifest: dict[str, Any]) -> None:
    for entry in manifest["catalog"]["files"]:
        path = directory / entry["path"]
        if not path.is_file():
            raise BackupFailed(f"backup file {entry['path']} is missing")
        if path.stat().st_size != entry["bytes"] or _sha256_file(path) != entry["sha256"]:
            raise BackupFailed(f"backup file {entry['path']} differs from the manifest (altered or truncated)")


def _import_logical(directory: Path, manifest: dict[str, Any], dsn: str) -> None:
    """Schema from this version's migrations (exactly the backup's), then every table's rows in
    one transaction (schema_migrations too: its original dates), then the sequences."""
    wanted = [int(v) for v in manifest["catalog"]["migrations"]]
    known = {m.version for m in migrate.available()}
    if not set(wanted) <= known:
        raise BackupFailed(f"the backup's catalog has migrations {sorted(set(wanted) - known)} this DuckMesh"
                           " does not know: restore it with a newer DuckMesh")
    migrate.upgrade(dsn, max(wanted, default=0))
    tables = [catalog_backup.TableDef(t["name"], tuple(t["columns"])) for t in manifest["catalog"]["tables"]]
    with catalog_backup.connect(dsn, "duckmesh-restore") as conn:
        applied = catalog_backup.migrations(conn)
        if applied != wanted:
            raise BackupFailed(f"migrations {applied} cannot match the backup's {wanted}")
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t.name) for t in tables)))
            for table in tables:
                catalog_backup.import_table(conn, table, directory / LOGICAL_DIR / f"{table.name}.copy.gz")
            catalog_backup.set_sequences(conn, manifest["catalog"]["sequences"])


def restore_catalog(directory: Path, dsn: str, manifest: dict[str, Any] | None = None) -> None:
    """Restore the backup's catalog into the empty database ``dsn``."""
    manifest = manifest or load_manifest(directory)
    verify_catalog_files(directory, manifest)
    with catalog_backup.connect(dsn, "duckmesh-restore") as conn:
        if not catalog_backup.is_empty(conn):
            raise BackupFailed("the target database is not empty: restore into a new, empty database")
    catalog = manifest["catalog"]
    if catalog["method"] == Method.LOGICAL.value:
        _import_logical(directory, manifest, dsn)
        return
    tool = pgtools.find("pg_restore", int(catalog["tool_major"]))
    if tool is None:
        raise BackupFailed(f"this backup was written by {catalog['tool']}: restoring it needs pg_restore"
                           f" {catalog['tool_major']} or newer (on PATH, or the one bundled with pgserver)")
    pgtools.restore(tool, directory / PG_ARCHIVE, dsn)

def with_db(dsn: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})

def admin_execute(dsn: str, statement: sql.Composed) -> None:
    with catalog_backup.connect(dsn, "duckmesh-restore-drill") as conn:
        conn.execute(statement)

def create_database(dsn: str) -> None:
    """Create the database ``dsn`` names, through the same server's ``postgres`` database."""
    name = str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "")
    if not name:
        raise BackupFailed("the target DSN names no database")
    try:
        admin_execute(with_db(dsn, "postgres"), sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise BackupFailed(f"cannot create database {name!r}: {str(exc).strip().splitlines()[0]}") from None
