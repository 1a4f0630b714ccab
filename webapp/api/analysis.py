"""Analysis of one image, an upload or an item: zero-shot tags and relevance heatmaps.

The work is done by `webapp.analysis`, which the UI's Tagging and Explain tabs use too; this
router only reads the request and shapes the answer (JSON tags, a PNG overlay or a JSON map).
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated aliases.

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import JSONResponse, Response

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.explain import Heatmap
from webapp import analysis
from webapp.api.deps import MAX_TEXT_CHARS, ItemForm, Params, one_file_part, one_source, read_upload
from webapp.api.errors import responses
from webapp.api.schemas import ExplainResponse, TagsResponse


def router(catalog: Catalog, settings: Settings) -> APIRouter:
    api = APIRouter(tags=["analysis"], dependencies=[Depends(one_file_part)])
    params = Params.of(catalog, settings)
    collection_param, file_param = params.collection, params.image_file

    @api.post(
        "/api/collections/{collection}/tags",
        response_model=TagsResponse,
        summary="zero-shot tags for an uploaded image or an item",
        responses=responses(400, 404, 413, 422, 503),
    )
    def tag(
        collection: collection_param,
        file: file_param = None,
        item_id: ItemForm = None,
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
        file = one_source(file, item_id, "image to tag")
        loaded = catalog.get(collection)
        chosen = analysis.vocabulary_for(loaded, terms, vocabulary)
        source = upload_or_item(file, item_id, settings)
        found = analysis.tag(loaded, chosen, source, mode=mode, top_k=top_k, threshold=threshold)
        return {"collection": collection, "vocabulary": chosen.name, "mode": mode, "tags": found}

    @api.post(
        "/api/collections/{collection}/explain",
        summary="relevance heatmap: which parts of an image match a text",
        response_class=Response,
        responses={
            200: {"model": ExplainResponse, "content": {"image/png": {}}},
            **responses(400, 404, 413, 422, 503),
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
        item_id: ItemForm = None,
        method: Annotated[Literal["auto", "attention", "gradcam"], Form()] = "auto",
        format: Annotated[
            Literal["png", "json"],
            Query(description="png: the image with the map over it; json: the raw map"),
        ] = "png",
        opacity: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    ):
        file = one_source(file, item_id, "image to explain")
        loaded = catalog.get(collection)
        source = upload_or_item(file, item_id, settings)
        heatmap = analysis.explain(loaded, source, query, method=method)
        if format == "json":
            return JSONResponse(heatmap_body(heatmap))
        buffer = io.BytesIO()
        heatmap.overlay(opacity=opacity).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return api


def upload_or_item(file, item_id: str, settings: Settings) -> bytes | str:
    """The uploaded image's bytes, else the item id: the two sources `analysis` takes."""
    return read_upload(file, settings.max_image_mb) if file is not None else item_id


def heatmap_body(heatmap: Heatmap) -> dict:
    """An ExplainResponse: the raw map at its own resolution, rounded for JSON."""
    return {
        "score": float(heatmap.score),
        "method": heatmap.method,
        "width": heatmap.original_size[0],
        "height": heatmap.original_size[1],
        "peak": [float(v) for v in heatmap.peak()],
        "heatmap": np.round(heatmap.raw.astype(float), 4).tolist(),
    }
