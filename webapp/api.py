"""JSON REST API for museum websites: search, item metadata and images, tags, heatmaps, uploads.

`create_api(catalog)` returns the FastAPI app that app.py mounts the Gradio UI onto. Reading is
public; writing (uploading or deleting a collection) needs the key from SR_API_KEY in the
X-API-Key header. Every error is a JSON body {"error": kind, "message": text for a person}.
Models and indexes are shared read-only between requests; requests keep no state.
"""

# No `from __future__ import annotations`: FastAPI must see the local Annotated aliases.

import hmac
import importlib
import io
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    Query,
    Request,
    Security,
    UploadFile,
)
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from retrieval import __version__
from retrieval.backbone import display_spec
from retrieval.catalog import Catalog, Collection
from retrieval.config import Settings, get_settings
from retrieval.errors import BadInput, NotFound, RetrievalError, TooLarge
from retrieval.images import open_image
from retrieval.search import Filters, SearchResult
from retrieval.uploads import (
    create_collection_from_zip,
    delete_uploaded_collection,
    is_uploaded,
    uploaded_specs,
)

log = logging.getLogger(__name__)

MB = 1024 * 1024
FORM_OVERHEAD = 256 * 1024  # multipart boundaries and text fields around one image
MAX_TEXT_CHARS = 2_000  # longer than any model context; beyond it the request is refused
MAX_TERMS = 200
BROWSER_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                       ".webp": "image/webp", ".gif": "image/gif"}  # fmt: skip
INTERNAL_FIELDS = {"fingerprint", "thumb"}
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ITEM_PATTERN = r"^[A-Za-z0-9._-]{1,255}$"
API_KEY_HEADER = "X-API-Key"


# -- response bodies -------------------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. not_found, bad_input, too_large")
    message: str = Field(description="what went wrong and how to fix it, for a person")
    detail: list[dict[str, Any]] | None = Field(None, description="per-field problems (422)")

    model_config = {
        "json_schema_extra": {
            "examples": [{"error": "not_found", "message": "no item 'x' in this collection"}]
        }
    }


class CollectionSummary(BaseModel):
    name: str
    title: str
    description: str = ""
    examples: list[str] = []
    url: str = Field(description="this collection's details")


class CollectionInfo(CollectionSummary):
    count: int = Field(description="number of items")
    model: str
    dim: int
    index_type: str
    preprocessing: str
    composed_methods: list[str] = Field(description="values accepted by search/composed `method`")
    vocabulary: str | None = Field(None, description="default tagging vocabulary")
    uploaded: bool = Field(description="true for collections created through the API")


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class ItemOut(BaseModel):
    id: str
    item: dict[str, Any] = Field(description="metadata: title, artist, date, description, ...")
    thumb_url: str
    image_url: str


class ItemPage(BaseModel):
    total: int
    offset: int
    items: list[ItemOut]


class HitOut(ItemOut):
    score: float = Field(description="cosine similarity between query and item, -1..1")
    rank: int = Field(description="1-based position in the whole ranking (offset included)")


class SearchResponse(BaseModel):
    collection: str
    query: dict[str, Any]
    k: int
    offset: int
    notes: list[str] = Field(description="remarks, e.g. that a long text was truncated")
    hits: list[HitOut]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "collection": "shapes",
                    "query": {"type": "text", "text": "a large red circle"},
                    "k": 1,
                    "offset": 0,
                    "notes": [],
                    "hits": [
                        {
                            "id": "scene-0042",
                            "score": 0.31,
                            "rank": 1,
                            "item": {"id": "scene-0042", "title": "a large red circle"},
                            "thumb_url": "http://localhost:7860/api/collections/shapes/items/scene-0042/image?size=thumb",
                            "image_url": "http://localhost:7860/api/collections/shapes/items/scene-0042/image?size=full",
                        }
                    ],
                }
            ]
        }
    }


class TagOut(BaseModel):
    tag: str
    score: float = Field(description="probability within the tag's group")
    group: str


class TagsResponse(BaseModel):
    collection: str
    vocabulary: str
    mode: str
    tags: list[TagOut]


class ExplainResponse(BaseModel):
    score: float = Field(description="cosine similarity of image and query: what the map explains")
    method: str
    width: int = Field(description="width of the explained image in pixels")
    height: int
    peak: list[float] = Field(description="(x, y) of the most relevant point, in image pixels")
    heatmap: list[list[float]] = Field(description="relevance rows in [0, 1], at most 256 wide")


