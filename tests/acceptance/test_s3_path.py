"""The production object-store path end to end: real processes on S3 (moto on loopback) — ingest,
queries through a tiny file cache (downloads and eviction), compaction, retention/GC deleting from the
bucket, deep integrity, and backup with a restore drill that passes, then fails once an object is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.acceptance.conftest import LOOPBACK, Spawner, http_client
from tests.conftest import DUMMY_SECRET, REGION, KeyMaker, MotoServer, free_port
from tests.helpers import create_table

pytestmark = pytest.mark.s3

CACHE_MAX_BYTES = 1024 * 1024  # the smallest cache the settings allow: every query evicts
BATCHES, ROWS = 8, 5000  # ~215 kB per file: 1.7 MB in all, more than the cache holds


def _bucket_keys(moto: MotoServer, bucket: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name=REGION, aws_access_key_id=DUMMY_SECRET,
                      aws_secret_access_key=DUMMY_SECRET)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dm/")
    return {item["Key"].removeprefix("dm/") for page in pages for item in page.get("Contents", [])
            if not item["Key"].startswith("dm/_health/")}


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _cached_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


async def test_ingest_cached_queries_compaction_gc_integrity_and_backup_all_work_on_s3(
    spawn: Spawner, dsn: str, make_key: KeyMaker, moto_server: MotoServer, isolated_aws_env: None, tmp_path: Path
) -> None:
    bucket = moto_server.bucket()
    cache = tmp_path / "cache"
    settings = {
        "DUCKMESH_CATALOG_DSN": dsn, "DUCKMESH_OBJECT_STORE_URL": f"s3://{bucket}/dm",
        "DUCKMESH_S3_ENDPOINT": moto_server.endpoint, "DUCKMESH_S3_REGION": REGION,
        "DUCKMESH_S3_ACCESS_KEY_ID": DUMMY_SECRET, "DUCKMESH_S3_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "DUCKMESH_CACHE_DIR": str(cache), "DUCKMESH_CACHE_MAX_BYTES": str(CACHE_MAX_BYTES),
        "DUCKMESH_MAINTENANCE_COMPACTION_MIN_INPUT_FILES": "2", "DUCKMESH_MAINTENANCE_KEEP_SNAPSHOTS": "1",
        # maintenance from the CLI: files that left the live set are collected after one second
        "DUCKMESH_MAINTENANCE_SNAPSHOT_MIN_AGE": "0", "DUCKMESH_MAINTENANCE_GC_SAFETY_AGE": "1",
        "DUCKMESH_COORDINATOR_LEASE_SECONDS": "0.25", "DUCKMESH_MAINTENANCE_JOB_LEASE_SECONDS": "0.25",
        "DUCKMESH_BACKFILL_LEASE_SECONDS": "0.25",
    }
    # The API runs maintenance on demand with those settings; the coordinator keeps its usual lease.
    api = spawn.start("api", settings={**settings, "DUCKMESH_HTTP_ADDR": f"{LOOPBACK}:{free_port()}"}, name="api")
    spawn.start("coordinator", name="coordinator", settings={
        **settings, "DUCKMESH_HTTP_ADDR": f"{LOOPBACK}:{free_port()}", "DUCKMESH_COORDINATOR_LEASE_SECONDS": "5",
        "DUCKMESH_MAINTENANCE_GC_SAFETY_AGE": "60"})
    headers = await make_key("acme")
    query = {"sql": "SELECT count(*), count(DISTINCT id), sum(length(name)) FROM events"}

    async with http_client(api.base_url) as http:
        await create_table(http, headers)
        token = 0
        for batch in range(BATCHES):  # one snapshot and one data file each; incompressible names
            body = {"records": [{"idempotency_key": f"b{batch}-{i}", "payload": {
                "id": batch * ROWS + i, "name": hashlib.sha256(f"{batch}-{i}".encode()).hexdigest() * 2,
                "amount": "1.00", "at": "2024-05-01T12:00:00Z"}} for i in range(ROWS)]}
            response = await http.post("/v1/ingest/events", headers=headers, json=body)
            assert response.status_code == 200, response.text
            token = response.json()["max_visibility_token"]
            strict = await http.post("/v1/query", headers=headers, json={
                "sql": "SELECT count(*) FROM events", "min_visibility_token": token, "consistency_timeout_ms": 30_000})
            assert strict.status_code == 200, strict.text
        small_files = _bucket_keys(moto_server, bucket)
        assert len(small_files) == BATCHES

        async def run_query() -> tuple[list[Any], float]:
            response = await http.post("/v1/query", headers=headers, json=query)
            assert response.status_code == 200, response.text
            async with http_client(api.metrics_url) as scrape:
                metrics = (await scrape.get("/v1/metrics")).text
            return response.json()["rows"], _metric(metrics, "duckmesh_query_cache_misses_total")

        expected = [[BATCHES * ROWS, BATCHES * ROWS, BATCHES * ROWS * 128]]
        rows, misses = await run_query()
        assert rows == expected
        assert _cached_bytes(cache) <= CACHE_MAX_BYTES, "the cache is evicted back under its bound"
        rows, misses_again = await run_query()
        assert rows == expected
        assert misses_again - misses >= 2, "evicted files are downloaded again"

        compacted = await http.post("/v1/compaction/run", headers=headers, json={})
        assert compacted.status_code == 200, compacted.text
        assert compacted.json()["summary"]["tables"]["events"]["status"] == "completed", compacted.text
        assert (await run_query())[0] == expected

        await asyncio.sleep(1.5)  # past the safety age
        retention = await http.post("/v1/retention/run", headers=headers, json={})
        assert retention.status_code == 200, retention.text
        remaining = _bucket_keys(moto_server, bucket)
        assert len(remaining) == 1 and not remaining & small_files, f"GC left {remaining}: {retention.text}"
        assert (await run_query())[0] == expected

    integrity = spawn.run("integrity", "run", "--tenant", "acme", "--deep", settings=settings)
    assert integrity.returncode == 0, integrity.stderr
    assert json.loads(integrity.stdout)["files_checked"] == 1

    backup = spawn.run("backup", "--output", str(tmp_path / "backup"), settings=settings)
    assert backup.returncode == 0, backup.stderr
    made = json.loads(backup.stdout)
    assert made["objects"] == 1 and made["problems"] == 0
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["object_store"] == f"s3://{bucket}/dm" and manifest["objects"][0]["path"] in remaining
    drill = spawn.run("restore-drill", str(tmp_path / "backup"), "--json", settings=settings)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert json.loads(drill.stdout)["passed"] is True

    boto3.client("s3", endpoint_url=moto_server.endpoint, region_name=REGION, aws_access_key_id=DUMMY_SECRET,
                 aws_secret_access_key=DUMMY_SECRET).delete_object(Bucket=bucket, Key=f"dm/{remaining.pop()}")
    failed = spawn.run("restore-drill", str(tmp_path / "backup"), settings=settings)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL  object hashes" in failed.stdout and "FAIL  integrity" in failed.stdout
    assert "restore drill FAILED" in failed.stdout
    print(f"\ns3 path: backup {made['seconds']} s for {made['objects']} object(s);"
          f" drill {json.loads(drill.stdout)['seconds']} s")
