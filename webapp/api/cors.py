"""Cross-origin access to the REST API: only the origins listed in SR_CORS_ORIGINS.

This guard sits outside everything mounted on the app (the Gradio UI brings its own CORS handling,
which would otherwise answer /api preflights for any origin, with credentials). For /api paths it
answers preflights itself and strips any CORS header from responses to origins not listed, so an
empty SR_CORS_ORIGINS means no cross-origin access at all. Other paths pass through untouched.
"""

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response

from webapp.api.deps import API_KEY_HEADER
from webapp.api.errors import error_response

METHODS = "GET, POST, DELETE"
ALLOWED_HEADERS = f"{API_KEY_HEADER}, Content-Type"


class ApiCors:
    def __init__(self, app, origins: tuple[str, ...]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            return await self.app(scope, receive, send)
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await self.preflight(origin, allowed)(scope, receive, send)

        async def send_with_cors_headers(message):
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name in [n for n in response_headers if n.startswith("access-control-")]:
                    del response_headers[name]
                if allowed:
                    response_headers["access-control-allow-origin"] = origin
                    response_headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors_headers)

    @staticmethod
    def preflight(origin: str, allowed: bool) -> Response:
        if not allowed:
            return error_response(
                403,
                "forbidden_origin",
                f"{origin} may not call this API from a browser; the server lists the origins "
                "that may in SR_CORS_ORIGINS",
            )
        headers = {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": METHODS,
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": "600",
            "vary": "Origin",
        }
        return Response(status_code=204, headers=headers)


def keep_outermost(app) -> None:
    """Move the guard to the outside of the middleware stack (call after mounting other apps)."""
    guards = [m for m in app.user_middleware if m.cls is ApiCors]
    app.user_middleware[:] = guards + [m for m in app.user_middleware if m.cls is not ApiCors]
