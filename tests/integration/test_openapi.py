"""The served OpenAPI document matches real behaviour: every route and the statuses it answers."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.routing import APIRoute

from duckmesh.api.app import create_app
from duckmesh.api.context import AppContext
from tests.conftest import KeyMaker

PUBLIC = {("/v1/health", "get"), ("/v1/ready", "get"), ("/v1/metrics", "get"), ("/v1/openapi.json", "get")}


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
