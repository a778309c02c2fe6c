"""The served OpenAPI document matches real behaviour: every route and the statuses it answers."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.routing import APIRoute

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext
from tests.conftest import KeyMaker, QueryCtx

PUBLIC = {("/v1/health", "get"), ("/v1/ready", "get"), ("/v1/openapi.json", "get")}


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every endpoint, looking inside included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def _concrete(path: str) -> str:
    return path.replace("{table}", "events").replace("{snapshot_id}", "999999")


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


async def test_every_route_is_documented_and_no_undocumented_route_exists(
    client: httpx.AsyncClient, app_context: AppContext
) -> None:
    document = await _document(client)
    served = {(route.path, method.lower()) for route in _api_routes(create_app(app_context).routes)
              for method in route.methods}
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert served == documented
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"], "validation errors are 400 here"


async def test_every_protected_route_answers_a_documented_401_without_a_key(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    for path, operations in document["paths"].items():
        for method in operations:
            if (path, method) in PUBLIC or path.startswith("/v1/docs"):
                continue
            response = await client.request(method.upper(), _concrete(path), json={})
            assert response.status_code == 401, (method, path, response.status_code)
            assert "401" in operations[method]["responses"], (method, path)
            assert set(response.json()) == {"error_code", "message", "retryable", "context", "trace_id"}


async def test_bad_requests_answer_statuses_the_document_lists(client: httpx.AsyncClient, make_key: KeyMaker) -> None:
    headers = await make_key()
    await client.post("/v1/tables", headers=headers, json={
        "table_name": "events", "columns": [{"name": "id", "type": "int64"}]})
    document = await _document(client)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (path, method) in PUBLIC or method == "get":
                continue
            response = await client.request(method.upper(), _concrete(path), headers=headers,
                                            json={"unexpected_field": True})
            status = str(response.status_code)
            assert status in operation["responses"] or status.startswith("2"), (method, path, status, response.text)


async def test_every_operation_has_a_summary_a_description_and_examples(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    assert document["info"]["description"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = (method, path)
            assert operation.get("summary") and operation.get("description"), where
            body = operation.get("requestBody", {}).get("content", {})
            assert all("example" in media for media in body.values()), where
            answers = [r for status, r in operation["responses"].items() if status.startswith("2")]
            assert answers, where
            for answer in answers:
                if answer.get("content"):  # 204 has none
                    assert any("example" in media for media in answer["content"].values()), where


async def test_protected_operations_name_bearer_and_x_api_key_auth_and_public_ones_do_not(
    client: httpx.AsyncClient,
) -> None:
    document = await _document(client)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": schemes["bearerAuth"]["description"]}
    assert (schemes["apiKeyAuth"]["in"], schemes["apiKeyAuth"]["name"]) == ("header", "X-API-Key")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = {name for requirement in operation.get("security", []) for name in requirement}
            expected = set() if (path, method) in PUBLIC else {"bearerAuth", "apiKeyAuth"}
            assert names == expected, (method, path)


async def test_the_documented_examples_work_when_tried_out_with_a_bearer_key(ctx: QueryCtx) -> None:
    client, headers, coordinator = ctx
    document = await _document(client)

    def example(path: str, method: str) -> Any:
        return document["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]

    created = await client.post("/v1/tables", headers=headers, json=example("/v1/tables", "post"))
    assert created.status_code == 201, created.text
    ingested = await client.post("/v1/ingest/events", headers=headers, json=example("/v1/ingest/{table}", "post"))
    assert ingested.status_code == 200, ingested.text
    await coordinator.run_once()
    for path, method in (("/v1/query", "post"), ("/v1/compaction/run", "post"), ("/v1/retention/run", "post"),
                         ("/v1/integrity/run", "post")):
        answer = await client.request(method.upper(), path, headers=headers, json=example(path, method))
        assert answer.status_code == 200, (path, answer.text)
    same_key_as_x_api_key = {"X-API-Key": headers["Authorization"].removeprefix("Bearer ")}
    assert (await client.get("/v1/tables", headers=same_key_as_x_api_key)).status_code == 200


async def test_swagger_ui_and_the_document_are_served_at_short_and_v1_paths_without_a_cdn(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/openapi.json", "/v1/openapi.json"):
        assert (await client.get(path)).json()["openapi"].startswith("3.")
    for path in ("/docs", "/v1/docs"):
        page = await client.get(path)
        assert page.status_code == 200 and "/v1/openapi.json" in page.text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert assets and all(a.startswith("/ui/swagger/") for a in assets), assets
        for asset in assets:
            assert (await client.get(asset)).status_code == 200, asset
    missing = await client.get("/ui/swagger/nope.js")
    assert missing.status_code == 404 and missing.json()["error_code"] == "NOT_FOUND"
