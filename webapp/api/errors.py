"""Every API error is a JSON body {"error": kind, "message": text for a person}.

`RetrievalError`s carry their own status code; FastAPI's validation and routing errors, and any
unexpected exception, are turned into the same shape so clients parse one kind of error.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.errors import RetrievalError
from webapp.api.schemas import ErrorBody

log = logging.getLogger(__name__)


class Forbidden(RetrievalError):
    status_code = 403


class Unauthorized(RetrievalError):
    status_code = 401


def responses(*codes: int) -> dict:
    """The error statuses a route documents in /openapi.json, all with the ErrorBody shape."""
    return {code: {"model": ErrorBody} for code in codes}


def error_kind(error: RetrievalError) -> str:
    """NotFound -> not_found: the class name is the machine-readable kind."""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def error_response(status: int, kind: str, message: str, **extra) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(
        {"error": kind, "message": message, **extra}, status_code=status, headers=headers
    )


def validation_message(errors: list[dict]) -> str:
    """The first few field problems in one sentence, e.g. 'k: Input should be ...'."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetrievalError)
    async def retrieval_error(request: Request, error: RetrievalError):
        # the caller's to fix: one log line, no traceback (server faults keep theirs, below)
        log.info("%s %s -> %d: %s", request.method, request.url.path, error.status_code, error)
        headers = {"WWW-Authenticate": "APIKey"} if isinstance(error, Unauthorized) else None
        return error_response(error.status_code, error_kind(error), str(error), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError):
        detail = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg")),
                "type": str(e.get("type")),
            }
            for e in error.errors()
        ]
        return error_response(422, "invalid_request", validation_message(detail), detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, kind, str(error.detail), headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception):
        log.exception("unhandled error in the API", exc_info=error)
        return error_response(
            500, "internal", "an unexpected error happened on the server; it was logged"
        )
