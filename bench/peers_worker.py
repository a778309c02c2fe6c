"""One writer of the peers section, run by the peers' own interpreter (bench/.venv-peers).

    python peers_worker.py versions
    python peers_worker.py setup  FORMAT --target T [--catalog DSN]
    python peers_worker.py write  FORMAT --target T [--catalog DSN] --first N --rows N --batch N --start-at EPOCH

``write`` builds its rows (bench/data.py ``peer_table``) and connects before ``--start-at`` (a
wall-clock time shared by every writer of a run), then commits one batch at a time and prints
one JSON line: the start and end (epoch seconds) of every commit and the errors it met.
FORMAT is ``ducklake`` (DuckDB's DuckLake extension, catalog in PostgreSQL, data files under
``--target``) or ``delta`` (delta-rs, a Delta table at ``--target``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
from data import EVENTS_SCHEMA, PEER_EXTRA, peer_table

SCHEMA = pa.schema([*EVENTS_SCHEMA, *(pa.field(n, t) for n, t in PEER_EXTRA)])
DUCKDB_TYPES = {"id": "BIGINT", "user_id": "BIGINT", "kind": "VARCHAR", "amount": "DECIMAL(12,2)",
                "at": "TIMESTAMPTZ", "op": "VARCHAR", "event_time": "TIMESTAMPTZ"}


def _ducklake(catalog: str, target: str) -> Any:
    import duckdb

    extensions = Path(duckdb.__file__).resolve().parent.parent / "duckdb_ext" / "extensions"
    con = duckdb.connect(config={"extension_directory": str(extensions), "autoinstall_known_extensions": False})
    con.execute("LOAD postgres")
    con.execute("LOAD ducklake")
    con.execute(f"ATTACH 'ducklake:postgres:{catalog}' AS lake (DATA_PATH '{target}/')")
    return con


def setup(fmt: str, target: str, catalog: str) -> None:
    if fmt == "ducklake":
        con = _ducklake(catalog, target)
        columns = ", ".join(f'"{name}" {DUCKDB_TYPES[name]}' for name in SCHEMA.names)
        con.execute(f"CREATE TABLE lake.events ({columns})")
        con.close()
    else:
        from deltalake import write_deltalake

        write_deltalake(target, SCHEMA.empty_table(), mode="overwrite")


def write(fmt: str, target: str, catalog: str, first: int, rows: int, batch: int, start_at: float) -> dict[str, Any]:
    data = peer_table(first, rows).cast(SCHEMA)
    batches = [data.slice(offset, batch) for offset in range(0, rows, batch)]
    commits: list[tuple[float, float]] = []
    errors: list[str] = []
    if fmt == "ducklake":
        con = _ducklake(catalog, target)

        def commit(part: pa.Table) -> None:
            con.register("part", part)
            con.execute("INSERT INTO lake.events SELECT * FROM part")
            con.unregister("part")
    else:
        from deltalake import write_deltalake

        def commit(part: pa.Table) -> None:
            write_deltalake(target, part, mode="append")

    time.sleep(max(0.0, start_at - time.time()))
    for part in batches:
        started = time.time()
        try:
            commit(part)
        except Exception as exc:  # a failed commit is a result of the peer, not of this script
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        commits.append((started, time.time()))
    return {"commits": commits, "rows": rows - batch * len(errors), "errors": errors}


def versions() -> dict[str, str]:
    found = {}
    for package in ("duckdb", "duckdb-ext-ducklake", "duckdb-ext-postgres", "deltalake", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("versions", "setup", "write"))
    parser.add_argument("format", nargs="?", choices=("ducklake", "delta"))
    parser.add_argument("--target", default="")
    parser.add_argument("--catalog", default="")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.command == "versions":
        print(json.dumps(versions()))
    elif args.command == "setup":
        setup(args.format, args.target, args.catalog)
    else:
        print(json.dumps(write(args.format, args.target, args.catalog, args.first, args.rows, args.batch,
                               args.start_at)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
