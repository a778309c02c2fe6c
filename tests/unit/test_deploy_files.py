"""The shipped Dockerfile and docker-compose.yml, checked offline (no Docker engine runs here):
they parse, every file they mount exists, every DuckMesh command they run exists, Prometheus
scrapes the compose services and Grafana provisions the shipped dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer.main
import yaml

from duckmesh.cli import app

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def duckmesh_commands() -> set[str]:
    commands = getattr(typer.main.get_command(app), "commands", None)
    assert commands, "the duckmesh app is a group of commands"
    return set(commands)


def test_compose_runs_duckmesh_postgres_s3_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "api", "coordinator", "compactor", "migrate", "prometheus", "grafana"} <= set(services)
    for name in ("api", "coordinator", "compactor"):
        env = services[name]["environment"]
        assert env["DUCKMESH_OBJECT_STORE_URL"].startswith("s3://") and env["DUCKMESH_S3_ENDPOINT"] == "http://minio:9000"
        assert "@postgres:5432/" in env["DUCKMESH_CATALOG_DSN"] and env["DUCKMESH_PROFILE"] == "prod"
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_duckmesh_service_runs_a_real_command_of_the_image() -> None:
    commands = duckmesh_commands()
    for name, service in compose()["services"].items():
        if service.get("build") == ".":
            assert service["command"][0] in commands | {"--help"}, (name, service["command"])


def test_every_mounted_file_exists_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_prometheus_scrapes_the_compose_processes_and_loads_the_shipped_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    services = compose()["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == "./deploy/prometheus/rules.yml"
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/v1/metrics"
    targets = {t.split(":")[0] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"api", "coordinator", "compactor"} and targets <= set(services)


def test_grafana_provisions_prometheus_and_the_shipped_dashboard() -> None:
    volumes = {v.split(":")[1]: v.split(":")[0] for v in compose()["services"]["grafana"]["volumes"]}
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/duckmesh.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    assert volumes[f"{folder}/duckmesh.json"] == "./deploy/grafana/duckmesh.json"
    assert json.loads((ROOT / "deploy/grafana/duckmesh.json").read_text())["uid"] == "duckmesh"
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090" and sources["datasources"][0]["isDefault"]


def test_the_dockerfile_installs_run_time_dependencies_and_runs_duckmesh_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11")
    install = next(line for line in instructions if line.startswith("RUN pip install"))
    assert "pip install --no-compile ." in install and "[dev]" not in install
    for copied in ("pyproject.toml", "README.md", "src"):
        assert any(line.startswith("COPY") and copied in line for line in instructions), copied
        assert (ROOT / copied).exists()
    assert "USER duckmesh" in instructions and "EXPOSE 8080" in instructions
    assert 'ENTRYPOINT ["duckmesh"]' in instructions and 'CMD ["api"]' in instructions
    assert "DUCKMESH_HTTP_ADDR=0.0.0.0:8080" in (ROOT / "Dockerfile").read_text()
