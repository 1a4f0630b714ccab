"""Collections and their items: list, details, metadata, images; upload and delete (with the key).

Reading is public. Creating a collection from a zip or deleting an uploaded one needs the API
key; collections that ship with the server (collections.json) cannot be deleted.
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated aliases.

import io
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from retrieval.backbone import display_spec
from retrieval.catalog import Catalog, Collection, CollectionSpec
from retrieval.config import Settings
from retrieval.errors import BadInput, Conflict, NotFound, RetrievalError
from retrieval.images import open_image
from retrieval.uploads import (
    create_collection_from_zip,
    delete_uploaded_collection,
    is_uploaded,
)
from webapp.api.deps import COLLECTION_PATTERN, ItemId, Offset, Params, key_checker
from webapp.api.errors import responses
from webapp.api.schemas import CollectionInfo, CollectionList, Deleted, ItemOut, ItemPage, item_out

BROWSER_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                       ".webp": "image/webp", ".gif": "image/gif"}  # fmt: skip
ZIP_UPLOAD_BODY = {
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
}


def router(catalog: Catalog, settings: Settings) -> APIRouter:
    """Reading routes first, then the two writing ones."""
    api, params = APIRouter(), Params.of(catalog, settings)
    reading(api, catalog, params)
    writing(api, catalog, params)
    return api


def reading(api: APIRouter, catalog: Catalog, params: Params) -> None:
    collection_param, settings = params.collection, params.settings

    @api.get(
        "/api/collections",
        response_model=CollectionList,
        tags=["collections"],
        summary="list the collections",
    )
    def list_collections(request: Request):
        return {"collections": [summary(request, catalog.specs[n]) for n in catalog.names()]}

    @api.get(
        "/api/collections/{collection}",
        response_model=CollectionInfo,
        name="collection_info",
        tags=["collections"],
        summary="details of one collection (loads it)",
        responses=responses(404, 422, 503),
    )
    def collection_info(request: Request, collection: collection_param):
        loaded = catalog.get(collection)
        return info(request, loaded, is_uploaded(collection, settings))

    @api.get(
        "/api/collections/{collection}/items",
        response_model=ItemPage,
        tags=["items"],
        summary="browse items in collection order",
        responses=responses(404, 422, 503),
    )
    def list_items(
        request: Request,
        collection: collection_param,
        offset: Offset = 0,
        limit: params.limit = 20,
    ):
        index = catalog.get(collection).index
        rows = index.items[offset : offset + limit]
        return {
            "total": len(index),
            "offset": offset,
            "items": [item_out(request, collection, row) for row in rows],
        }

    @api.get(
        "/api/collections/{collection}/items/{item_id}",
        response_model=ItemOut,
        tags=["items"],
        summary="an item's metadata",
        responses=responses(404, 422, 503),
    )
    def get_item(request: Request, collection: collection_param, item_id: ItemId):
        index = catalog.get(collection).index
        return item_out(request, collection, index.item(item_id))

    @api.get(
        "/api/collections/{collection}/items/{item_id}/image",
        name="item_image",
        tags=["items"],
        summary="an item's image: a small JPEG thumbnail or the full-size original",
        response_class=Response,
        responses={
            200: {"content": {mime: {} for mime in sorted(set(BROWSER_IMAGE_TYPES.values()))}},
            **responses(404, 422, 503),
        },
    )
    def item_image(
        collection: collection_param,
        item_id: ItemId,
        size: Annotated[Literal["thumb", "full"], Query()] = "thumb",
    ):
        index = catalog.get(collection).index
        path = index.thumb_path(item_id) if size == "thumb" else index.image_path(item_id)
        return image_file(path, index.directory if size == "thumb" else None, settings)


def writing(api: APIRouter, catalog: Catalog, params: Params) -> None:
    collection_param, settings = params.collection, params.settings
    require_key = key_checker(settings)

    @api.post(
        "/api/collections",
        status_code=201,
        response_model=CollectionInfo,
        tags=["collections"],
        summary="create a collection from a zip of images (needs the API key)",
        responses=responses(400, 401, 403, 409, 413, 422, 503),
        openapi_extra=ZIP_UPLOAD_BODY,
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
        like = model_source(catalog, model_from)
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
        return info(request, collection, is_uploaded(name, settings))

    @api.delete(
        "/api/collections/{collection}",
        response_model=Deleted,
        tags=["collections"],
        summary="delete a collection created by upload (needs the API key)",
        responses=responses(401, 403, 404, 409, 422),
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


def summary(request: Request, spec: CollectionSpec) -> dict:
    """A CollectionSummary: what the listing says without loading the collection."""
    return {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description or "",
        "examples": list(spec.examples or []),
        "url": str(request.url_for("collection_info", collection=spec.name)),
    }


def info(request: Request, collection: Collection, uploaded: bool) -> dict:
    """A CollectionInfo: the summary plus what loading told (size, model, methods)."""
    spec, index = collection.spec, collection.index
    return {
        **summary(request, spec),
        "count": len(index),
        "model": display_spec(index.model_spec()),
        "dim": index.dim,
        "index_type": str(index.manifest.get("index_type", "flat")),
        "preprocessing": collection.backbone.preprocessing,
        "runtime": collection.backbone.runtime,
        "composed_methods": sorted(collection.searcher.composers),
        "method_licences": collection.method_licences(),
        "vocabulary": spec.vocabulary,
        "uploaded": uploaded,
        "skipped": index.manifest.get("skipped", []),
    }


def model_source(catalog: Catalog, model_from: str | None) -> Collection:
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


def image_file(path: Path, must_be_under: Path | None, settings: Settings) -> Response:
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
    open_image(path, settings.image_limits).save(buffer, format="JPEG", quality=90)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers=headers)
