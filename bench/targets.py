"""The targets the report judges, each with the one function that reads its value from a run's
measurements — the same function for this run and for the committed baseline measurement of the
commit before the segment bus (``bench/results/baseline-<ref>.json``), so "before" and "after"
are always the same figure of the same scenario.

Thresholds are the targets themselves (OPERATIONS_SECURITY.md "Service levels" and issue 10),
written once here; every other number in the table is measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import count, median, ms, pct, ratio, table

Results = dict[str, Any]


def _ingest(results: Results, config: str, field: str) -> float:
    entry = results.get("ingest", {}).get(config)
    return median([r[field] for r in entry["runs"]]) if entry else math.nan


def _sustained(results: Results, rate: int) -> bool | None:
    achieved = _ingest(results, f"open-{rate}-1api", "rate")
    return None if math.isnan(achieved) else achieved >= SUSTAINED * rate


def _barrier(results: Results, rate: int) -> float:
    entry = results.get("ingest", {}).get(f"open-{rate}-1api")
    if not entry:
        return math.nan
    ok = sum(r["barrier_ok"] for r in entry["runs"])
    total = sum(r["barrier_ok"] + r["barrier_timeouts"] + r["barrier_wrong"] for r in entry["runs"])
    return ok / total if total else math.nan


def _second_api(results: Results, shape: str) -> float:
    return _ingest(results, f"closed-{shape}-2api", "rate") / _ingest(results, f"closed-{shape}-1api", "rate")


def _catalog(results: Results, variant: str) -> float:
    found = results.get("catalog", {}).get(variant)
    return found["database_bytes"] / found["events"] * 1_000_000 / 2**20 if found and found["events"] else math.nan


def _overheads(results: Results) -> dict[str, float]:
    return dict(results.get("query", {}).get("overhead", {}))


def _peer_rate(peers: Results, name: str, writers: int) -> float:
    found = peers.get("results", {}).get(name, {}).get(str(writers))
    return float(found["rate"]) if found and "rate" in found else math.nan


SUSTAINED = 0.95  # an open-loop run "sustains" its offered rate when it achieves this share of it


@dataclass(frozen=True)
class Target:
    """``value`` reads the figure from a run's measurements (NaN when the run has none);
    ``met`` judges it; ``show`` renders it (with what else the judgement depends on)."""

    text: str
    source: str
    kind: str  # ingest, freshness, lone, coordinator, catalog, query, peers, scale: what bears on a gap
    config: str  # the ingest configuration the figure comes from ("" when none)
    value: Callable[[Results, Results], float]
    limit: float
    below: bool
    show: Callable[[Results, Results, float], str]
    also: Callable[[Results], bool | None] = lambda _: True

    def met(self, results: Results, peers: Results) -> bool | None:
        found = self.value(results, peers)
        if math.isnan(found):
            return None
        ok = found < self.limit if self.below else found >= self.limit
        also = self.also(results)
        return None if also is None else ok and also


def _ms(_r: Results, _p: Results, v: float) -> str:
    return f"{ms(v)} ms"


def _at_rate(rate: int) -> Callable[[Results, Results, float], str]:
    return lambda r, _p, v: f"{ms(v)} ms at {count(_ingest(r, f'open-{rate}-1api', 'rate'))} rec/s achieved"


def _rec_s(_r: Results, _p: Results, v: float) -> str:
    return f"{count(v)} rec/s"


def _mib(_r: Results, _p: Results, v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.1f} MiB"


def _vs_ducklake(r: Results, p: Results, v: float) -> str:
    return (f"{count(_ingest(r, 'closed-4x500-1api', 'rate'))} vs DuckLake {count(_peer_rate(p, 'ducklake', 4))}"
            f" rec/s ({ratio(v)})")


def _second(r: Results, _p: Results, v: float) -> str:
    return f"4×500 {ratio(_second_api(r, '4x500'))}, 8×100 {ratio(_second_api(r, '8x100'))}"


def _worst_overhead(r: Results, _p: Results, v: float) -> str:
    found = _overheads(r)
    if not found:
        return "n/a"
    worst = max(found, key=lambda k: found[k])
    return f"worst {ratio(v)} ({worst})"


TARGETS = (
    Target("≥ 50,000 rec/s acknowledged, 4 writers × 500, 1 API, 1 coordinator", "issue 10", "ingest", "closed-4x500-1api",
           lambda r, _: _ingest(r, "closed-4x500-1api", "rate"), 50_000, False, _rec_s),
    Target("ack p95 < 50 ms at 4 writers × 500, 1 API", "issue 10", "ingest", "closed-4x500-1api",
           lambda r, _: _ingest(r, "closed-4x500-1api", "ack_p95"), 0.050, True, _ms),
    Target("4 writers × 500 at least DuckLake's 4-writer rate on this machine", "issue 10", "peers", "closed-4x500-1api",
           lambda r, p: _ingest(r, "closed-4x500-1api", "rate") / _peer_rate(p, "ducklake", 4), 1.0, False,
           _vs_ducklake),
    Target("≥ 20,000 rec/s acknowledged, 8 writers × 100, 1 API", "issue 10", "ingest", "closed-8x100-1api",
           lambda r, _: _ingest(r, "closed-8x100-1api", "rate"), 20_000, False, _rec_s),
    Target("a second API process adds throughput (2 API / 1 API, both shapes)", "issue 10", "scale", "",
           lambda r, _: min(_second_api(r, "4x500"), _second_api(r, "8x100")), 1.0 + 1e-9, False, _second),
    Target("write → visible p95 < 500 ms at 20,000 rec/s offered (sustained)", "issue 10", "freshness", "open-20000-1api",
           lambda r, _: _ingest(r, "open-20000-1api", "visible_p95"), 0.500, True, _at_rate(20_000),
           lambda r: _sustained(r, 20_000)),
    Target("lone writer `wait_for_visibility` p50 < 30 ms", "issue 10", "lone", "",
           lambda r, _: median([x["p50"] for x in r.get("lone_wait", {}).get("runs", [])]), 0.030, True, _ms),
    Target("coordinator ≥ 200,000 events/s per process, pre-filled bus", "issue 10", "coordinator", "",
           lambda r, _: median(r.get("drain", {}).get("1", [])), 200_000, False,
           lambda _r, _p, v: f"{count(v)} events/s"),
    Target("catalog ≤ 60 MiB per million events before bus cleanup, per-record keys", "issue 10", "catalog", "",
           lambda r, _: _catalog(r, "keys"), 60.0 + 1e-9, True, _mib),
    Target("catalog ≤ 60 MiB per million events before bus cleanup, Idempotency-Key header, no per-record keys",
           "issue 10", "catalog", "", lambda r, _: _catalog(r, "request-key"), 60.0 + 1e-9, True, _mib),
    Target("query server time ≤ 1.2× raw DuckDB, every query (compacted, warm, p50)", "issue 10, OPERATIONS_SECURITY", "query", "",
           lambda r, _: max(_overheads(r).values(), default=math.nan), 1.2 + 1e-9, True, _worst_overhead),
    Target("ingest ack p95 < 50 ms at 5,000 rec/s sustained (batches of 100, 1 API)", "OPERATIONS_SECURITY", "ingest", "open-5000-1api",
           lambda r, _: _ingest(r, "open-5000-1api", "ack_p95"), 0.050, True, _at_rate(5_000),
           lambda r: _sustained(r, 5_000)),
    Target("write → visible p95 < 1 s at 5,000 rec/s", "OPERATIONS_SECURITY", "freshness", "open-5000-1api",
           lambda r, _: _ingest(r, "open-5000-1api", "visible_p95"), 1.0, True, _ms),
    Target("strict-read barrier success > 99 % (3 s timeout) at 5,000 rec/s", "OPERATIONS_SECURITY", "freshness", "open-5000-1api",
           lambda r, _: _barrier(r, 5_000), 0.99 + 1e-9, False, lambda _r, _p, v: pct(100 * v)),
    Target("interactive query p95 < 200 ms, 1 M rows compacted (client, worst query)", "OPERATIONS_SECURITY", "query", "",
           lambda r, _: float(r.get("query", {}).get("client_p95_compacted_worst", math.nan)), 0.200, True,
           _ms),
)


def _word(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "gap"


def _status(ok: bool | None) -> str:
    return f"**{_word(ok)}**" if ok is not None else "n/a"


def load_baseline(path: Path) -> Results | None:
    try:
        found: Results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found


def table_md(after: Results, before: Results | None) -> str:
    peers = after.get("peers", {})
    rows = []
    for target in TARGETS:
        now = target.value(after, peers)
        cells = [target.text, target.source]
        if before is not None:
            measured = before.get("results", {})
            then = target.value(measured, peers)
            cells.append("n/a" if math.isnan(then) else
                         f"{target.show(measured, peers, then)} ({_word(target.met(measured, peers))})")
        cells += ["n/a" if math.isnan(now) else target.show(after, peers, now), _status(target.met(after, peers))]
        rows.append(cells)
    header = ["target", "from"]
    if before is not None:
        header.append(f"before: {before.get('ref', '?')}")
    header += ["after: this run", "met (after)"]
    return table(header, rows)
