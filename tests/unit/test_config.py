from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from duckmesh.config import Settings


@pytest.mark.parametrize(("raw", "expected"), [
    ("600", timedelta(minutes=10)), ("0", timedelta(0)), ("PT10M", timedelta(minutes=10)),
    ("00:10:00", timedelta(minutes=10)), ("7 days", timedelta(days=7)),
])
def test_durations_accept_seconds_iso_and_clock_forms(monkeypatch: pytest.MonkeyPatch, raw: str, expected: timedelta) -> None:
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


@pytest.mark.parametrize(("name", "value"), [
    ("DUCKMESH_HTTP_ADDR", "nonsense"), ("DUCKMESH_OBJECT_STORE_URL", "ftp://x"),
    ("DUCKMESH_MAINTENANCE_GC_SAFETY_AGE", "soon"), ("DUCKMESH_COORDINATOR_LEASE_SECONDS", "-1"),
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
