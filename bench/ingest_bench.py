"""Ingest benchmark on its own: real ``duckmesh api`` + ``duckmesh coordinator`` processes, concurrent
HTTP writers, write-to-visible from ``GET /v1/lag`` polling.

The full suite (``bench/run.py``, ``make bench``) covers this and more; this script stays for a
quick look at one configuration. It uses the suite's process harness (``harness.py``) and load
generator (``load.py``).

    .venv/bin/python bench/ingest_bench.py --seconds 20 --writers 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from datetime import UTC, datetime

import httpx
import psycopg
from apiclient import Api
from data import EVENT_COLUMNS
from harness import DEFAULT_DSN, LOOPBACK, RESULTS, Cluster, git_commit
from load import LoadResult, closed_loop_lag, percentile
from report import ms, table


def report(args: argparse.Namespace, results: LoadResult) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(results.errors.items())) or "none"
    rows = [
        ("writers x batch", f"{args.writers} x {args.batch} records"),
        ("measured window", f"{results.elapsed:.1f} s"),
        ("requests acknowledged", f"{len(results.ack)} of {results.requests}"),
        ("records accepted", f"{results.accepted}"),
        ("**records/s accepted**", f"**{results.rate:,.0f}**"),
        ("ack latency p50 / p95 / p99", " / ".join(ms(percentile(results.ack, p)) + " ms" for p in (50, 95, 99))),
        ("write-to-visible p50 / p95 (from send)",
         " / ".join(ms(percentile(results.visible_from_send, p)) + " ms" for p in (50, 95))),
        ("write-to-visible p50 / p95 (from ack)",
         " / ".join(ms(percentile(results.visible, p)) + " ms" for p in (50, 95))),
        ("visibility samples", f"{len(results.visible)} (unresolved: {results.unresolved})"),
        ("drain after load (last write visible)", f"{results.drain_seconds:.2f} s"),
        ("errors", errors),
    ]
    header = (
        f"# Ingest benchmark {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}\n\n"
        f"commit {git_commit()} · {os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"coordinator flush interval {args.flush_interval_ms} ms · one api + one coordinator process · "
        f"catalog PostgreSQL on {LOOPBACK} · local-directory object store\n\n"
        f"Write-to-visible is measured by polling GET /v1/lag every {args.lag_poll_ms} ms"
        f" (resolution ~{args.lag_poll_ms} ms; the polling is load on the API and catalog too).\n\n"
    )
    return header + table(["metric", "value"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN,
                        help="PostgreSQL on 127.0.0.1 where a scratch database is created (and dropped)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration (max 600)")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers")
    parser.add_argument("--batch", type=int, default=100, help="records per request")
    parser.add_argument("--flush-interval-ms", type=int, default=200, help="DUCKMESH_COORDINATOR_FLUSH_INTERVAL_MS")
    parser.add_argument("--lag-poll-ms", type=int, default=10, help="how often GET /v1/lag is polled")
    parser.add_argument("--sample-every", type=int, default=1, help="track visibility of every Nth write per writer")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="max wait for sampled writes to be visible")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and directory")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or args.writers < 1 or args.batch < 1 or args.sample_every < 1:
        parser.error("need 0 < --seconds <= 600, --writers >= 1, --batch >= 1, --sample-every >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = Cluster(args.dsn, args.keep, coordinator_flush_interval_ms=str(args.flush_interval_ms))
    try:
        cluster.create_database()
        key = cluster.create_tenant("bench", ("table_admin", "ingest_writer", "ops_admin"))
        api = cluster.start("api")
        cluster.start("coordinator")
        with Api(api.url, key) as client:
            client.create_table("events", EVENT_COLUMNS)
        print(f"running {args.writers} writers x {args.batch} records for {args.seconds:.0f} s ...", file=sys.stderr)
        results = asyncio.run(closed_loop_lag(
            api.url, key, "events", args.writers, args.batch, args.seconds, lag_poll=args.lag_poll_ms / 1000,
            sample_every=args.sample_every, drain_timeout=args.drain_timeout,
        ))
    except (RuntimeError, httpx.HTTPError, psycopg.Error) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.close()
    text = report(args, results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
