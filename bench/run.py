"""The DuckMesh benchmark suite: one command, one Markdown report.

    .venv/bin/python bench/run.py                  # full run -> bench/REPORT.md (about 20 minutes)
    .venv/bin/python bench/run.py --quick          # smoke run -> bench/results/REPORT-quick.md (about a minute)
    .venv/bin/python bench/run.py --quick --out /tmp/r.md
    .venv/bin/python bench/run.py --baseline-ref f2afc3a   # "before": measure that commit -> bench/results/baseline-f2afc3a.json

Starts a scratch database on the local PostgreSQL, a local-directory object store and the real
processes (``duckmesh api``, ``coordinator``, ``compactor``), runs every section, stops everything,
drops the database and writes the report, and beside it every measurement as JSON (REPORT.json).
The report's "before" column is read from a committed ``--baseline-ref`` measurement file. See
bench/README.md for what each figure means.
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
import baseline
import baselines
import bus_suite
import experiments
import hotspots
import ingest_suite
import maintenance_suite
import peers
import query_suite
import targets
from context import CLUSTER_SETTINGS, FULL, QUICK, Bench
from harness import DEFAULT_DSN, HERE, RESULTS, Cluster, machine_info, snapshot_source
from narrative import text
from report import section, table, to_json

BASELINE_REF = "f2afc3a"  # the last commit before the segment bus (ADR 0008)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (smoke run)")
    parser.add_argument("--out", type=Path, help="report path (default bench/REPORT.md, quick: bench/results/REPORT-quick.md)")
    parser.add_argument("--dsn", default=DEFAULT_DSN,
                        help="PostgreSQL on this machine where a scratch database is created (and dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and directory")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="measure the scenarios of the targets on commit REF instead (temporary worktree and venv)"
                             " and write them to bench/results/baseline-REF.json (or --out); no report")
    parser.add_argument("--baseline", type=Path, default=baseline.default_path(BASELINE_REF, FULL),
                        help="the measurement file of the report's \"before\" column")
    return parser.parse_args(argv)


def guarded(title: str, render: Callable[[], str]) -> str:
    """A section's text; a bug in the report code costs that section, not the whole run."""
    try:
        return render()
    except Exception:
        traceback.print_exc()
        return f"(the {title} section could not be rendered: {traceback.format_exc(limit=1).splitlines()[-1]})\n"


def measure(bench: Bench, out: Path) -> dict[str, str]:
    """Every section's measurements, in an order where each starts from what it needs: the bus
    figures on the fresh catalog, the peers last (DuckMesh idle)."""
    cluster = bench.cluster
    parts: dict[str, str] = {}
    bench.results["catalog_empty"] = maintenance_suite.database_size(cluster)
    for command in ("api", "coordinator", "compactor"):
        cluster.start(command, f"{command}-1" if command != "compactor" else command)
    bench.log(f"cluster up: database {cluster.db_name}, objects under {cluster.objects}")
    bus_suite.measure(bench)
    base_md = baselines.run(bench)
    ingest_suite.measure(bench)
    # Raw profiles are never committed: next to a report written elsewhere, else under bench/results/.
    parts["profile"] = hotspots.run(bench, RESULTS if out.parent.resolve() == HERE else out.parent)
    query_md, compaction_md = query_suite.run(bench)
    parts["experiments"] = experiments.run(bench, bench.tenants["q-micro"])
    maintenance_md = maintenance_suite.run(bench)
    if bench.profile.name == "quick":
        parts["peers"] = peers.markdown(bench, skipped=text("peers_quick"))
    else:
        peers.measure(bench)
        parts["peers"] = peers.markdown(bench)
    parts["baselines"] = baselines.sections(base_md, guarded("ratios", lambda: baselines.ratios(bench)))
    parts["catalog"] = bus_suite.sections(bench)  # first: it renders the lone writer for the Freshness section
    parts["ingest"], parts["freshness"], parts["scale"] = ingest_suite.sections(bench)
    parts["query"] = section("Query", query_md)
    parts["maintenance"] = section("Maintenance", compaction_md, maintenance_md)
    return parts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prof = QUICK if args.quick else FULL
    if args.baseline_ref:
        return baseline.run(args.baseline_ref, args.dsn, prof, args.out, args.keep)
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
    try:
        cluster.create_database()
        parts = measure(bench, out)
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
    before = targets.load_baseline(args.baseline)
    shown = str(args.baseline.resolve().relative_to(HERE.parent)) if args.baseline.resolve().is_relative_to(
        HERE.parent) else str(args.baseline)
    report = "\n".join([
        f"# DuckMesh benchmark report ({prof.name} run)\n",
        text("produced", command="make bench-quick" if args.quick else "make bench",
             args=" --quick" if args.quick else "", when=f"{started_at:%Y-%m-%d %H:%M}",
             minutes=f"{elapsed / 60:.1f}", json=out.with_suffix(".json").name) + "\n",
        section("Summary", guarded("summary", lambda: analysis.summary(bench))),
        section("Service levels", guarded("service levels", lambda: analysis.service_levels(bench, before, shown))),
        section("Machine and versions", table(["", ""], machine)),
        section("Method", analysis.method(bench)),
        parts["baselines"], parts["ingest"], parts["freshness"], parts["scale"], parts["catalog"], parts["peers"],
        parts["query"], parts["maintenance"],
        section("Resources", analysis.resources(cluster.peak_rss)),
        section("Profile", parts["profile"]),
        section("Bottlenecks and next steps",
                guarded("bottlenecks", lambda: analysis.bottlenecks(bench, parts["experiments"]))),
        *(["Warnings during the run:\n\n" + "\n".join(f"- {w}" for w in cluster.warnings) + "\n"]
          if cluster.warnings else []),
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(to_json({"profile": prof.name, "started": started_at.isoformat(
        timespec="seconds"), "machine": dict(machine), "results": bench.results}))
    bench.log(f"report written to {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
