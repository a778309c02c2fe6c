"""The report's judgement: summary, targets (before and after), method, bottlenecks.

Every figure is read from ``bench.results`` (this run) or from the committed baseline measurement
file; every sentence comes from ``narrative.md``.
"""

from __future__ import annotations

import math
from typing import Any

import targets
from context import GC_SAFETY_SECONDS, Bench
from ingest_suite import PROCESS_ROLES
from load import DRAIN_POLL_S, PROBE_TIMEOUT_MS
from narrative import text
from report import count, median, mib, ms, pct, ratio, table


def _ingest(bench: Bench, config: str, field: str) -> float:
    entry = bench.results.get("ingest", {}).get(config)
    return median([r.get(field) for r in entry["runs"]]) if entry else math.nan


def _cpu(bench: Bench, config: str) -> str:
    entry = bench.results.get("ingest", {}).get(config)
    if not entry:
        return "n/a"
    return ", ".join(f"{role} {pct(median([r['cpu'].get(role) for r in entry['runs']]))}" for role in PROCESS_ROLES)


def _shape(bench: Bench, index: int) -> str:
    writers, batch = bench.profile.closed_loops[index]
    return f"{writers}x{batch}"


def _peer(bench: Bench, fmt: str, writers: int) -> float:
    found = bench.results.get("peers", {}).get("results", {}).get(fmt, {}).get(str(writers), {})
    return float(found.get("rate", math.nan))


def summary(bench: Bench) -> str:
    r = bench.results
    a, b = _shape(bench, 0), _shape(bench, 1)
    catalog = r.get("catalog", {})
    overhead = r.get("query", {}).get("overhead", {})
    worst = max(overhead, key=lambda k: overhead[k]) if overhead else "n/a"
    ceilings = r.get("ceilings", {})
    lines = [
        text("summary_ingest", a=a.replace("x", " × "), b=b.replace("x", " × "),
             a1=count(_ingest(bench, f"closed-{a}-1api", "rate")), a2=count(_ingest(bench, f"closed-{a}-2api", "rate")),
             a_ack=ms(_ingest(bench, f"closed-{a}-1api", "ack_p95")),
             a_array=count(_ingest(bench, f"closed-{a}-1api-array", "rate")),
             b1=count(_ingest(bench, f"closed-{b}-1api", "rate")), b2=count(_ingest(bench, f"closed-{b}-2api", "rate")),
             b_ack=ms(_ingest(bench, f"closed-{b}-1api", "ack_p95"))),
        text("summary_freshness", visible=ms(_ingest(bench, "open-20000-1api", "visible_p95")),
             achieved=count(_ingest(bench, "open-20000-1api", "rate")),
             lone=ms(median([x["p50"] for x in r.get("lone_wait", {}).get("runs", [])]))),
        text("summary_coordinator", one=count(median(r.get("drain", {}).get("1", []))),
             two=count(median(r.get("drain", {}).get("2", [])))),
        text("summary_catalog", keys=mib(_per_million(catalog.get("keys"))),
             request=mib(_per_million(catalog.get("request-key")))),
        text("summary_query", worst=ratio(overhead.get(worst, math.nan)), which=str(worst),
             p95=ms(r.get("query", {}).get("client_p95_compacted_worst", math.nan))),
        text("summary_peers", ducklake=count(_peer(bench, "ducklake", 4)), delta=count(_peer(bench, "delta", 4))),
        text("summary_ceilings", plain=count(median(ceilings.get("pg_copy_plain", []))),
             keys=count(median(ceilings.get("pg_copy_keys", []))),
             arrow=count(median(ceilings.get("duckdb_parquet_arrow", [])))),
    ]
    return "\n".join(f"- {line}" for line in lines) + "\n"


def _per_million(found: dict[str, Any] | None) -> float:
    return found["database_bytes"] / found["events"] * 1_000_000 if found and found.get("events") else math.nan


def service_levels(bench: Bench, baseline: dict[str, Any] | None, baseline_path: str) -> str:
    """The targets table (before, after, met) and where "before" came from."""
    parts = [targets.table_md(bench.results, baseline)]
    if baseline is None:
        parts.append(text("no_baseline", path=baseline_path))
    else:
        load = " / ".join(f"{v:.2f}" for v in baseline.get("loadavg_start", []))
        parts.append(text(
            "baseline_source", ref=str(baseline.get("ref")), commit=str(baseline.get("commit", ""))[:10],
            subject=str(baseline.get("subject", "")), date=str(baseline.get("started", "?")),
            profile=str(baseline.get("profile", "?")), path=baseline_path, load_start=load or "?",
            load_end=" / ".join(f"{v:.2f}" for v in baseline.get("loadavg_end", [])) or "?",
            measured_with=str(baseline.get("measured_with", "?"))))
        if baseline.get("machine_loaded"):
            parts.append(text("baseline_loaded"))
        if baseline.get("profile") != bench.profile.name:
            parts.append(text("baseline_other_profile", before=str(baseline.get("profile")), after=bench.profile.name))
    parts.append(text("targets_note", sustained=pct(100 * targets.SUSTAINED)))
    return "\n\n".join(parts)


