"""The DuckMesh benchmark suite: one command, one Markdown report.

    .venv/bin/python bench/run.py                  # full run -> bench/REPORT.md (about 20 minutes)
    .venv/bin/python bench/run.py --quick          # smoke run -> bench/results/REPORT-quick.md (about a minute)
    .venv/bin/python bench/run.py --quick --out /tmp/r.md

Starts a scratch database on the local PostgreSQL, a local-directory object store and the real
processes (``duckmesh api``, ``coordinator``, ``compactor``), runs every section, stops everything,
drops the database and writes the report. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import analysis
import baselines
import experiments
import hotspots
import ingest_suite
import maintenance_suite
import query_suite
from context import CLUSTER_SETTINGS, FULL, QUICK, Bench
from harness import DEFAULT_DSN, HERE, RESULTS, Cluster, machine_info, snapshot_source
from report import mib, section, table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (smoke run)")
    parser.add_argument("--out", type=Path, help="report path (default bench/REPORT.md, quick: bench/results/REPORT-quick.md)")
    parser.add_argument("--dsn", default=DEFAULT_DSN,
                        help="PostgreSQL on this machine where a scratch database is created (and dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and directory")
    return parser.parse_args(argv)


def resources_md(cluster: Cluster) -> str:
    rows = [[role, mib(size)] for role, size in sorted(cluster.peak_rss.items())]
    return table(["process", "peak RSS (VmHWM)"], rows) + (
        "\nThe highest VmHWM of any process of that role over the whole run (read from /proc just before each"
        " process was stopped; api processes were restarted for cold-cache runs and scaled to two, coordinators"
        " restarted with other claim sizes). The api's figure includes the DuckDB engine after the 10 M-row"
        " queries (memory limit 1 GB per tenant database).\n"
    )


def guarded(title: str, render: Callable[[], str]) -> str:
    """A section's text; a bug in the report code costs that section, not the whole run."""
    try:
        return render()
    except Exception:
        traceback.print_exc()
        return f"(the {title} section could not be rendered: {traceback.format_exc(limit=1).splitlines()[-1]})\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prof = QUICK if args.quick else FULL
    out: Path = args.out or (RESULTS / "REPORT-quick.md" if args.quick else HERE / "REPORT.md")
    began = time.perf_counter()
    started_at = datetime.now(UTC)
    machine = machine_info(args.dsn)
    snapshot_dir = Path(tempfile.mkdtemp(prefix="duckmesh-bench-src-"))
    try:
        source = snapshot_source(snapshot_dir / "src")
    except RuntimeError as exc:
        print(f"benchmark not started: {exc}", file=sys.stderr)
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        return 1
    sys.path.insert(0, str(source))  # this process's own duckmesh imports use the same copy
    machine.insert(1, ("code measured", "a copy of src/ taken when the run started (the commit above, plus any"
                       " uncommitted changes it had then)"))
    cluster = Cluster(args.dsn, keep=args.keep, source=source, **CLUSTER_SETTINGS)
    bench = Bench(cluster, prof)
    parts: dict[str, str] = {}
    try:
        cluster.create_database()
        bench.headline["catalog_empty"] = maintenance_suite.database_size(cluster)
        for command in ("api", "coordinator", "compactor"):
            cluster.start(command, f"{command}-1" if command != "compactor" else command)
        bench.log(f"cluster up: database {cluster.db_name}, objects under {cluster.objects}")
        base_md = baselines.run(bench)
        ingest_md = ingest_suite.run(bench)
        # Raw profiles are never committed: next to a report written elsewhere, else under bench/results/.
        parts["profile"] = hotspots.run(bench, RESULTS if out.parent.resolve() == HERE else out.parent)
        query_md, compaction_md = query_suite.run(bench)
        parts["experiments"] = experiments.run(bench, bench.tenants["q-micro"])
        maintenance_md = maintenance_suite.run(bench)
        parts["baselines"] = baselines.sections(base_md, guarded("ratios", lambda: baselines.ratios(bench)))
        parts["ingest"], parts["freshness"], parts["scale"] = ingest_suite.sections(ingest_md)
        parts["query"] = section("Query", query_md)
        parts["maintenance"] = section("Maintenance", compaction_md, maintenance_md)
    except Exception:
        traceback.print_exc()
        print("benchmark failed; see above", file=sys.stderr)
        for proc in cluster.procs:
            print(f"--- {proc.name} stderr tail ---\n{proc.tail(15)}", file=sys.stderr)
        return 1
    finally:
        cluster.close()
        shutil.rmtree(snapshot_dir, ignore_errors=True)
    elapsed = time.perf_counter() - began
    text = "\n".join([
        f"# DuckMesh benchmark report ({prof.name} run)\n",
        f"Produced by `{'make bench-quick' if args.quick else 'make bench'}` (`bench/run.py"
        f"{' --quick' if args.quick else ''}`) on {started_at:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} minutes."
        " Every figure is the median of the repetitions with [min–max] unless it says otherwise.\n",
        section("Summary", guarded("summary", lambda: analysis.summary(bench))),
        section("Service levels", guarded("service levels", lambda: analysis.service_levels(bench))),
        section("Machine and versions", table(["", ""], machine)),
        section("Method", analysis.method(bench)),
        parts["baselines"], parts["ingest"], parts["freshness"], parts["scale"], parts["query"],
        parts["maintenance"],
        section("Resources", resources_md(cluster)),
        section("Profile", parts["profile"]),
        section("Bottlenecks and next steps",
                guarded("bottlenecks", lambda: analysis.bottlenecks(bench, parts["experiments"]))),
        *(["Warnings during the run:\n\n" + "\n".join(f"- {w}" for w in cluster.warnings) + "\n"]
          if cluster.warnings else []),
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    bench.log(f"report written to {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
