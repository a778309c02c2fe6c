"""Typed settings, read from ``DUCKMESH_*`` variables (and an optional ``duckmesh.toml``).

Built once at the entry point (``cli.py``) and passed down; nothing reads the
environment at import time.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Profile = Literal["dev", "test", "prod"]
LEASE_SAFETY_FACTOR = 4

# Profiles only change defaults; an explicitly set variable always wins.
_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {},
    "test": {"log_format": "json", "coordinator_lease_seconds": 5.0},
    "prod": {"log_format": "json", "auth_required": True},
}

# Durations: Go style ("500ms", "30m", "1h30m", "7d") or words ("7 days", "1 hour"), besides a
# number of seconds, ISO 8601 ("PT10M") and "HH:MM:SS" (pydantic's own forms).
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
    "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
    "days": 86400, "w": 604800, "week": 604800, "weeks": 604800,
}
_DURATION_PART = re.compile(
    r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(map(re.escape, _DURATION_UNITS), key=len, reverse=True)) + r")(?![a-zµ])",
    re.IGNORECASE,
)
# Sizes: a plain number of bytes, or a number and a unit, SI (kB = 1000) or IEC (KiB = 1024).
_SIZE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:(?P<p>[kmgt])(?P<i>i)?(?P<b>b)?|b)?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_PLAIN_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")
_TIMEDELTA = TypeAdapter(timedelta)


MIN_KEY_LENGTH = 32
MIN_KEY_BITS = 128


def strong_key(key: str) -> bool:
    """Long enough and varied enough to be random: an estimate of its entropy from the character
    classes it uses, with too few distinct characters ruled out ("aaaa...", "abab...")."""
    if len(key) < MIN_KEY_LENGTH or len(set(key)) < 12:
        return False
    classes = [any(c.islower() for c in key) * 26, any(c.isupper() for c in key) * 26,
               any(c.isdigit() for c in key) * 10, any(not c.isalnum() for c in key) * 32]
    return len(key) * math.log2(max(sum(classes), 2)) >= MIN_KEY_BITS


def parse_duration(text: str) -> timedelta:
    """Any documented duration form to a timedelta; raises ValueError naming the forms."""
    if _PLAIN_NUMBER.match(text):
        return timedelta(seconds=float(text))
    compact = text.strip()
    parts = _DURATION_PART.findall(compact)
    if parts and not _DURATION_PART.sub("", compact).replace(",", "").strip():
        return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
    try:
        return _TIMEDELTA.validate_python(compact)
    except ValidationError:
        raise ValueError(
            f"{text!r} is not a duration; use seconds (600), 500ms, 30m, 1h, 7d, '7 days' or ISO 8601 (PT10M)"
        ) from None


def parse_size(text: str) -> int:
    """A byte size: 67108864, 64MiB, 64 MiB, 64Mi, 1GB, 512kB (IEC units are 1024-based, SI 1000-based)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a byte size; use bytes (67108864) or a unit: 64MiB, 64 MiB, 1GB")
    number, prefix = Decimal(match["n"]), match["p"]
    if prefix:
        if not (match["i"] or match["b"]):
            unit = match["n"] + prefix.upper()
            raise ValueError(f"{text!r} is ambiguous; write {unit}iB (1024-based) or {unit}B (1000-based)")
        number *= Decimal(1024 if match["i"] else 1000) ** _SIZE_POWERS[prefix.lower()]
    if number != number.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(number)


def _in_field_unit(name: str, annotation: Any, text: str) -> Any:
    """Convert a duration or size text to the unit the setting's name (or type) says."""
    if name.endswith("_bytes"):
        return parse_size(text)
    if annotation is timedelta:
        return parse_duration(text)
    if _PLAIN_NUMBER.match(text):
        return text  # a bare number keeps the unit in the setting's name
    if name.endswith("_ms"):
        return parse_duration(text) / timedelta(milliseconds=1)
    if name.endswith(("_s", "_seconds")):
        return parse_duration(text).total_seconds()
    return text


