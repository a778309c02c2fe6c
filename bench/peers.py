"""Peers: the same batches written directly into two lake formats on this machine, no HTTP, no
JSON, no durable queue in front — DuckLake (DuckDB's extension, its catalog in a scratch database
on the same PostgreSQL) and delta-rs (a Delta table in a local directory).

They are installed at bench time from PyPI into their own interpreter, ``bench/.venv-peers``
(gitignored), never into the project's environment: the DuckLake and PostgreSQL extension wheels
exist for one DuckDB version (``PEER_DUCKDB``), which need not be the project's. When the
installation fails (no network, no wheel for this platform) the section says so and the rest of
the report is unaffected. Each writer is its own process (``peers_worker.py``); all writers of a
run start at one wall-clock instant, after building their rows and connecting.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from context import Bench
from harness import HERE, with_database
from load import percentile
from narrative import text
from psycopg import sql
from report import count, median, ms, section, table

PEER_VENV = HERE / ".venv-peers"
PEER_DUCKDB = "1.4.4"  # the newest DuckDB with duckdb-ext-ducklake / duckdb-ext-postgres wheels on PyPI
PEER_PACKAGES = (f"duckdb=={PEER_DUCKDB}", f"duckdb-ext-ducklake=={PEER_DUCKDB}.*",
                 f"duckdb-ext-postgres=={PEER_DUCKDB}.*", "deltalake", "pyarrow")
FORMATS = {"ducklake": "DuckLake (PostgreSQL catalog, local data files)", "delta": "delta-rs (local Delta table)"}
START_DELAY_S = 5.0  # writers build their rows and connect before the shared start instant


def peer_python() -> Path:
    """The peers' interpreter, created and filled on first use (raises RuntimeError when it cannot be)."""
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".installed"
    wanted = "\n".join(PEER_PACKAGES)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER_PACKAGES]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(step[2:])}` failed: {(done.stderr or done.stdout).strip()[-600:]}")
    marker.write_text(wanted)
    return python


def _worker(python: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(python), str(HERE / "peers_worker.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=HERE)


def _finish(proc: subprocess.Popen[str], timeout: float = 900) -> str:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"peers_worker exited with {proc.returncode}: {err.strip()[-600:]}")
    return out


def _run(bench: Bench, python: Path, fmt: str, writers: int, scratch: Path, catalog: str) -> dict[str, Any]:
    rows, batch = bench.profile.peer_rows, bench.profile.peer_batch
    target = scratch / f"{fmt}-{writers}"
    common = ["--target", str(target), "--catalog", catalog]
    _finish(_worker(python, "setup", fmt, *common))
    share = rows // writers
    start_at = time.time() + START_DELAY_S
    procs = [_worker(python, "write", fmt, *common, "--first", str(w * share), "--rows", str(share),
                     "--batch", str(batch), "--start-at", f"{start_at:.6f}") for w in range(writers)]
    found = [json.loads(_finish(p)) for p in procs]
    commits = [tuple(c) for f in found for c in f["commits"]]
    errors = [e for f in found for e in f["errors"]]
    written = sum(f["rows"] for f in found)
    wall = max(end for _, end in commits) - min(start for start, _ in commits) if commits else math.nan
    latencies = [end - start for start, end in commits]
    result = {"rows": written, "seconds": wall, "rate": written / wall if wall else math.nan,
              "commits": len(commits), "commit_p50": percentile(latencies, 50),
              "commit_p95": percentile(latencies, 95), "errors": len(errors), "first_error": errors[0] if errors else ""}
    bench.log(f"  {fmt}, {writers} writer(s): {result['rate']:,.0f} rows/s, commit p95"
              f" {ms(result['commit_p95'])} ms, errors {len(errors)}")
    return result


def measure(bench: Bench) -> None:
    found: dict[str, Any] = {"rows": bench.profile.peer_rows, "batch": bench.profile.peer_batch}
    bench.results["peers"] = found
    bench.log("peers: DuckLake and delta-rs, installing bench/.venv-peers if needed")
    try:
        python = peer_python()
        found["versions"] = json.loads(_finish(_worker(python, "versions")))
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        found["error"] = str(exc)
        bench.log(f"  peers not measured: {exc}")
        return
    scratch = Path(tempfile.mkdtemp(prefix="duckmesh-bench-peers-", dir=bench.cluster.workdir))
    database = f"duckmesh_bench_peers_{uuid.uuid4().hex[:10]}"
    results: dict[str, dict[str, Any]] = found.setdefault("results", {})
    try:
        for fmt in FORMATS:
            for writers in bench.profile.peer_writers:
                catalog = ""
                if fmt == "ducklake":  # a fresh catalog database per run
                    _create(bench, f"{database}_{writers}")
                    catalog = _libpq(with_database(bench.cluster.admin_dsn, f"{database}_{writers}"))
                try:
                    results.setdefault(fmt, {})[str(writers)] = _run(bench, python, fmt, writers, scratch, catalog)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    results.setdefault(fmt, {})[str(writers)] = {"error": str(exc)}
                    bench.log(f"  {fmt}, {writers} writer(s) failed: {exc}")
    finally:
        _drop_all(bench, database)
        shutil.rmtree(scratch, ignore_errors=True)


def _libpq(dsn: str) -> str:
    """The key=value form DuckDB's postgres extension takes."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return " ".join(f"{k}={v}" for k, v in info.items() if v)


def _create(bench: Bench, name: str) -> None:
    with psycopg.connect(bench.cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_all(bench: Bench, prefix: str) -> None:
    with psycopg.connect(bench.cluster.admin_dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                            (prefix + "%",)).fetchall()]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def markdown(bench: Bench, skipped: str = "") -> str:
    found = bench.results.get("peers", {})
    if skipped:
        return section("Peers: DuckLake and delta-rs", skipped)
    if "error" in found:
        return section("Peers: DuckLake and delta-rs", text("peers_failed", error=found["error"]))
    rows = []
    for fmt, label in FORMATS.items():
        for writers, r in found.get("results", {}).get(fmt, {}).items():
            if "error" in r:
                rows.append([label, writers, "failed", "", "", "", r["error"][:200]])
                continue
            rows.append([label, writers, count(r["rate"]), ms(r["commit_p50"]), ms(r["commit_p95"]),
                         count(r["commits"]), str(r["errors"]) + (f" ({r['first_error']})" if r["errors"] else "")])
    versions = ", ".join(f"{k} {v}" for k, v in found.get("versions", {}).items())
    ingest = bench.results.get("ingest", {})
    ours = [[e["label"], count(_median_rate(e))] for cid, e in ingest.items() if cid.startswith("closed-4x500-")]
    return section(
        "Peers: DuckLake and delta-rs",
        table(["format", "writer processes", "rows/s", "commit p50 ms", "commit p95 ms", "commits", "errors"], rows),
        text("peers", rows=count(found["rows"]), batch=count(found["batch"]), versions=versions,
             delay=f"{START_DELAY_S:g}"),
        (text("peers_vs_duckmesh") + "\n\n" + table(["DuckMesh configuration", "acknowledged rec/s"], ours))
        if ours else "",
    )


def _median_rate(entry: dict[str, Any]) -> float:
    return median([r["rate"] for r in entry["runs"]])
