"""Markdown for the report: every figure is the median of the repetitions with [min–max]."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

# The report's sections, in order; the smoke test checks that each heading is present.
SECTIONS = (
    "Summary",
    "Service levels",
    "Machine and versions",
    "Method",
    "Physical baselines",
    "Ingest",
    "Freshness",
    "Scale: coordinators",
    "Catalog size",
    "Peers: DuckLake and delta-rs",
    "Query",
    "Maintenance",
    "Resources",
    "Profile",
    "Bottlenecks and next steps",
)


def clean(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def median(values: Sequence[float | None]) -> float:
    found = clean(values)
    return statistics.median(found) if found else math.nan


def stat(values: Sequence[float | None], fmt: Callable[[float], str], spread: bool = True) -> str:
    """``median [min–max]`` (just the value when there was one repetition)."""
    found = clean(values)
    if not found:
        return "n/a"
    mid = fmt(statistics.median(found))
    if not spread or len(found) == 1 or min(found) == max(found):
        return mid
    return f"{mid} [{fmt(min(found))}–{fmt(max(found))}]"


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def ms_value(milliseconds: float) -> str:
    return "n/a" if math.isnan(milliseconds) else f"{milliseconds:.1f}" if milliseconds < 10_000 else f"{milliseconds:.0f}"


def count(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} %"


def ratio(value: float) -> str:
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.2f}×"


def mib(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value / 1024 / 1024:,.1f} MiB"


def secs(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def section(title: str, *parts: str) -> str:
    return f"## {title}\n\n" + "\n".join(p.rstrip() + "\n" for p in parts if p) + "\n"


def divide(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Element-wise a/b over repetitions (NaN where b is 0)."""
    return [x / y if y else math.nan for x, y in zip(a, b, strict=False)]


def plain(value: Any) -> Any:
    """``value`` with every NaN replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=1, sort_keys=True) + "\n"
