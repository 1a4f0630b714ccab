"""Search a collection by text, by image (an upload or an item), or by an image plus a change.

Every search answers the same SearchResponse: hits with scores, ranks and links, paged by k and
offset, narrowed by the metadata filters.
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated aliases.

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.index import MAX_SEARCH_EFFORT
from retrieval.search import Filters, Searcher, SearchResult
from webapp.api.deps import (
    MAX_TEXT_CHARS,
    ItemForm,
    MinScore,
    Offset,
    Params,
    one_file_part,
    one_source,
    read_upload,
)
from webapp.api.errors import responses
from webapp.api.schemas import SearchResponse, item_out


def filters(
    artist: Annotated[str | None, Query(max_length=200, description="exact artist (any case)")] = None,
    date_from: Annotated[int | None, Query(ge=-10_000, le=10_000, description="year, inclusive")] = None,
    date_to: Annotated[int | None, Query(ge=-10_000, le=10_000, description="year, inclusive")] = None,
    keyword: Annotated[str | None, Query(max_length=200, description="words in title or description")] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="required tags (repeatable)")] = None,
) -> Filters:  # fmt: skip
    return Filters(artist=artist, date_from=date_from, date_to=date_to, keyword=keyword, tags=tag)


SearchFilters = Annotated[Filters, Depends(filters)]


def effort(
    ef_search: Annotated[int | None, Query(ge=1, le=MAX_SEARCH_EFFORT, description="HNSW indexes: candidates explored for this query (more: higher recall, slower); ignored with a note elsewhere")] = None,
    nprobe: Annotated[int | None, Query(ge=1, le=MAX_SEARCH_EFFORT, description="IVF-PQ indexes: clusters searched for this query (more: higher recall, slower); ignored with a note elsewhere")] = None,
) -> dict:  # fmt: skip
    """Per-query ANN effort, passed on to `Searcher.by_vector`."""
    return {"ef_search": ef_search, "nprobe": nprobe}


Effort = Annotated[dict, Depends(effort)]


def below_min_score(
    searcher: Searcher,
    result: SearchResult,
    min_score: float | None,
    filters: Filters | None = None,
    exclude: set[int] | None = None,
) -> list[str]:
    """When min_score left no hit at all, a note that says so, with the best score it hid.

    Scores have no common scale across query kinds and composed methods (a Combiner's best hits
    can score far below a text query's), so an empty page must never be silent. Nothing is said
    when hits exist above min_score but the page lies past them, or the filters match nothing.
    """
    if result.hits or min_score is None or result.vector is None:
        return []
    exclude = exclude or set()
    best = searcher.by_vector(result.vector, k=1, filters=filters, exclude=exclude).hits
    if not best or best[0].score >= min_score:
        return []
    searched = sum(
        1
        for position, item in enumerate(searcher.index.items)
        if position not in exclude and (filters is None or filters.matches(item))
    )
    kind = "matching the filters " if filters is not None and not filters.is_empty() else ""
    return [
        f"all {searched} items {kind}scored below min_score {min_score:g}; the best scored "
        f"{best[0].score:.3f}: lower min_score or leave it out (each kind of query and each "
        "composed method scores on its own scale)"
    ]


def search_response(
    request: Request,
    name: str,
    searcher: Searcher,
    result: SearchResult,
    paging: tuple[int, int, float | None],
    part_ranks: list[dict] | None = None,
    searched: tuple[Filters | None, set[int]] = (None, set()),
):
    """The hits, and why: the score profile over the collection and the query's map position.

    `searched` is the search's (filters, excluded positions), for the note on an empty page."""
    k, offset, min_score = paging
    hits = [
        {**item_out(request, name, hit.item), "score": hit.score, "rank": hit.rank}
        for hit in result.hits
    ]
    return {
        "collection": name,
        "query": result.query,
        "k": k,
        "offset": offset,
        "notes": result.notes + below_min_score(searcher, result, min_score, *searched),
        "hits": hits,
        **searcher.explanation(result, offset + k, min_score),
        "part_ranks": part_ranks,
    }


def router(catalog: Catalog, settings: Settings) -> APIRouter:
    api = APIRouter(tags=["search"], dependencies=[Depends(one_file_part)])
    params = Params.of(catalog, settings)
    collection_param, k_param, file_param = params.collection, params.k, params.image_file

    @api.get(
        "/api/collections/{collection}/search/text",
        response_model=SearchResponse,
        summary="find images matching a description",
        responses=responses(400, 404, 422, 503),
    )
    def search_text(
        request: Request,
        collection: collection_param,
        search_filters: SearchFilters,
        search_effort: Effort,
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
        offset: Offset = 0,
        min_score: MinScore = None,
    ):
        searcher = catalog.get(collection).searcher
        options = dict(k=k, offset=offset, min_score=min_score, filters=search_filters)
        result = searcher.text(q, **options, **search_effort)
        paging, searched = (k, offset, min_score), (search_filters, set())
        return search_response(request, collection, searcher, result, paging, None, searched)

    @api.post(
        "/api/collections/{collection}/search/image",
        response_model=SearchResponse,
        summary="find images similar to an uploaded image or to an item",
        responses=responses(400, 404, 413, 422, 503),
    )
    def search_image(
        request: Request,
        collection: collection_param,
        search_filters: SearchFilters,
        search_effort: Effort,
        file: file_param = None,
        item_id: ItemForm = None,
        k: k_param = 10,
        offset: Offset = 0,
        min_score: MinScore = None,
    ):
        file = one_source(file, item_id, "query image")
        searcher = catalog.get(collection).searcher
        options = dict(k=k, offset=offset, min_score=min_score, filters=search_filters)
        options |= search_effort
        if file is not None:
            result = searcher.image(read_upload(file, settings.max_image_mb), **options)
            exclude = set()
        else:
            result = searcher.similar(item_id, **options)
            exclude = {searcher.index.position(item_id)}
        paging, searched = (k, offset, min_score), (search_filters, exclude)
        return search_response(request, collection, searcher, result, paging, None, searched)

    @api.post(
        "/api/collections/{collection}/search/composed",
        response_model=SearchResponse,
        summary="find images like a reference image, changed as a text says",
        responses=responses(400, 404, 413, 422, 503),
    )
    def search_composed(
        request: Request,
        collection: collection_param,
        search_filters: SearchFilters,
        search_effort: Effort,
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
        item_id: ItemForm = None,
        k: k_param = 10,
        offset: Offset = 0,
        min_score: MinScore = None,
    ):
        file = one_source(file, item_id, "reference image")
        loaded = catalog.get(collection)
        if file is not None:
            reference, exclude = read_upload(file, settings.max_image_mb), set()
        else:  # an unknown id is a 404, never a file path
            reference, exclude = item_id, {loaded.index.position(item_id)}
        result = loaded.searcher.composed(
            reference,
            text,
            method=method,
            k=k,
            offset=offset,
            min_score=min_score,
            filters=search_filters,
            **search_effort,
        )
        parts = loaded.searcher.part_ranks(reference, text, [hit.id for hit in result.hits])
        paging, searched = (k, offset, min_score), (search_filters, exclude)
        return search_response(
            request, collection, loaded.searcher, result, paging, parts, searched
        )

    return api
