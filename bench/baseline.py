"""``bench/run.py --baseline-ref REF``: the "before" of the report, measured.

Checks REF out into a temporary ``git worktree``, installs it into a temporary virtual environment,
starts its processes exactly as a normal run does (same settings, same scratch-database harness)
and runs the scenarios the targets are judged on — with this commit's benchmark code, so the
scenarios are the same: the bus sections (catalog size, lone writer), every ingest configuration
the measured code accepts (bodies it cannot take, such as bare arrays with an ``Idempotency-Key``
header before the segment bus, are skipped), the coordinator drains and the query suite. The
measurements go to ``bench/results/baseline-<REF>.json`` (committed; the report's "before"),
with the commit, the date and the machine's load averages before and after, since a loaded
machine makes every figure worse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bus_suite
import ingest_suite
import query_suite
from context import CLUSTER_SETTINGS, Bench, Profile
from harness import RESULTS, ROOT, Cluster
from report import to_json

IDLE_LOAD = 1.0  # a one-minute load average at or above this marks the baseline as measured under load
SEGMENT_BUS_SQL = "SELECT to_regclass('public.ingest_segment') IS NOT NULL"


def default_path(ref: str, profile: Profile) -> Path:
    return RESULTS / (f"baseline-{ref}.json" if profile.name == "full" else f"baseline-{ref}-{profile.name}.json")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def _loadavg() -> list[float]:
    with contextlib.suppress(OSError):
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def _install(tree: Path, venv: Path) -> str:
    """A virtual environment with the checked-out commit installed; returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(tree)],
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"installing {tree} failed:\n{done.stderr[-2000:]}")
    return python


def _versions(python: str) -> dict[str, str]:
    code = ("import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) for p in"
            " ('duckmesh', 'duckdb', 'pyarrow', 'psycopg', 'fastapi', 'uvicorn', 'pydantic', 'httpx')}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return dict(json.loads(done.stdout)) if done.returncode == 0 else {}


def _measure(bench: Bench, record: dict[str, Any]) -> None:
    cluster = bench.cluster
    cluster.create_database()
    bench.segment_bus = bool(cluster.query(SEGMENT_BUS_SQL)[0][0])
    record["segment_bus"] = bench.segment_bus
    for command in ("api", "coordinator", "compactor"):
        cluster.start(command, f"{command}-1" if command != "compactor" else command)
    bus_suite.measure(bench)
    ingest_suite.measure(bench)
    try:
        query_suite.run(bench)
    except Exception:  # the query figures are one target among many: keep the others
        traceback.print_exc()
        record["query_failed"] = traceback.format_exc(limit=2)


def run(ref: str, admin_dsn: str, profile: Profile, out: Path | None, keep: bool) -> int:
    commit = _git("rev-parse", f"{ref}^{{commit}}")
    out = out or default_path(ref, profile)
    work = Path(tempfile.mkdtemp(prefix="duckmesh-bench-baseline-"))
    tree = work / "tree"
    record: dict[str, Any] = {
        "ref": ref, "commit": commit, "subject": _git("log", "-1", "--format=%s", commit)[:200],
        "measured_with": _git("rev-parse", "--short", "HEAD"), "profile": profile.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "loadavg_start": _loadavg(),
        "cpus": os.cpu_count(),
    }
    began = time.perf_counter()
    cluster: Cluster | None = None
    try:
        _git("worktree", "add", "--detach", str(tree), commit)
        print(f"[baseline] {ref} ({commit[:10]}) checked out; installing into a temporary venv", file=sys.stderr)
        python = _install(tree, work / "venv")
        record["versions"] = _versions(python)
        cluster = Cluster(admin_dsn, keep=keep, python=python, **CLUSTER_SETTINGS)
        bench = Bench(cluster, profile)
        _measure(bench, record)
        record["results"] = bench.results
    except Exception:
        traceback.print_exc()
        if cluster is not None:
            for proc in cluster.procs:
                print(f"--- {proc.name} stderr tail ---\n{proc.tail(15)}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(work, ignore_errors=True)
    record["loadavg_end"] = _loadavg()
    # Flagged, not refused: the file still says what was measured, and the report prints the loads.
    # Only the load before the run tells of other work: at the end, the load average still holds
    # the run's own processes.
    record["machine_loaded"] = bool(record["loadavg_start"]) and record["loadavg_start"][0] >= IDLE_LOAD
    record["minutes"] = round((time.perf_counter() - began) / 60, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(record))
    print(f"[baseline] measurements of {ref} written to {out}"
          + (" (the machine was loaded: see loadavg_* in the file)" if record["machine_loaded"] else ""), file=sys.stderr)
    return 0
