"""Request size limits for the API, enforced before FastAPI parses a body.

An upload that is too large is refused by its Content-Length, or cut off while it streams in,
so the server never reads more than the limit (SR_MAX_IMAGE_MB, SR_MAX_UPLOAD_MB).
"""

from retrieval.config import Settings
from webapp.api.errors import error_response

MB = 1024 * 1024
FORM_OVERHEAD = 256 * 1024  # multipart boundaries and text fields around one image


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse oversized request bodies early: by Content-Length, else while they stream in.

    The app never sees more than `limit` bytes; if a body overflows mid-way, whatever the app
    answers is replaced by a 413, so no upload is ever read whole past the cap.
    """

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    def limit_for(self, scope) -> int | None:
        path = scope.get("path", "")
        if not path.startswith("/api/"):
            return None  # the Gradio UI enforces its own upload limit
        if scope.get("method") == "POST" and path.rstrip("/") == "/api/collections":
            return self.settings.max_upload_mb * MB
        return self.settings.max_image_mb * MB + FORM_OVERHEAD

    async def __call__(self, scope, receive, send):
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_too_large(send, limit)
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"] and not state["started"]:
                return  # the app's own answer to the cut-off body is replaced below
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _send_too_large(send, limit)


async def _send_too_large(send, limit: int) -> None:
    response = error_response(
        413,
        "too_large",
        f"the request body is larger than {limit / MB:.1f} MB; send a smaller file "
        "(limits: SR_MAX_IMAGE_MB for images, SR_MAX_UPLOAD_MB for zip uploads)",
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