def _listen_addr(value: str, name: str, example: str) -> str:
    host, sep, port = value.rpartition(":")
    if sep and not host:
        host = "0.0.0.0"  # ":8080" means every interface, as in Go
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name} must look like HOST:PORT or :PORT, e.g. {example}")
    return f"{host}:{port}"


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
    http_addr: str = "127.0.0.1:8080"  # ":8080" (Go style) listens on every interface
    # Prometheus metrics (every tenant's series) on their own listener, loopback by default; "off" disables.
    metrics_addr: str | None = "127.0.0.1:9464"
    auth_required: bool = True
    bootstrap_tenant: str = Field(default="default", pattern=r"^[a-z_][a-z0-9_-]{0,62}$")
    bootstrap_api_key: str | None = None
    # How long a process trusts a key it verified (revocations reach every process at once anyway).
    auth_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    log_level: str = "INFO"
    log_format: Literal["json", "text", "auto"] = "auto"
    service_name: str = "duckmesh"

    # ingest
    idempotency_window: timedelta = timedelta(days=7)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_records_per_request: int = Field(default=10_000, ge=1)
    max_payload_bytes: int = Field(default=1024 * 1024, ge=64)
    max_backfill_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_backfill_rows: int = Field(default=10_000_000, ge=1)
    max_backfill_decoded_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    ingest_rate_limit: float = Field(default=0.0, ge=0)
    max_pending_events_per_tenant: int = Field(default=5_000_000, ge=0)
    backfill_lease_seconds: float = Field(default=60.0, gt=0)
    dead_letter_retention: timedelta = timedelta(days=30)

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
    query_max_concurrency: int = Field(default=4, ge=1)
    query_max_concurrency_per_tenant: int = Field(default=2, ge=1)
    query_queue_timeout_ms: int = Field(default=2_000, ge=0)
    query_workers: int = Field(default=4, ge=1, le=256)
    query_worker_max_memory_bytes: int | None = Field(default=None, ge=1024 * 1024)
    query_max_result_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    query_max_sql_bytes: int = Field(default=256 * 1024, ge=1024)
    query_max_spill_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
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
    maintenance_job_lease_seconds: float = Field(default=60.0, gt=0)

    # object store retries
    storage_retry_attempts: int = Field(default=6, ge=1)
    storage_retry_base_delay_ms: int = Field(default=50, ge=1)

    # query assist: natural language -> SQL through an OpenAI-compatible chat-completions endpoint
    ai_translate_enabled: bool = False
    ai_base_url: str | None = None
    ai_model: str | None = None
    ai_api_key: SecretStr | None = None
    ai_timeout: timedelta = Field(default=timedelta(seconds=15), gt=timedelta(0), le=timedelta(minutes=5))
    ai_temperature: float = Field(default=0.1, ge=0, le=2)
    ui_schema_sample_rows: int = Field(default=3, ge=0, le=20)

    @field_validator("*", mode="before")
    @classmethod
    def _units(cls, value: Any, info: ValidationInfo) -> Any:
        """Durations and byte sizes in every documented form, for every setting that holds one."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        return _in_field_unit(info.field_name, cls.model_fields[info.field_name].annotation, value)

    @field_validator("http_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        return _listen_addr(value, "DUCKMESH_HTTP_ADDR", "127.0.0.1:8080")

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics_addr(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none", "false"):
            return None
        return _listen_addr(value, "DUCKMESH_METRICS_ADDR", "127.0.0.1:9464")

    @field_validator("ai_base_url")
    @classmethod
    def _check_ai_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("DUCKMESH_AI_BASE_URL must start with http:// or https://")
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
        if self.profile == "prod" and self.bootstrap_api_key is not None and not strong_key(self.bootstrap_api_key):
            raise ValueError(
                f"profile prod needs a strong DUCKMESH_BOOTSTRAP_API_KEY: at least {MIN_KEY_LENGTH} characters and"
                f" about {MIN_KEY_BITS} bits of randomness (e.g. `openssl rand -hex 32`), or leave it unset and"
                " use the key `duckmesh up` prints"
            )
        if self.ai_translate_enabled and not (self.ai_base_url and self.ai_model):
            raise ValueError("DUCKMESH_AI_TRANSLATE_ENABLED needs DUCKMESH_AI_BASE_URL and DUCKMESH_AI_MODEL")
        return self

    @model_validator(mode="after")
    def _check_leases(self) -> Settings:
        """Every lease must be far shorter than the GC safety age: a worker that stalls past its
        lease can no longer publish, and nothing it could still publish is ever old enough to be
        collected (ADR 0006)."""
        safety = self.maintenance_gc_safety_age.total_seconds()
        for name in ("coordinator_lease_seconds", "maintenance_job_lease_seconds", "backfill_lease_seconds"):
            lease = float(getattr(self, name))
            if lease * LEASE_SAFETY_FACTOR > safety:
                raise ValueError(
                    f"DUCKMESH_{name.upper()} ({lease:g} s) must be at most 1/{LEASE_SAFETY_FACTOR} of"
                    f" DUCKMESH_MAINTENANCE_GC_SAFETY_AGE ({safety:g} s); shorten the lease or raise the safety age"
                )
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

    @model_validator(mode="after")
    def _check_listeners(self) -> Settings:
        if self.metrics_addr is not None and self.metrics_addr.rpartition(":")[2] == str(self.http_port):
            raise ValueError("DUCKMESH_METRICS_ADDR must use another port than DUCKMESH_HTTP_ADDR")
        return self

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
    def resolved_query_worker_max_memory_bytes(self) -> int:
        """A query worker's address-space limit: twice DuckDB's memory limit (DuckDB reserves more
        address space than it uses) plus 2 GiB for the interpreter, libraries and the encoded result."""
        if self.query_worker_max_memory_bytes is not None:
            return self.query_worker_max_memory_bytes
        return 2 * parse_size(self.query_memory_limit) + 2 * 1024**3

    @property
    def flush_interval(self) -> float:
        return self.coordinator_flush_interval_ms / 1000.0


# DUCKMESH_* variables read outside Settings: the client's server, key and profile file, the
# CLI's traceback switch and the test suite's catalog.
OTHER_VARIABLES = frozenset({"DUCKMESH_SERVER", "DUCKMESH_API_KEY", "DUCKMESH_CONFIG", "DUCKMESH_TRACEBACK",
                             "DUCKMESH_TEST_DSN"})


# Settings of the reference implementation that are named differently here (or have no
# counterpart): what to set instead (docs/coming-from-reference.md).
REFERENCE_VARIABLES = {
    "DUCKMESH_CATALOG_MAX_OPEN_CONNS": "DUCKMESH_CATALOG_POOL_SIZE",
    "DUCKMESH_OBJECTSTORE_BUCKET": "DUCKMESH_OBJECT_STORE_URL=s3://bucket/prefix",
    "DUCKMESH_OBJECTSTORE_PREFIX": "DUCKMESH_OBJECT_STORE_URL=s3://bucket/prefix",
    "DUCKMESH_OBJECTSTORE_ENDPOINT": "DUCKMESH_S3_ENDPOINT",
    "DUCKMESH_OBJECTSTORE_USE_SSL": "DUCKMESH_S3_ENDPOINT with an https URL",
    "DUCKMESH_OBJECTSTORE_REGION": "DUCKMESH_S3_REGION",
    "DUCKMESH_OBJECTSTORE_ACCESS_KEY": "DUCKMESH_S3_ACCESS_KEY_ID",
    "DUCKMESH_OBJECTSTORE_SECRET_KEY": "DUCKMESH_S3_SECRET_ACCESS_KEY",
    "DUCKMESH_OBJECTSTORE_AUTO_CREATE_BUCKET": "nothing: create the bucket beforehand",
    "DUCKMESH_COORDINATOR_CONSUMER_ID": "DUCKMESH_COORDINATOR_ID",
    "DUCKMESH_COORDINATOR_CREATED_BY": "DUCKMESH_COORDINATOR_ID",
    "DUCKMESH_COORDINATOR_CLAIM_LIMIT": "DUCKMESH_COORDINATOR_MAX_BATCH_EVENTS",
    "DUCKMESH_COORDINATOR_POLL_INTERVAL": "DUCKMESH_COORDINATOR_FLUSH_INTERVAL_MS",
    "DUCKMESH_MAINTENANCE_COMPACTION_INTERVAL": "DUCKMESH_MAINTENANCE_COMPACTION_INTERVAL_S",
    "DUCKMESH_MAINTENANCE_RETENTION_INTERVAL": "DUCKMESH_MAINTENANCE_RETENTION_INTERVAL_S",
    "DUCKMESH_LOG_JSON": "DUCKMESH_LOG_FORMAT=json",
    "DUCKMESH_AUTH_STATIC_KEYS": "keys in the catalog (duckmesh key create, DUCKMESH_BOOTSTRAP_API_KEY)",
}


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``DUCKMESH_*`` variables no setting reads (a typo, or a name of the reference implementation),
    each with what to set instead when that is known or a setting's name is close."""
    known = {f"DUCKMESH_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    return [(name, REFERENCE_VARIABLES.get(name)
             or next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)), None))
            for name in sorted(environ) if name.startswith("DUCKMESH_") and name not in known]
