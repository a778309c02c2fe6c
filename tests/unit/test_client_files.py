"""Files the client loads: formats, deterministic keys, JSON-safe values, batch bounds."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckmesh.client.files import FileFormat, detect_format, json_safe, read_batches
from duckmesh.errors import ClientConfigError


def records(path: Path, fmt: FileFormat, key_column: str | None = None) -> list[dict[str, object]]:
    batches = read_batches(path, fmt, key_prefix="f", key_column=key_column)
    return [orjson.loads(part) for batch in batches for part in batch.parts]


def test_the_format_comes_from_the_extension_else_from_the_content(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b").write_text('{"id": 1}\n')
    (tmp_path / "c").write_text("id,name\n1,x\n")
    pq.write_table(pa.table({"id": [1]}), tmp_path / "d")
    assert [detect_format(tmp_path / n) for n in ["a.jsonl", "b", "c", "d"]] == ["ndjson", "ndjson", "csv", "parquet"]


def test_keys_are_the_prefix_and_row_number_or_a_columns_value(tmp_path: Path) -> None:
    source = tmp_path / "x.ndjson"
    source.write_text('{"id": 7}\n\n{"id": 9}\n')
    assert [r["idempotency_key"] for r in records(source, "ndjson")] == ["f-0", "f-1"]
    assert [r["idempotency_key"] for r in records(source, "ndjson", key_column="id")] == ["7", "9"]


def test_batches_close_at_the_row_bound_and_report_how_far_into_the_file_they_reach(tmp_path: Path) -> None:
    source = tmp_path / "x.ndjson"
    source.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(5)))
    batches = list(read_batches(source, "ndjson", key_prefix="f", batch_rows=2))
    assert [b.rows for b in batches] == [2, 2, 1]
    assert batches[-1].position == source.stat().st_size


def test_a_line_that_is_not_a_json_object_names_its_line_number(tmp_path: Path) -> None:
    source = tmp_path / "x.ndjson"
    source.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(ClientConfigError, match="line 2"):
        records(source, "ndjson")


def test_arrow_values_become_the_json_the_ingest_api_accepts() -> None:
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert json_safe(moment) == "2024-05-01T12:00:00Z"
    assert json_safe(date(2024, 5, 1)) == "2024-05-01"
    assert json_safe(Decimal("12.50")) == "12.50"
    assert json_safe(float("nan")) == "NaN" and json_safe(float("-inf")) == "-Infinity"
    assert json_safe(b"\x00\x01") == "AAE="
    assert json_safe({"a": [moment]}) == {"a": ["2024-05-01T12:00:00Z"]}
