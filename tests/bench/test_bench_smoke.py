"""The benchmark suite's quick mode runs to the end and writes a report with every section.

A smoke test only: it checks that ``bench/run.py --quick`` completes against real processes and
that the report has each section heading. It asserts nothing about timings (those depend on the
machine and on whatever else runs on it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.acceptance
def test_quick_benchmark_completes_and_reports_every_section(admin_dsn: str, tmp_path: Path) -> None:
    report = tmp_path / "REPORT-quick.md"
    env = {name: value for name, value in os.environ.items() if not name.startswith("DUCKMESH_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(report), "--dsn", admin_dsn],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    text = report.read_text()
    missing = [title for title in SECTIONS if f"\n## {title}\n" not in text]
    assert not missing, f"sections missing from the quick report: {missing}"
    assert report.with_suffix(".json").exists(), "the measurements of the run are written beside the report"
