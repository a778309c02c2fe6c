"""Physical ceilings on this machine, with the same rows: PostgreSQL COPY (the bus), DuckDB writing
Parquet (materialization), DuckDB reading the same Parquet files (query, see ``RawDuckDB``)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import psycopg
from context import Bench
from data import EVENT_COLUMNS, USER_COLUMNS, event_json, events_csv, events_table
from narrative import text
from report import count, median, ratio, section, stat, table

DUCKDB_CONFIG = {"threads": 2, "memory_limit": "1GB"}
USER_COLUMN_NAMES = {"events": [c["name"] for c in EVENT_COLUMNS], "users": [c["name"] for c in USER_COLUMNS]}
_CHUNK = 1 << 20


class RawDuckDB:
    """DuckDB in this process over exactly the files DuckMesh reads, same limits as the api's engine."""

    def __init__(self, tables: dict[str, list[str]]) -> None:
        self.con = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
        for name, paths in tables.items():
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            columns = ", ".join(f'"{c}"' for c in USER_COLUMN_NAMES[name])
            self.con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM read_parquet([{files}],"
                             " hive_partitioning = false)")

    def run(self, sql: str) -> float:
        started = time.perf_counter()
        self.con.sql(sql).to_arrow_table()
        return time.perf_counter() - started

    def close(self) -> None:
        self.con.close()

    @staticmethod
    def copy(paths: list[str], out_dir: Path, sort: bool) -> float:
        """Seconds to rewrite ``paths`` as one zstd Parquet output (optionally sorted like compaction)."""
        from duckmesh.domain import EVENT_TIME_COLUMN, TOKEN_COLUMN

        files = ", ".join("'" + p + "'" for p in paths)
        order = f" ORDER BY {EVENT_TIME_COLUMN}, {TOKEN_COLUMN}" if sort else ""
        out_dir.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(":memory:", config=DUCKDB_CONFIG) as con:
            started = time.perf_counter()
            con.execute(f"COPY (SELECT * FROM read_parquet([{files}], hive_partitioning = false){order})"
                        f" TO '{out_dir / 'out.parquet'}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)")
            seconds = time.perf_counter() - started
        shutil.rmtree(out_dir, ignore_errors=True)
        return seconds


def _copy(dsn: str, create: str, copy: str, payload: bytes) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(create)
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(copy) as writer:
            for offset in range(0, len(payload), _CHUNK):
                writer.write(payload[offset:offset + _CHUNK])
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
    return seconds


def _bus_rows(rows: int) -> bytes:
    """One idempotency-key row per record, as the bus stores per-record keys (``ingest_key``)."""
    lines = []
    for i in range(rows):
        digest = hashlib.blake2b(event_json(i).encode(), digest_size=8).hexdigest()
        lines.append(f"1\t1\te{i}\t\\\\x{digest}\t{i + 1}\n")
    return "".join(lines).encode()


