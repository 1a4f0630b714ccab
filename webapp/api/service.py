"""The service itself: a liveness check, and JSON errors for every unknown path under /api."""

from typing import Any

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from retrieval import __version__
from retrieval.catalog import Catalog
from retrieval.errors import NotFound


def router(catalog: Catalog) -> APIRouter:
    api = APIRouter(tags=["service"])

    @api.get("/api/health", summary="liveness check")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "collections": len(catalog.names())}

    return api


fallback = APIRouter()


@fallback.api_route(
    "/api", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
@fallback.api_route(
    "/api/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
def unknown_endpoint(request: Request, rest: str = ""):
    """Keep JSON errors under /api even though the Gradio UI is mounted at the root.

    Included last: a path that another route knows with another method is a 405, not a 404.
    """
    for route in request.app.router.routes:
        if (
            route is not request.scope.get("route")
            and route.matches(request.scope)[0] == Match.PARTIAL
        ):
            raise StarletteHTTPException(405, f"{request.method} is not allowed on this path")
    raise NotFound(f"no API endpoint /api/{rest}; the endpoints are listed at /docs")
