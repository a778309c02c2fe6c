"""The shipped monitoring assets (Prometheus rules and scrape example, Alertmanager example,
Grafana dashboard) only name metrics DuckMesh exports and fit together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from fastapi.routing import APIRoute

from duckmesh.api.routers import probes
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


def _yaml(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def test_the_example_scrape_config_loads_the_shipped_rules_and_scrapes_the_served_metrics_route() -> None:
    config = _yaml(DEPLOY / "prometheus" / "scrape.example.yml")
    served = {route.path for route in probes.metrics_router.routes if isinstance(route, APIRoute)}

    assert config["rule_files"] and all((DEPLOY / "prometheus" / f).is_file() for f in config["rule_files"])
    jobs = config["scrape_configs"]
    assert {job["job_name"] for job in jobs} == {"duckmesh-api", "duckmesh-coordinator", "duckmesh-compactor"}
    assert {job["metrics_path"] for job in jobs} == {"/v1/metrics"} <= served
    # scraped on each process's metrics listener (DUCKMESH_METRICS_ADDR), never its API port
    targets = [t for job in jobs for group in job["static_configs"] for t in group["targets"]]
    assert len(set(targets)) == 3 and all(t.startswith("127.0.0.1:946") for t in targets)
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_the_example_alertmanager_routes_every_severity_the_rules_use_to_a_defined_receiver() -> None:
    rules = _yaml(DEPLOY / "prometheus" / "rules.yml")
    manager = _yaml(DEPLOY / "alertmanager" / "alertmanager.example.yml")
    severities = {rule["labels"]["severity"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    receivers = {receiver["name"]: receiver for receiver in manager["receivers"]}
    routed = {
        matcher.split("=", 1)[1].strip('"'): route["receiver"]
        for route in manager["route"]["routes"] for matcher in route["matchers"] if matcher.startswith("severity=")
    }

    assert severities and severities <= set(routed)
    assert manager["route"]["receiver"] in receivers and set(routed.values()) <= set(receivers)
    urls = [hook["url"] for receiver in receivers.values() for hook in receiver.get("webhook_configs", [])]
    assert urls and all(url.startswith("http://127.0.0.1:") for url in urls), "examples never send alerts anywhere"
