"""Logging with trace ids. The entry point calls ``configure``; libraries only log.

JSON lines: every record carries ``timestamp, level, service, event`` plus the current ``trace_id``
(from a context variable set per request or per batch) and any structured ``extra`` fields.
Text (for people at a terminal): ``time level event key=value ... trace=...``; an access-log line
reads ``GET /v1/query 200 12.3 ms``.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import sys
import time
import warnings
from typing import Any

import orjson

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def new_trace_id() -> str:
    return secrets.token_hex(16)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "timestamp": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "event": record.getMessage(),
            "logger": record.name,
        }
        trace_id = trace_id_var.get()
        if trace_id:
            entry["trace_id"] = trace_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """One readable line per record; structured fields follow the event as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = _extras(record)
        if record.getMessage() == "http_request" and {"method", "status"} <= fields.keys():
            head = (f"{fields.pop('method')} {fields.pop('path', fields.get('route'))} {fields.pop('status')}"
                    f" {fields.pop('duration_ms', 0):.1f} ms")
            fields.pop("route", None)
        else:
            head = record.getMessage()
        parts = [f"{clock}.{int(record.msecs):03d}", f"{record.levelname.lower():<7}", head]
        parts += [f"{key}={value}" for key, value in fields.items()]
        trace_id = trace_id_var.get()
        if trace_id:
            parts.append(f"trace={trace_id}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str) -> str:
    """``auto``: text when stderr is a terminal (a person is watching), JSON lines otherwise."""
    if fmt == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return fmt


def configure(service: str, level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver logs every initdb/pg_ctl command with its whole output at INFO: the embedded
    # PostgreSQL's start-up chatter stays out of DuckMesh's log (its own log is under pg/log).
    for noisy in ("uvicorn.access", "botocore", "boto3", "urllib3", "psycopg.pool", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
