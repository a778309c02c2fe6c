"""Logs for people (text on a terminal) and for machines (JSON lines otherwise)."""

from __future__ import annotations

import logging

import orjson
import pytest

from duckmesh.observability.logging import JsonFormatter, TextFormatter, resolve_format, trace_id_var


def access_record() -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": "http_request", "levelname": "INFO", "levelno": logging.INFO})
    record.__dict__.update(method="POST", path="/v1/query", route="/v1/query", status=200, duration_ms=12.345)
    return record


def test_a_text_access_line_shows_method_path_status_duration_and_trace_id() -> None:
    token = trace_id_var.set("abc123")
    try:
        line = TextFormatter().format(access_record())
    finally:
        trace_id_var.reset(token)
    assert "info" in line and line.endswith("POST /v1/query 200 12.3 ms trace=abc123")


def test_other_text_lines_carry_their_fields_as_key_value() -> None:
    record = logging.makeLogRecord({"msg": "coordinator_started", "levelname": "INFO", "owner": "host:1"})
    assert TextFormatter().format(record).endswith("coordinator_started owner=host:1")


def test_json_lines_keep_every_field() -> None:
    entry = orjson.loads(JsonFormatter("duckmesh-api").format(access_record()))
    assert (entry["event"], entry["method"], entry["path"], entry["status"]) == ("http_request", "POST", "/v1/query", 200)


@pytest.mark.parametrize(("tty", "expected"), [(True, "text"), (False, "json")])
def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch, tty: bool, expected: str) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    assert resolve_format("auto") == expected
    assert resolve_format("json") == "json" and resolve_format("text") == "text"
