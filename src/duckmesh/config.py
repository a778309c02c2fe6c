"""Typed settings, read from ``DUCKMESH_*`` variables (and an optional ``duckmesh.toml``).

Built once at the entry point (``cli.py``) and passed down; nothing reads the
environment at import time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Profile = Literal["dev", "test", "prod"]

# Profiles only change defaults; an explicitly set variable always wins.
_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {},
    "test": {"log_format": "json", "coordinator_lease_seconds": 5.0},
    "prod": {"log_format": "json", "auth_required": True},
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DUCKMESH_", extra="ignore", toml_file="duckmesh.toml", validate_default=True
    )

    profile: Profile = "dev"
    state_dir: Path = Path(".duckmesh")
    catalog_dsn: str | None = None
    catalog_pool_size: int = Field(default=8, ge=1, le=200)
    object_store_url: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    http_addr: str = "127.0.0.1:8080"
    auth_required: bool = True
    bootstrap_tenant: str = Field(default="default", pattern=r"^[a-z_][a-z0-9_-]{0,62}$")
    bootstrap_api_key: str | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "text", "auto"] = "auto"
    service_name: str = "duckmesh"

    # ingest
    idempotency_window: timedelta = timedelta(days=7)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_records_per_request: int = Field(default=10_000, ge=1)
    max_payload_bytes: int = Field(default=1024 * 1024, ge=64)
    max_backfill_bytes: int = Field(default=2 * 1024**3, ge=1024)
    ingest_rate_limit: float = Field(default=0.0, ge=0)
    max_pending_events_per_tenant: int = Field(default=5_000_000, ge=0)

    # coordinator
    coordinator_flush_interval_ms: int = Field(default=200, ge=1)
    coordinator_max_batch_events: int = Field(default=50_000, ge=1)
    coordinator_max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    coordinator_lease_seconds: float = Field(default=30.0, gt=0)
    coordinator_max_attempts: int = Field(default=5, ge=1)
    coordinator_id: str | None = None

    # query
    query_default_row_limit: int = Field(default=10_000, ge=1)
    query_max_row_limit: int = Field(default=1_000_000, ge=1)
    query_timeout_ms: int = Field(default=30_000, ge=10)
    query_memory_limit: str = "1GB"
    query_threads: int = Field(default=2, ge=1)
    query_max_concurrency: int = Field(default=8, ge=1)
    query_queue_timeout_ms: int = Field(default=2_000, ge=0)
    max_consistency_timeout_ms: int = Field(default=60_000, ge=0)
    barrier_poll_interval_ms: int = Field(default=1_000, ge=10)
    cache_dir: Path | None = None
    cache_max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)

    # maintenance
    maintenance_compaction_interval_s: float = Field(default=60.0, gt=0)
    maintenance_compaction_min_input_files: int = Field(default=8, ge=2)
    maintenance_compaction_target_file_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    maintenance_compaction_max_input_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    maintenance_retention_interval_s: float = Field(default=300.0, gt=0)
    maintenance_integrity_interval_s: float = Field(default=3600.0, gt=0)
    maintenance_keep_snapshots: int = Field(default=50, ge=1)
    maintenance_snapshot_min_age: timedelta = timedelta(hours=1)
    maintenance_gc_safety_age: timedelta = timedelta(minutes=10)
    maintenance_created_by: str | None = None

    # object store retries
    storage_retry_attempts: int = Field(default=6, ge=1)
    storage_retry_base_delay_ms: int = Field(default=50, ge=1)

    @field_validator("http_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("DUCKMESH_HTTP_ADDR must look like HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @field_validator("idempotency_window", "maintenance_snapshot_min_age", "maintenance_gc_safety_age", mode="before")
    @classmethod
    def _seconds_or_iso(cls, value: Any) -> Any:
        """Durations: a number of seconds ("600"), ISO 8601 ("PT10M"), "HH:MM:SS" or "7 days"."""
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return timedelta(seconds=float(value))
        return value

    @field_validator("object_store_url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file://", "s3://")):
            raise ValueError("DUCKMESH_OBJECT_STORE_URL must start with file:// or s3://")
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = str(data.get("profile", "dev"))
        for key, value in _PROFILE_DEFAULTS.get(profile, {}).items():
            data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _check_prod(self) -> Settings:
        if self.profile == "prod" and not self.catalog_dsn:
            raise ValueError("profile prod needs DUCKMESH_CATALOG_DSN (no embedded database in prod)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def http_host(self) -> str:
        return self.http_addr.rpartition(":")[0].strip("[]")

    @property
    def http_port(self) -> int:
        return int(self.http_addr.rpartition(":")[2])

    @property
    def resolved_object_store_url(self) -> str:
        if self.object_store_url:
            return self.object_store_url
        return (self.state_dir.resolve() / "objects").as_uri()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.state_dir / "cache").resolve()

    @property
    def flush_interval(self) -> float:
        return self.coordinator_flush_interval_ms / 1000.0
