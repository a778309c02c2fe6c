"""Natural-language query assist: a question becomes a suggested SQL query, asked of an
OpenAI-compatible chat-completions endpoint.

What the endpoint sees: the question and the caller tenant's overview (typed columns, keys,
row counts, a few shortened sample rows) — never another tenant's tables. What comes back is
only a suggestion: it is never executed here. It is cleaned (code fences, trailing
semicolons), refused when it is not SQL at all, and checked by the same sandbox a query
goes through, so the caller learns whether running it would be allowed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from duckmesh.errors import (
    QueryInvalid,
    SqlNotAllowed,
    TableNotFound,
    TranslateAnswerInvalid,
    TranslateFailed,
    TranslateTimeout,
)
from duckmesh.query import sandbox
from duckmesh.query.overview import SchemaOverview

log = logging.getLogger(__name__)
PROVIDER = "openai-compatible"
MAX_SQL_CHARS = 20_000
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"^```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n?")
_SYSTEM = (
    "You translate analytics questions into exactly one read-only DuckDB SQL query (PostgreSQL-like syntax). "
    "Answer with the SQL only: no explanation, no markdown."
)
_RULES = (
    "Rules:\n"
    "- Use only the tables listed, by their bare names, and only their columns.\n"
    "- One SELECT (or WITH ... SELECT); no file, URL, settings or catalog functions.\n"
    "- Add LIMIT 200 unless the question asks for something else."
)


@dataclass(frozen=True)
class AssistConfig:
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 15.0
    temperature: float = 0.1
    max_response_bytes: int = 1024 * 1024
    max_context_bytes: int = 64 * 1024

    @property
    def endpoint(self) -> str:
        """``http://host`` and ``http://host/v1`` both mean ``.../v1/chat/completions``."""
        base = self.base_url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    @property
    def host(self) -> str:
        """Where prompts go, without any credentials the URL may carry (for audit and logs)."""
        return str(httpx.URL(self.base_url).host)


@dataclass(frozen=True)
class Suggestion:
    sql: str
    provider: str
    model: str
    sandbox_ok: bool
    sandbox_error_code: str | None
    warnings: tuple[str, ...]
    referenced_tables: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "sql": self.sql, "provider": self.provider, "model": self.model, "sandbox_ok": self.sandbox_ok,
            "sandbox_error_code": self.sandbox_error_code, "warnings": list(self.warnings),
            "referenced_tables": list(self.referenced_tables),
        }


def extract_sql(answer: str) -> str:
    """The SQL in a model's answer: the first fenced block if there is one, without trailing
    semicolons. Raises TranslateAnswerInvalid when what remains is not a SQL statement."""
    text = answer.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    elif text.startswith("```"):  # an unterminated fence
        text = _OPEN_FENCE.sub("", text).rstrip("`")
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    excerpt = answer.strip()[:200]
    if not text:
        raise TranslateAnswerInvalid("the model answered no SQL", answer_excerpt=excerpt)
    if len(text) > MAX_SQL_CHARS:
        raise TranslateAnswerInvalid(f"the model's SQL is longer than {MAX_SQL_CHARS} characters")
    try:
        statements = [s for s in sqlglot.parse(text, read="duckdb") if s is not None]
    except (ParseError, TokenError):
        raise TranslateAnswerInvalid("the model's answer is not SQL", answer_excerpt=excerpt) from None
    # A bare word or expression ("hello", "42") parses, but it is not a statement.
    if not statements or any(isinstance(s, exp.Condition) for s in statements):
        raise TranslateAnswerInvalid("the model's answer is not a SQL statement", answer_excerpt=excerpt)
    return text


def sandbox_verdict(sql: str, overview: SchemaOverview) -> tuple[bool, str | None, tuple[str, ...], tuple[str, ...]]:
    """(allowed, error code, warnings, tables read): the verdict ``POST /v1/query`` would give."""
    try:
        checked = sandbox.check(sql, [t.table_name for t in overview.tables])
    except (SqlNotAllowed, QueryInvalid, TableNotFound) as exc:
        return False, exc.error_code, (f"the sandbox would refuse this query: {exc.message}",), ()
    return True, None, (), tuple(sorted(checked.tables))


def _context(overview: SchemaOverview, limit: int) -> str:
    """The tables as JSON, at most ``limit`` bytes: sample rows go first, then the last tables."""
    tables = [t.to_json() for t in overview.tables]
    if len(orjson.dumps(tables)) > limit:
        tables = [{**t, "sample_rows": []} for t in tables]
    kept: list[dict[str, Any]] = []
    size = 2  # the brackets
    for table in tables:
        size += len(orjson.dumps(table)) + 1
        if size > limit:
            break
        kept.append(table)
    return orjson.dumps(kept).decode()


def build_messages(question: str, overview: SchemaOverview, max_context_bytes: int) -> list[dict[str, str]]:
    user = (
        f"Tables (JSON: typed columns, primary key, row count, sample rows aligned with the columns):\n"
        f"{_context(overview, max_context_bytes)}\n\nQuestion:\n{question.strip()}\n\n{_RULES}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TranslateFailed(f"the model endpoint's answer is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise TranslateFailed(f"the model endpoint's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer_text(body: bytes) -> str:
    try:
        content = orjson.loads(body)["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise TranslateFailed("the model endpoint did not answer with a chat completion") from None
    if not isinstance(content, str):
        raise TranslateFailed("the model endpoint did not answer with a chat completion")
    return content


class QueryAssistant:
    def __init__(self, config: AssistConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport

    async def translate(self, question: str, overview: SchemaOverview) -> Suggestion:
        """Ask the endpoint; raise TranslateTimeout, TranslateFailed or TranslateAnswerInvalid."""
        answer = await self._complete(build_messages(question, overview, self.config.max_context_bytes))
        sql = extract_sql(answer)
        allowed, code, warnings, read = sandbox_verdict(sql, overview)
        return Suggestion(sql, PROVIDER, self.config.model, allowed, code, warnings, read)

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        payload = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature}
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        timeout = self.config.timeout
        try:
            # httpx's timeout bounds each read; asyncio.timeout bounds the whole exchange.
            async with asyncio.timeout(timeout), httpx.AsyncClient(
                timeout=timeout, transport=self._transport, follow_redirects=False
            ) as http, http.stream("POST", self.config.endpoint, json=payload, headers=headers) as response:
                status = response.status_code
                body = await _read_bounded(response, self.config.max_response_bytes)
        except (TimeoutError, httpx.TimeoutException):
            raise TranslateTimeout(f"the model endpoint did not answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            log.warning("translate_unreachable", extra={"reason": type(exc).__name__})
            raise TranslateFailed("the model endpoint could not be reached", reason=type(exc).__name__) from None
        if status >= 300:
            log.warning("translate_upstream_error", extra={"upstream_status": status})
            raise TranslateFailed(f"the model endpoint answered HTTP {status}", upstream_status=status)
        return _answer_text(body)
