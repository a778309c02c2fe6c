"""The OpenAPI document and Swagger UI, at ``/v1/openapi.json`` and ``/v1/docs`` and at the short
``/openapi.json`` and ``/docs``. Swagger UI's assets are served from the installed ``fastapi_offline``
package: no CDN, so the docs work on an offline box."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from duckmesh.errors import NotFound

SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                  "favicon.png": "image/png"}


def install(app: FastAPI) -> None:
    async def openapi_json(request: Request) -> Response:
        return JSONResponse(app.openapi())

    async def swagger(request: Request) -> Response:
        return get_swagger_ui_html(
            openapi_url="/v1/openapi.json", title="DuckMesh API",
            swagger_js_url="/ui/swagger/swagger-ui-bundle.js", swagger_css_url="/ui/swagger/swagger-ui.css",
            swagger_favicon_url="/ui/swagger/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        )

    async def swagger_asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SWAGGER_ASSETS:
            raise NotFound("no such file", path=f"/ui/swagger/{name}")
        data = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        return Response(data, media_type=SWAGGER_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})

    for path in ("/v1/openapi.json", "/openapi.json"):
        app.router.add_route(path, openapi_json, methods=["GET"], include_in_schema=False)
    for path in ("/v1/docs", "/docs"):
        app.router.add_route(path, swagger, methods=["GET"], include_in_schema=False)
    app.router.add_route("/ui/swagger/{name}", swagger_asset, methods=["GET"], include_in_schema=False)
