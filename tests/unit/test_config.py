from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from duckmesh.config import REFERENCE_VARIABLES, Settings, unknown_variables


@pytest.mark.parametrize(("raw", "expected"), [
    ("600", timedelta(minutes=10)), ("0", timedelta(0)), ("PT10M", timedelta(minutes=10)),
    ("00:10:00", timedelta(minutes=10)), ("7 days", timedelta(days=7)), ("1 hour", timedelta(hours=1)),
    ("30m", timedelta(minutes=30)), ("1h", timedelta(hours=1)), ("7d", timedelta(days=7)),
    ("500ms", timedelta(milliseconds=500)), ("1h30m", timedelta(minutes=90)), ("2.5s", timedelta(seconds=2.5)),
    ("2 hours 15 minutes", timedelta(minutes=135)),
])
def test_durations_accept_seconds_iso_clock_go_and_word_forms(monkeypatch: pytest.MonkeyPatch, raw: str, expected: timedelta) -> None:
    monkeypatch.setenv("DUCKMESH_MAINTENANCE_SNAPSHOT_MIN_AGE", raw)
    assert Settings().maintenance_snapshot_min_age == expected


def test_profiles_change_defaults_but_explicit_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUCKMESH_PROFILE", "test")
    assert Settings().coordinator_lease_seconds == 5.0
    monkeypatch.setenv("DUCKMESH_COORDINATOR_LEASE_SECONDS", "7")
    assert Settings().coordinator_lease_seconds == 7.0


def test_prod_needs_an_external_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUCKMESH_PROFILE", "prod")
    with pytest.raises(ValidationError, match="CATALOG_DSN"):
        Settings()
    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", "postgresql://db/duckmesh")
    assert Settings().auth_required is True


@pytest.mark.parametrize(("name", "raw", "field", "expected"), [
    ("DUCKMESH_QUERY_TIMEOUT_MS", "2s", "query_timeout_ms", 2000),
    ("DUCKMESH_QUERY_TIMEOUT_MS", "1500", "query_timeout_ms", 1500),
    ("DUCKMESH_COORDINATOR_LEASE_SECONDS", "1m", "coordinator_lease_seconds", 60.0),
    ("DUCKMESH_MAINTENANCE_COMPACTION_INTERVAL_S", "PT2M", "maintenance_compaction_interval_s", 120.0),
    ("DUCKMESH_AI_TIMEOUT", "15s", "ai_timeout", timedelta(seconds=15)),
])
def test_settings_named_in_a_unit_take_any_duration_form_and_convert_it(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(name, raw)
    assert getattr(Settings(), field) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("67108864", 64 * 1024**2), ("64MiB", 64 * 1024**2), ("64 MiB", 64 * 1024**2), ("64Mi", 64 * 1024**2),
    ("1GB", 10**9), ("2048kB", 2_048_000), ("1.5GiB", 3 * 1024**3 // 2), ("4194304 B", 4 * 1024**2),
])
def test_every_byte_size_setting_accepts_plain_bytes_and_si_or_iec_units(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    byte_settings = [name for name in Settings.model_fields if name.endswith("_bytes")]
    assert len(byte_settings) >= 7
    for name in byte_settings:
        monkeypatch.setenv(f"DUCKMESH_{name.upper()}", raw)
    settings = Settings()
    assert {name: getattr(settings, name) for name in byte_settings} == dict.fromkeys(byte_settings, expected)


def test_a_go_style_listen_address_without_host_listens_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUCKMESH_HTTP_ADDR", ":8080")
    settings = Settings()
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)


def test_query_assist_is_off_by_default_and_needs_an_endpoint_and_model_when_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().ai_translate_enabled is False
    monkeypatch.setenv("DUCKMESH_AI_TRANSLATE_ENABLED", "true")
    with pytest.raises(ValidationError, match="DUCKMESH_AI_BASE_URL"):
        Settings()
    monkeypatch.setenv("DUCKMESH_AI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DUCKMESH_AI_MODEL", "local-model")
    monkeypatch.setenv("DUCKMESH_AI_API_KEY", "sk-test")
    settings = Settings()
    assert settings.ai_api_key is not None and "sk-test" not in repr(settings)


@pytest.mark.parametrize(("name", "value"), [
    ("DUCKMESH_HTTP_ADDR", "nonsense"), ("DUCKMESH_HTTP_ADDR", ":http"), ("DUCKMESH_OBJECT_STORE_URL", "ftp://x"),
    ("DUCKMESH_MAINTENANCE_GC_SAFETY_AGE", "soon"), ("DUCKMESH_MAINTENANCE_GC_SAFETY_AGE", "5 parsecs"),
    ("DUCKMESH_COORDINATOR_LEASE_SECONDS", "-1"), ("DUCKMESH_QUERY_TIMEOUT_MS", "1.0005s"),
    ("DUCKMESH_MAX_BODY_BYTES", "64M"), ("DUCKMESH_MAX_BODY_BYTES", "1.5B"), ("DUCKMESH_MAX_BODY_BYTES", "lots"),
    ("DUCKMESH_AI_BASE_URL", "ftp://model"), ("DUCKMESH_AI_TEMPERATURE", "3"), ("DUCKMESH_AI_TIMEOUT", "0s"),
    ("DUCKMESH_UI_SCHEMA_SAMPLE_ROWS", "21"),
])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("lease", ["DUCKMESH_COORDINATOR_LEASE_SECONDS", "DUCKMESH_MAINTENANCE_JOB_LEASE_SECONDS",
                                   "DUCKMESH_BACKFILL_LEASE_SECONDS"])
def test_a_lease_not_far_shorter_than_the_gc_safety_age_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, lease: str
) -> None:
    monkeypatch.setenv("DUCKMESH_MAINTENANCE_GC_SAFETY_AGE", "240")
    monkeypatch.setenv(lease, "61")
    with pytest.raises(ValidationError, match=f"{lease}.*GC_SAFETY_AGE"):
        Settings()
    monkeypatch.setenv(lease, "60")
    assert Settings().maintenance_gc_safety_age == timedelta(minutes=4)


def test_variables_no_setting_reads_are_named_with_what_to_set_instead() -> None:
    found = dict(unknown_variables({
        "DUCKMESH_OBJECTSTORE_BUCKET": "events", "DUCKMESH_LOG_JSON": "true", "DUCKMESH_CATALOG_DNS": "x",
        "DUCKMESH_NO_SUCH_THING": "1", "DUCKMESH_HTTP_ADDR": ":8080", "DUCKMESH_SERVER": "http://x",
        "DUCKMESH_API_KEY": "k", "HOME": "/root",
    }))
    assert found == {
        "DUCKMESH_OBJECTSTORE_BUCKET": "DUCKMESH_OBJECT_STORE_URL=s3://bucket/prefix",  # the reference's name
        "DUCKMESH_LOG_JSON": "DUCKMESH_LOG_FORMAT=json",
        "DUCKMESH_CATALOG_DNS": "DUCKMESH_CATALOG_DSN",  # a typo
        "DUCKMESH_NO_SUCH_THING": None,
    }
    for instead in REFERENCE_VARIABLES.values():  # every setting named instead exists
        if instead.startswith("DUCKMESH_"):
            assert not unknown_variables({instead.split()[0].split("=")[0]: "x"}), instead
