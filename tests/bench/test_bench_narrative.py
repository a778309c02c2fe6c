"""The benchmark report's prose holds no figures of its own: every number it prints is a
placeholder filled from a measurement (bench/narrative.md, bench/narrative.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _narrative() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_narrative", BENCH / "narrative.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_prose_has_no_number_outside_a_placeholder() -> None:
    narrative = _narrative()
    assert narrative.figures_outside_placeholders(narrative.SOURCE.read_text()) == []


def test_the_figure_check_finds_a_hand_typed_number() -> None:
    narrative = _narrative()
    assert narrative.figures_outside_placeholders("about 30,000 records/s at p95 {rate} `v1`") == ["30,000"]


def test_every_block_the_report_code_names_exists() -> None:
    narrative = _narrative()
    code = "".join(path.read_text() for path in BENCH.glob("*.py"))
    named = set(re.findall(r'\btext\(\s*"([a-z0-9_]+)"', code))
    kinds = re.findall(r'Target\("[^"]*",\s*"[^"]*",\s*"([a-z]+)"', code)
    named |= {f"{prefix}_{kind}" for kind in kinds for prefix in ("next", "kind")}
    named |= {f"catalog_variant_{v.replace('-', '_')}" for v in ("keys", "request-key")}
    assert named, "no narrative keys found in the bench code"
    assert sorted(named - set(narrative.blocks())) == []
