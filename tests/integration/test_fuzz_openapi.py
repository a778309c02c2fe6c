"""Property-based fuzzing of the served OpenAPI document (schemathesis): requests generated from
every operation's schema, valid ones and invalid ones, with a valid all-roles key and without
one. No answer may be a 500, and a 5xx must be one the operation documents (501 for query assist
when it is off, 504 for a consistency wait).

Bounded for the suite (``OPENAPI_FUZZ_EXAMPLES`` per operation and mode, default 12); run it longer
with e.g. ``OPENAPI_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/integration/test_fuzz_openapi.py -s``
(``OPENAPI_FUZZ_SEED`` picks another seed). The counts are printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from duckmesh.api.context import AppContext
from tests.conftest import QueryCtx
from tests.helpers import create_table

EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("OPENAPI_FUZZ_SEED", "20261130"))
REPORT: list[str] = []  # printed by tests/conftest.py at the end of the session
# Waits the generator may ask for are cut short: the fuzz is about answers, not about waiting.
_WAIT_FIELDS = ("visibility_timeout_ms", "consistency_timeout_ms", "timeout_ms")


@schemathesis.serializer("application/x-ndjson", "application/vnd.apache.parquet")
def _raw_body(_: Any, value: Any) -> bytes:
    """Backfill bodies are files: whatever was generated, as bytes (a string as UTF-8)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _cases(operation: Any, mode: GenerationMode) -> list[Any]:
    drawn: list[Any] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: Any) -> None:
        drawn.append(case)

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters, no body)
        collect()
    return drawn


def _request(case: Any, headers: dict[str, str]) -> dict[str, Any]:
    sent = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    body = sent.get("json")
    if isinstance(body, dict):
        for field in _WAIT_FIELDS:
            if isinstance(body.get(field), int) and body[field] > 200:
                body[field] = 200
    kwargs: dict[str, Any] = {"params": sent.get("params") or None, "headers": sent.get("headers") or {}}
    if "json" in sent:
        kwargs["json"] = body
    elif "data" in sent:
        data = sent["data"]
        kwargs["content"] = data if isinstance(data, bytes | str) else None
        kwargs["data"] = None if isinstance(data, bytes | str) else data
    return {"method": sent["method"], "url": sent["url"], **kwargs}


async def test_the_served_openapi_document_fuzzed_answers_no_500_and_only_documented_5xx(
    ctx: QueryCtx, app_context: AppContext
) -> None:
    client, headers, coordinator = ctx
    await create_table(client, headers)
    document = (await client.get("/v1/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = 0
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        documented = set(document["paths"][operation.path][operation.method.lower()]["responses"])
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for index, case in enumerate(_cases(operation, mode)):
                auth = {} if index % 4 == 3 else headers  # every fourth request without a key
                request = _request(case, {**auth, "X-Trace-ID": f"fuzz-{operations}-{index}"})
                response = await client.request(**{k: v for k, v in request.items() if v is not None})
                sent += 1
                statuses[response.status_code] += 1
                bad = response.status_code == 500 or (
                    response.status_code >= 500 and str(response.status_code) not in documented)
                if bad:
                    failures.append(f"{operation.method} {operation.path}: {response.status_code} {response.text[:300]}"
                                    f" <- {request}")
        await coordinator.run_once()
    REPORT.append(f"OpenAPI fuzz: {operations} operations, {sent} requests ({EXAMPLES} per operation and mode,"
                  f" seed {SEED}); statuses {dict(sorted(statuses.items()))}; 500s: {statuses[500]}")
    assert failures == [], "\n".join(failures[:10])
    assert operations >= 25 and sent >= operations * EXAMPLES