class Deleted(BaseModel):
    deleted: str


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorBody} for code in codes}


# -- errors ----------------------------------------------------------------------------------
class FeatureMissing(RetrievalError):
    status_code = 501


class Conflict(RetrievalError):
    status_code = 409


class Forbidden(RetrievalError):
    status_code = 403


class Unauthorized(RetrievalError):
    status_code = 401


def _kind(error: RetrievalError) -> str:
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _error_response(status: int, kind: str, message: str, **extra) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(
        {"error": kind, "message": message, **extra}, status_code=status, headers=headers
    )


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetrievalError)
    async def retrieval_error(_request: Request, error: RetrievalError):
        headers = {"WWW-Authenticate": "APIKey"} if isinstance(error, Unauthorized) else None
        return _error_response(error.status_code, _kind(error), str(error), headers=headers)

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
        return _error_response(422, "invalid_request", _validation_message(detail), detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(error.status_code, kind, str(error.detail), headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception):
        log.exception("unhandled error in the API", exc_info=error)
        return _error_response(
            500, "internal", "an unexpected error happened on the server; it was logged"
        )


# -- request size --------------------------------------------------------------------------
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
    response = _error_response(
        413,
        "too_large",
        f"the request body is larger than {limit / MB:.1f} MB; send a smaller file "
        "(limits: SR_MAX_IMAGE_MB for images, SR_MAX_UPLOAD_MB for zip uploads)",
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# -- helpers ---------------------------------------------------------------------------------
def _optional_module(name: str, feature: str):
    """Features written by other modules load lazily: a missing one answers 501, not a crash."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise FeatureMissing(
            f"{feature} is not available on this server ({error}); update the installation"
        ) from error


def _read_upload(upload: UploadFile, limit_mb: int) -> bytes:
    data = upload.file.read(limit_mb * MB + 1)
    if len(data) > limit_mb * MB:
        raise TooLarge(f"the image is larger than {limit_mb} MB (SR_MAX_IMAGE_MB)")
    if not data:
        raise BadInput("the uploaded file is empty")
    return data


def _one_source(file: UploadFile | None, item_id: str | None, what: str) -> UploadFile | None:
    """Exactly one of upload and item id; an empty file input (what browsers send) is no file."""
    if file is not None and not file.filename and not file.size:
        file = None
    if (file is None) == (not item_id):
        raise BadInput(
            f"send the {what} either as an uploaded image (form field 'file') or as an item id "
            "(form field 'item_id'), exactly one of the two"
        )
    return file


def public_item(item: dict) -> dict:
    return {key: value for key, value in item.items() if key not in INTERNAL_FIELDS}


def _item_out(request: Request, collection: str, item: dict) -> dict:
    url = str(request.url_for("item_image", collection=collection, item_id=item["id"]))
    return {
        "id": item["id"],
        "item": public_item(item),
        "thumb_url": f"{url}?size=thumb",
        "image_url": f"{url}?size=full",
    }


def _search_response(request: Request, name: str, result: SearchResult, k: int, offset: int):
    hits = [
        {**_item_out(request, name, hit.item), "score": hit.score, "rank": hit.rank}
        for hit in result.hits
    ]
    return {
        "collection": name,
        "query": result.query,
        "k": k,
        "offset": offset,
        "notes": result.notes,
        "hits": hits,
    }


def _collection_info(request: Request, collection: Collection, uploaded: bool) -> dict:
    spec, index = collection.spec, collection.index
    return {
        **_summary(request, spec),
        "count": len(index),
        "model": display_spec(index.model_spec()),
        "dim": index.dim,
        "index_type": str(index.manifest.get("index_type", "flat")),
        "preprocessing": collection.backbone.preprocessing,
        "composed_methods": sorted(collection.searcher.composers),
        "vocabulary": spec.vocabulary,
        "uploaded": uploaded,
    }


def _summary(request: Request, spec) -> dict:
    return {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description or "",
        "examples": list(spec.examples or []),
        "url": str(request.url_for("collection_info", collection=spec.name)),
    }


# -- the app ---------------------------------------------------------------------------------
def create_api(catalog: Catalog, settings: Settings | None = None) -> FastAPI:
    """The REST API over `catalog`; collections load on their first request."""
    settings = settings or get_settings()
    example_collection = next(iter(catalog.names()), "shapes")
    app = FastAPI(
        title="Smart Retrieval API",
        version=__version__,
        description=(
            "Search museum collections by text, by image, or by an image plus a modification "
            "text; get item metadata, images, tags and relevance heatmaps. Reading is public; "
            f"uploading or deleting a collection needs the `{API_KEY_HEADER}` header."
        ),
    )
    for spec in uploaded_specs(settings):  # collections uploaded before a restart come back
        catalog.specs.setdefault(spec.name, spec)
    app.state.catalog = catalog
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )

    collection_param = Annotated[
        str,
        PathParam(
            pattern=COLLECTION_PATTERN,
            description="collection name (see GET /api/collections)",
            examples=[example_collection],
        ),
    ]
    item_param = Annotated[
        str, PathParam(pattern=ITEM_PATTERN, description="item id", examples=["scene-0001"])
    ]
    k_param = Annotated[
        int, Query(ge=1, le=settings.max_k, description="number of results in this page")
    ]
    offset_param = Annotated[int, Query(ge=0, le=10_000, description="results to skip (paging)")]
    min_score_param = Annotated[
        float | None,
        Query(ge=-1.0, le=1.0, description="drop results below this cosine similarity"),
    ]
    # Optional uploads and ids are typed without `| None` so the schema does not offer `null`,
    # which multipart cannot carry; an absent or empty field means "not given".
    file_param = Annotated[
        UploadFile, File(description=f"an image (at most {settings.max_image_mb} MB)")
    ]
    item_form = Annotated[
        str,
        Form(max_length=255, description="id of an item of this collection, instead of a file"),
    ]

    def get_collection(name: str) -> Collection:
        return catalog.get(name)

    def filters(
        artist: Annotated[str | None, Query(max_length=200, description="exact artist (any case)")] = None,
        date_from: Annotated[int | None, Query(ge=-10_000, le=10_000, description="year, inclusive")] = None,
        date_to: Annotated[int | None, Query(ge=-10_000, le=10_000, description="year, inclusive")] = None,
        keyword: Annotated[str | None, Query(max_length=200, description="words in title or description")] = None,
        tag: Annotated[list[str] | None, Query(max_length=20, description="required tags (repeatable)")] = None,
    ) -> Filters:  # fmt: skip
        if date_from is not None and date_to is not None and date_from > date_to:
            raise BadInput(f"date_from ({date_from}) is after date_to ({date_to})")
        return Filters(
            artist=artist, date_from=date_from, date_to=date_to, keyword=keyword, tags=tag
        )

    key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="the key set in SR_API_KEY"
    )

    def require_key(key: Annotated[str | None, Security(key_header)] = None) -> None:
        if not settings.api_key:
            raise Forbidden(
                "writing is disabled on this server: start it with SR_API_KEY set to a secret, "
                f"then send that secret in the {API_KEY_HEADER} header"
            )
        if not key or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise Unauthorized(f"missing or wrong API key: send it in the {API_KEY_HEADER} header")

    # -- reading ---------------------------------------------------------------------------
    @app.get("/api/health", tags=["service"], summary="liveness check")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "collections": len(catalog.names())}

    @app.get(
        "/api/collections",
        response_model=CollectionList,
        tags=["collections"],
        summary="list the collections",
    )
    def list_collections(request: Request):
        return {"collections": [_summary(request, catalog.specs[n]) for n in catalog.names()]}

    @app.get(
        "/api/collections/{collection}",
        response_model=CollectionInfo,
        name="collection_info",
        tags=["collections"],
        summary="details of one collection (loads it)",
        responses=_errors(404, 422, 503),
    )
    def collection_info(request: Request, collection: collection_param):
        loaded = get_collection(collection)
        return _collection_info(request, loaded, is_uploaded(collection, settings))

    @app.get(
        "/api/collections/{collection}/items",
        response_model=ItemPage,
        tags=["items"],
        summary="browse items in collection order",
        responses=_errors(404, 422, 503),
    )
    def list_items(
        request: Request,
        collection: collection_param,
        offset: offset_param = 0,
        limit: Annotated[int, Query(ge=1, le=settings.max_k)] = 20,
    ):
        index = get_collection(collection).index
        rows = index.items[offset : offset + limit]
        return {
            "total": len(index),
            "offset": offset,
            "items": [_item_out(request, collection, row) for row in rows],
        }

    @app.get(
        "/api/collections/{collection}/items/{item_id}",
        response_model=ItemOut,
        tags=["items"],
        summary="an item's metadata",
        responses=_errors(404, 422, 503),
    )
    def get_item(request: Request, collection: collection_param, item_id: item_param):
        index = get_collection(collection).index
        return _item_out(request, collection, index.item(item_id))

    @app.get(
        "/api/collections/{collection}/items/{item_id}/image",
        name="item_image",
        tags=["items"],
        summary="an item's image: a small JPEG thumbnail or the full-size original",
        response_class=Response,
        responses={
            200: {"content": {mime: {} for mime in sorted(set(BROWSER_IMAGE_TYPES.values()))}},
            **_errors(404, 422, 503),
        },
    )
    def item_image(
        collection: collection_param,
        item_id: item_param,
        size: Annotated[Literal["thumb", "full"], Query()] = "thumb",
    ):
        index = get_collection(collection).index
        path = index.thumb_path(item_id) if size == "thumb" else index.image_path(item_id)
        return _image_file(path, index.directory if size == "thumb" else None)

    @app.get(
        "/api/collections/{collection}/search/text",
        response_model=SearchResponse,
        tags=["search"],
        summary="find images matching a description",
        responses=_errors(400, 404, 422, 503),
    )
    def search_text(
        request: Request,
        collection: collection_param,
        search_filters: Annotated[Filters, Depends(filters)],
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                description="what to look for; texts longer than the model reads are truncated "
                "(the response's notes say so)",
                examples=["a large red circle"],
            ),
        ],
        k: k_param = 10,
        offset: offset_param = 0,
        min_score: min_score_param = None,
    ):
        searcher = get_collection(collection).searcher
        result = searcher.text(q, k=k, offset=offset, min_score=min_score, filters=search_filters)
        return _search_response(request, collection, result, k, offset)

    @app.post(
        "/api/collections/{collection}/search/image",
        response_model=SearchResponse,
        tags=["search"],
        summary="find images similar to an uploaded image or to an item",
        responses=_errors(400, 404, 413, 422, 503),
    )
    def search_image(
        request: Request,
        collection: collection_param,
        search_filters: Annotated[Filters, Depends(filters)],
        file: file_param = None,
        item_id: item_form = None,
        k: k_param = 10,
        offset: offset_param = 0,
        min_score: min_score_param = None,
    ):
        file = _one_source(file, item_id, "query image")
        searcher = get_collection(collection).searcher
        options = dict(k=k, offset=offset, min_score=min_score, filters=search_filters)
        if file is not None:
            result = searcher.image(_read_upload(file, settings.max_image_mb), **options)
        else:
            result = searcher.similar(item_id, **options)
        return _search_response(request, collection, result, k, offset)

    @app.post(
        "/api/collections/{collection}/search/composed",
        response_model=SearchResponse,
        tags=["search"],
        summary="find images like a reference image, changed as a text says",
        responses=_errors(400, 404, 413, 422, 503),
    )
    def search_composed(
        request: Request,
        collection: collection_param,
        search_filters: Annotated[Filters, Depends(filters)],
        text: Annotated[
            str,
            Form(
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                description="the change, e.g. 'make it blue'",
                examples=["make it blue"],
            ),
        ],
        method: Annotated[
            str,
            Form(
                max_length=40,
                description="sum (always), combiner, zero-shot: see the collection's composed_methods",
            ),
        ] = "sum",
        file: file_param = None,
        item_id: item_form = None,
        k: k_param = 10,
        offset: offset_param = 0,
        min_score: min_score_param = None,
    ):
        file = _one_source(file, item_id, "reference image")
        loaded = get_collection(collection)
        if file is not None:
            reference = _read_upload(file, settings.max_image_mb)
        else:
            loaded.index.position(item_id)  # an unknown id is a 404, never a file path
            reference = item_id
        result = loaded.searcher.composed(
            reference,
            text,
            method=method,
            k=k,
            offset=offset,
            min_score=min_score,
            filters=search_filters,
        )
        return _search_response(request, collection, result, k, offset)

    @app.post(
        "/api/collections/{collection}/tags",
        response_model=TagsResponse,
        tags=["analysis"],
        summary="zero-shot tags for an uploaded image or an item",
        responses=_errors(400, 404, 413, 422, 501, 503),
    )
    def tag(
        collection: collection_param,
        file: file_param = None,
        item_id: item_form = None,
        terms: Annotated[
            str | None,
            Form(
                max_length=20_000,
                description="your own tags, one per line or comma-separated, instead of a vocabulary",
                examples=["castle, bridge, portrait"],
            ),
        ] = None,
        vocabulary: Annotated[
            str | None,
            Query(
                max_length=64,
                description="a shipped vocabulary (default: the collection's, else heritage)",
            ),
        ] = None,
        mode: Annotated[Literal["single", "multi"], Query()] = "single",
        top_k: Annotated[int, Query(ge=1, le=20, description="tags per group (single mode)")] = 1,
        threshold: Annotated[
            float | None, Query(ge=0.0, le=1.0, description="minimum probability (multi mode)")
        ] = None,
    ):
        file = _one_source(file, item_id, "image to tag")
        tags_module = _optional_module("retrieval.tags", "zero-shot tagging")
        loaded = get_collection(collection)
        chosen = _vocabulary(tags_module, terms, vocabulary, loaded.spec.vocabulary)
        if file is not None:
            vectors = loaded.backbone.encode_images([_read_upload(file, settings.max_image_mb)])
        else:
            vectors = np.asarray(loaded.index.vectors[loaded.index.position(item_id)])[None]
        found = tags_module.tag_vectors(
            loaded.backbone, vectors, chosen, mode=mode, top_k=top_k, threshold=threshold
        )[0]
        return {
            "collection": collection,
            "vocabulary": chosen.name,
            "mode": mode,
            "tags": [{"tag": t.tag, "score": float(t.score), "group": t.group} for t in found],
        }

    @app.post(
        "/api/collections/{collection}/explain",
        tags=["analysis"],
        summary="relevance heatmap: which parts of an image match a text",
        response_class=Response,
        responses={
            200: {"model": ExplainResponse, "content": {"image/png": {}}},
            **_errors(400, 404, 413, 422, 501, 503),
        },
    )
    def explain(
        collection: collection_param,
        query: Annotated[
            str,
            Form(
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                description="the text whose match is explained",
                examples=["a red circle"],
            ),
        ],
        file: file_param = None,
        item_id: item_form = None,
        method: Annotated[Literal["auto", "attention", "gradcam"], Form()] = "auto",
        format: Annotated[
            Literal["png", "json"],
            Query(description="png: the image with the map over it; json: the raw map"),
        ] = "png",
        opacity: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    ):
        file = _one_source(file, item_id, "image to explain")
        explain_module = _optional_module("retrieval.explain", "relevance heatmaps")
        loaded = get_collection(collection)
        if file is not None:
            image = _read_upload(file, settings.max_image_mb)
        else:
            image = loaded.index.image_path(item_id)
        heatmap = explain_module.explain(loaded.backbone, image, query, method=method)
        if format == "json":
            return JSONResponse(
                {
                    "score": float(heatmap.score),
                    "method": heatmap.method,
                    "width": heatmap.original_size[0],
                    "height": heatmap.original_size[1],
                    "peak": [float(v) for v in heatmap.peak()],
                    "heatmap": np.round(heatmap.raw.astype(float), 4).tolist(),
                }
            )
        buffer = io.BytesIO()
        heatmap.overlay(opacity=opacity).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    # -- writing ---------------------------------------------------------------------------
    @app.post(
        "/api/collections",
        status_code=201,
        response_model=CollectionInfo,
        tags=["collections"],
        summary="create a collection from a zip of images (needs the API key)",
        responses=_errors(400, 401, 403, 409, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "a .zip of images (jpg, png, webp, tif, bmp, "
                                    "gif), optionally with metadata.csv or metadata.jsonl",
                                }
                            },
                        }
                    }
                },
            }
        },
    )
    async def create_collection(
        request: Request,
        _auth: Annotated[None, Depends(require_key)],
        name: Annotated[
            str,
            Query(
                pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                description="new collection's name: lower-case letters, digits, - and _",
                examples=["my-museum"],
            ),
        ],
        title: Annotated[str | None, Query(max_length=200)] = None,
        description: Annotated[str, Query(max_length=2000)] = "",
        model_from: Annotated[
            str | None,
            Query(
                pattern=COLLECTION_PATTERN,
                description="embed with the model of this collection (default: the first that loads)",
            ),
        ] = None,
    ):
        # The body is parsed only here, after the key was checked: strangers cannot make us read it.
        if name in catalog.names():
            raise Conflict(f"a collection named {name!r} already exists; choose another name")
        like = _model_source(catalog, model_from)
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if not hasattr(upload, "file"):
                raise BadInput("send the zip as the multipart form field 'file'")
            collection = await run_in_threadpool(
                create_collection_from_zip,
                upload.file,
                name,
                like.backbone,
                settings,
                title=title,
                description=description,
                like=like,
            )
        finally:
            await form.close()
        catalog.add(collection)
        return _collection_info(request, collection, is_uploaded(name, settings))

    @app.delete(
        "/api/collections/{collection}",
        response_model=Deleted,
        tags=["collections"],
        summary="delete a collection created by upload (needs the API key)",
        responses=_errors(401, 403, 404, 409, 422),
    )
    def delete_collection(
        collection: collection_param, _auth: Annotated[None, Depends(require_key)]
    ):
        if collection not in catalog.names():
            raise NotFound(f"no collection {collection!r}; available: {', '.join(catalog.names())}")
        if not is_uploaded(collection, settings):
            raise Conflict(
                f"{collection!r} ships with the server (collections.json) and cannot be deleted "
                "through the API; only uploaded collections can"
            )
        catalog.remove(collection)
        delete_uploaded_collection(collection, settings)
        return {"deleted": collection}

    @app.api_route(
        "/api/{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    def unknown_endpoint(request: Request, rest: str):
        """Keep JSON errors under /api even though the Gradio UI is mounted at the root."""
        for route in app.router.routes:
            if (
                route is not request.scope.get("route")
                and route.matches(request.scope)[0] == Match.PARTIAL
            ):
                raise StarletteHTTPException(405, f"{request.method} is not allowed on this path")
        raise NotFound(f"no API endpoint /api/{rest}; the endpoints are listed at /docs")

    return app


def _model_source(catalog: Catalog, model_from: str | None) -> Collection:
    """The collection lending its model to an upload: the named one, else the first usable."""
    if model_from:
        return catalog.get(model_from)
    reasons = []
    for name in catalog.names():
        try:
            return catalog.get(name)
        except RetrievalError as error:
            reasons.append(str(error))
    raise BadInput(
        "no collection could be loaded to lend its model to the upload: " + "; ".join(reasons)
    )


def _vocabulary(tags_module, terms: str | None, name: str | None, default: str | None):
    """User terms, or a shipped vocabulary by name: never a path on the server."""
    if terms is not None and terms.strip():
        words = [w.strip() for line in terms.splitlines() for w in line.split(",") if w.strip()]
        if len(words) > MAX_TERMS:
            raise BadInput(f"give at most {MAX_TERMS} terms, not {len(words)}")
        return tags_module.vocabulary_from_terms(words)
    shipped = tags_module.list_vocabularies()
    if name is not None and name not in shipped:
        raise NotFound(f"no vocabulary {name!r}; choose one of {', '.join(shipped)} or send terms")
    fallback = default if default in shipped else "heritage"
    return tags_module.load_vocabulary(name or fallback)


def _image_file(path: Path, must_be_under: Path | None) -> Response:
    """Serve browser-friendly files as they are; re-encode others (e.g. TIFF) as JPEG."""
    path = Path(path)
    if must_be_under is not None and not path.resolve().is_relative_to(must_be_under.resolve()):
        raise NotFound("the item's image is not available")
    if not path.is_file():
        raise NotFound("the item's image file is missing on the server; rebuild the index")
    headers = {"Cache-Control": "public, max-age=3600"}
    media_type = BROWSER_IMAGE_TYPES.get(path.suffix.lower())
    if media_type:
        return FileResponse(path, media_type=media_type, headers=headers)
    buffer = io.BytesIO()
    open_image(path).save(buffer, format="JPEG", quality=90)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers=headers)
