"""The shipped Prometheus rules and Grafana dashboard only name metrics DuckMesh exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from duckmesh.observability import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_NAME = re.compile(r"\bduckmesh_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _referenced() -> set[str]:
    text = (DEPLOY / "prometheus" / "rules.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "duckmesh.json").read_text())
    text += json.dumps(dashboard)
    return {name for name in _NAME.findall(text) if not name.startswith("duckmesh:")}


def test_every_metric_named_by_the_rules_and_dashboard_exists() -> None:
    exported = _exported()
    missing = sorted(name for name in _referenced() if name not in exported
                     and not any(name.removesuffix(s) in exported for s in _SUFFIXES))
    assert missing == []
    assert len(_referenced()) >= 10
