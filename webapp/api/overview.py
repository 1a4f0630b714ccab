"""The whole collection at a glance: the collection map (with a query placed on it) and its
near-duplicate groups. The map's points come from `webapp.overview`, which the UI's Map tab
uses too; the groups from `retrieval.duplicates`, like the Duplicates tab and the CLI.
Recording that a group is "not duplicates" changes what everyone sees: it needs the API key."""

# No `from __future__ import annotations`: FastAPI must see the Annotated aliases.

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.duplicates import (
    CALIBRATED,
    DuplicateThresholds,
    collection_duplicates,
    mark_not_duplicates,
)
from webapp import overview
from webapp.api.deps import MAX_TEXT_CHARS, Params, key_checker
from webapp.api.errors import responses
from webapp.api.schemas import CollectionMap, DuplicateDecisions, DuplicateGroups, item_out


def router(catalog: Catalog, settings: Settings) -> APIRouter:
    api = APIRouter(tags=["overview"])
    collection_param = Params.of(catalog, settings).collection

    @api.get(
        "/api/collections/{collection}/map",
        response_model=CollectionMap,
        summary="the collection map: every item (or a fixed sample) as a point on a plane",
        responses=responses(400, 404, 422, 503),
    )
    def collection_map(
        request: Request,
        collection: collection_param,
        q: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                description="a description to place on the map; its top results are marked",
            ),
        ] = None,
        colour_by: Annotated[
            str | None, Query(max_length=64, description="a metadata field, or 'tag'")
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=20_000, description="at most this many points (a fixed sample)")
        ] = overview.MAX_POINTS,
    ):
        loaded = catalog.get(collection)
        vector = loaded.searcher.text_vector(q)[0] if q else None
        rows, point, top = overview.map_rows(loaded, colour_by, vector, limit=limit)
        items = loaded.index.items
        return {
            "collection": collection,
            **overview.map_summary(loaded),
            "points": rows,
            "query": None if point is None else {"text": q.strip(), **point},
            "top": [item_out(request, collection, items[p]) for p in top],
        }

    duplicates(api, catalog, collection_param, key_checker(settings))
    return api


def duplicates(api: APIRouter, catalog: Catalog, collection_param, require_key) -> None:
    @api.get(
        "/api/collections/{collection}/duplicates",
        response_model=DuplicateGroups,
        summary="groups of copies (re-encoded, resized, cropped, turned, recoloured)",
        responses=responses(400, 404, 422, 503),
    )
    def find_duplicates(
        request: Request,
        collection: collection_param,
        min_copy_score: Annotated[
            float,
            Query(
                ge=0.0, le=1.0, description="how sure a pair must be a copy (default: calibrated)"
            ),
        ] = CALIBRATED.min_copy_score,
    ):
        loaded = catalog.get(collection)
        thresholds = DuplicateThresholds(CALIBRATED.min_cosine, min_copy_score)
        groups = collection_duplicates(loaded.index, thresholds)
        return {
            "collection": collection,
            "min_copy_score": min_copy_score,
            "groups": [
                {
                    "score": g["score"],
                    "items": [
                        item_out(request, collection, loaded.index.item(i)) for i in g["ids"]
                    ],
                }
                for g in groups
            ],
        }

    @api.post(
        "/api/collections/{collection}/duplicates/not-duplicates",
        response_model=DuplicateDecisions,
        summary="record that items are not copies of one another (needs the API key)",
        responses=responses(400, 401, 403, 404, 422, 503),
    )
    def not_duplicates(
        collection: collection_param,
        _auth: Annotated[None, Depends(require_key)],
        ids: Annotated[
            list[str],
            Body(embed=True, min_length=2, max_length=1000, description="item ids"),
        ],
    ):
        decisions = mark_not_duplicates(catalog.get(collection).index, ids)
        return {"collection": collection, "not_duplicates": decisions}