def run(bench: Bench) -> str:
    rows = bench.profile.baseline_rows
    reps = bench.profile.reps
    dsn = bench.cluster.dsn
    bench.log(f"baselines: {rows:,} rows")
    plain, bus, arrow_pq, json_pq = [], [], [], []
    csv_rows, bus_payload = events_csv(0, rows), _bus_rows(rows)
    arrow = events_table(0, rows)
    scratch = Path(tempfile.mkdtemp(prefix="duckmesh-bench-base-", dir=bench.cluster.workdir))
    ndjson = scratch / "rows.ndjson"
    ndjson.write_text("\n".join(event_json(i) for i in range(rows)) + "\n")
    columns = "{'id': 'BIGINT', 'user_id': 'BIGINT', 'kind': 'VARCHAR', 'amount': 'DECIMAL(12,2)', 'at': 'TIMESTAMPTZ'}"
    for rep in range(reps):
        plain.append(rows / _copy(
            dsn, "CREATE TABLE bench_copy (id bigint NOT NULL, user_id bigint, kind text, amount numeric(12,2),"
                 " at timestamptz)",
            "COPY bench_copy FROM STDIN", csv_rows))
        bus.append(rows / _copy(
            dsn, "CREATE TABLE bench_copy (LIKE ingest_key INCLUDING ALL)",
            "COPY bench_copy (tenant_id, table_id, idempotency_key, payload_hash, token) FROM STDIN", bus_payload))
        with duckdb.connect(":memory:", config=DUCKDB_CONFIG) as con:
            con.register("source", arrow)
            started = time.perf_counter()
            con.execute(f"COPY source TO '{scratch / f'a{rep}.parquet'}' (FORMAT parquet, COMPRESSION zstd,"
                        " ROW_GROUP_SIZE 131072)")
            arrow_pq.append(rows / (time.perf_counter() - started))
            started = time.perf_counter()
            con.execute(f"COPY (SELECT * FROM read_json('{ndjson}', format = 'newline_delimited', columns = {columns}))"
                        f" TO '{scratch / f'j{rep}.parquet'}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)")
            json_pq.append(rows / (time.perf_counter() - started))
    shutil.rmtree(scratch, ignore_errors=True)
    bench.results["ceilings"] = {"rows": rows, "pg_copy_plain": plain, "pg_copy_keys": bus,
                                 "duckdb_parquet_arrow": arrow_pq, "duckdb_parquet_json": json_pq}
    return _markdown(bench, rows)


def _markdown(bench: Bench, rows: int) -> str:
    h = bench.results["ceilings"]
    per_s = lambda v: count(v) + " rows/s"  # noqa: E731
    lines = [
        [f"PostgreSQL COPY into a plain table ({len(EVENT_COLUMNS)} typed columns, no index)",
         stat(h["pg_copy_plain"], per_s)],
        ["PostgreSQL COPY into a copy of `ingest_key` (the per-record idempotency keys, with their indexes)",
         stat(h["pg_copy_keys"], per_s)],
        ["DuckDB: Arrow → Parquet (zstd)", stat(h["duckdb_parquet_arrow"], per_s)],
        ["DuckDB: NDJSON file → Parquet (zstd)", stat(h["duckdb_parquet_json"], per_s)],
    ]
    return table(["ceiling", "rate"], lines) + "\n" + text(
        "ceilings", rows=count(rows), reps=str(bench.profile.reps), chunk_mib=f"{_CHUNK / 2**20:g}")


def ratios(bench: Bench) -> str:
    """DuckMesh against each ceiling (called after ingest and query ran)."""
    h = bench.results["ceilings"]
    ingest = bench.results.get("ingest", {})
    writers, batch = bench.profile.closed_loops[0]
    entry = ingest.get(f"closed-{writers}x{batch}-1api")
    rate = median([r["rate"] for r in entry["runs"]]) if entry else float("nan")
    drain = bench.results.get("drain", {}).get("1", [])
    label = f"HTTP ingest, {writers} writers × {batch}, 1 API (acknowledged rec/s)"
    rows = [
        [label, "PostgreSQL COPY, plain table", ratio(rate / median(h["pg_copy_plain"]))],
        [label, "PostgreSQL COPY, `ingest_key`-shaped table", ratio(rate / median(h["pg_copy_keys"]))],
        ["coordinator, 1 process (bus → visible Parquet, events/s)", "DuckDB NDJSON → Parquet",
         ratio(median(drain) / median(h["duckdb_parquet_json"]))],
        ["coordinator, 1 process (bus → visible Parquet, events/s)", "DuckDB Arrow → Parquet",
         ratio(median(drain) / median(h["duckdb_parquet_arrow"]))],
    ]
    for name, value in sorted(bench.results.get("query", {}).get("overhead", {}).items()):
        rows.append([f"query server time, {name} compacted (p50)", "raw DuckDB, same files (p50)", ratio(value)])
    return table(["DuckMesh", "ceiling", "DuckMesh / ceiling"], rows)


def sections(table_md: str, ratios_md: str) -> str:
    return section("Physical baselines", table_md, "DuckMesh as a ratio to each ceiling (from this run):\n", ratios_md)