def method(bench: Bench) -> str:
    p = bench.profile
    return text(
        "method", profile=p.name, reps=str(p.reps), seconds=f"{p.ingest_seconds:g}",
        rates=", ".join(f"{r:,}" for r in p.rates), batch=str(p.batch),
        shapes=", ".join(f"{w} writers × {b}" for w, b in p.closed_loops), micro=count(p.micro_rows),
        big=count(p.big_rows), safety=str(GC_SAFETY_SECONDS), probe_timeout=f"{PROBE_TIMEOUT_MS / 1000:g}",
        poll=f"{DRAIN_POLL_S * 1000:g}")


# --- bottlenecks: the gaps of this run, ranked, each with its evidence ------------------------------


def _shortfall(target: targets.Target, value: float) -> float:
    """How far a value is from its target (1 = on it; larger = further)."""
    if math.isnan(value) or value <= 0:
        return math.inf
    return value / target.limit if target.below else target.limit / value


def _evidence(bench: Bench, target: targets.Target) -> str:
    """The measurements that bear on a gap, by the kind of target."""
    if target.kind == "query":
        fixed = bench.results.get("query", {}).get("fixed_ms", {})
        return text("evidence_query", fixed=", ".join(f"{k} {v:+.1f} ms" for k, v in sorted(fixed.items())) or "n/a")
    if target.kind == "catalog":
        parts = []
        for variant, found in bench.results.get("catalog", {}).items():
            tables = found.get("tables", {})
            biggest = [n for n in sorted(tables, key=lambda n: -tables[n])[:3] if tables[n] > 0]
            parts.append(f"{variant}: " + ", ".join(
                f"`{n}` {mib(tables[n] / found['events'] * 1_000_000)}" for n in biggest))
        return text("evidence_catalog", tables="; ".join(parts) or "n/a")
    if target.kind == "scale":
        shape = _shape(bench, 0)
        return text("evidence_scale", one=_cpu(bench, f"closed-{shape}-1api"), two=_cpu(bench, f"closed-{shape}-2api"))
    if target.kind == "coordinator":
        return text("evidence_coordinator", top=_profile_top(bench, "coordinator"))
    if target.kind == "lone":
        runs = bench.results.get("lone_wait", {}).get("runs", [])
        low = f"open-{min(bench.profile.rates)}-1api"
        return text("evidence_lone", p50=ms(median([r["p50"] for r in runs])), p95=ms(median([r["p95"] for r in runs])),
                    config=_label(bench, low), wait=ms(_ingest(bench, low, "barrier_wait_ms_p50") / 1000))
    if target.kind == "freshness":
        config = target.config or "open-20000-1api"
        return text("evidence_freshness", config=_label(bench, config), cpu=_cpu(bench, config),
                    wait=ms(_ingest(bench, config, "barrier_wait_ms_p50") / 1000))
    config = target.config or f"closed-{_shape(bench, 0)}-1api"
    return text("evidence_ingest", config=_label(bench, config), cpu=_cpu(bench, config),
                api=_profile_top(bench, "api"), waits=_top_wait(bench))


def _label(bench: Bench, config: str) -> str:
    return str(bench.results.get("ingest", {}).get(config, {}).get("label", config))


def _profile_top(bench: Bench, role: str, top: int = 4) -> str:
    found = bench.headline.get("profiles", {}).get(role)
    if found is None:
        return "n/a (no py-spy profile in this run)"
    total = max(found.samples, 1)
    return ", ".join(f"{name} {pct(100 * n / total)}" for name, n in found.by_library[:top])


def _top_wait(bench: Bench, top: int = 3) -> str:
    waits = bench.headline.get("profile_waits") or {}
    total = sum(waits.values())
    if not total:
        return "n/a"
    return ", ".join(f"{what} `{query}` {pct(100 * n / total)}" for (what, query), n in waits.most_common(top))


def bottlenecks(bench: Bench, experiments_md: str) -> str:
    """The gaps of this run, furthest first; then, per kind of gap (in the order of its worst), the
    measurements that bear on it and where to look next."""
    peers = bench.results.get("peers", {})
    gaps = []
    for target in targets.TARGETS:
        if target.met(bench.results, peers) is False:
            value = target.value(bench.results, peers)
            gaps.append((_shortfall(target, value), target, value))
    gaps.sort(key=lambda g: -g[0])
    parts = [text("bottlenecks_intro")]
    if gaps:
        parts.append(table(["", "target", "this run", "measured / target"], [
            [str(rank), t.text, t.show(bench.results, peers, v), ratio(f if t.below else 1 / f)]
            for rank, (f, t, v) in enumerate(gaps, 1)]))
    else:
        parts.append(text("no_gaps"))
    seen: list[str] = []
    for _, target, _ in gaps:
        if target.kind in seen:
            continue
        seen.append(target.kind)
        named = ", ".join(str(rank) for rank, (_, t, _) in enumerate(gaps, 1) if t.kind == target.kind)
        parts.append(f"**{text(f'kind_{target.kind}')}** (gaps {named}). *Evidence:* {_evidence(bench, target)}"
                     f"\n\n*Next step:* {text(f'next_{target.kind}')}")
    parts.append(text("nodelay", reps=str(bench.profile.reps)) + "\n\n" + experiments_md)
    return "\n\n".join(parts)


def resources(peak_rss: dict[str, int]) -> str:
    return table(["process", "peak RSS (VmHWM)"], [[role, mib(size)] for role, size in sorted(peak_rss.items())]) + (
        "\n" + text("resources"))
