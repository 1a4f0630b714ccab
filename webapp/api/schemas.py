"""The JSON bodies the API answers with, and the functions that fill the shared ones.

Pydantic models document every response in /openapi.json; the routers return plain dicts that
FastAPI validates against them.
"""

from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field

INTERNAL_FIELDS = {"fingerprint", "thumb"}


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


class Skipped(BaseModel):
    file: str = Field(description="the image (relative path) or metadata row left out")
    reason: str


class CollectionInfo(CollectionSummary):
    count: int = Field(description="number of items")
    model: str
    dim: int
    index_type: str
    preprocessing: str
    runtime: str = Field(
        description="where queries are embedded: torch, onnx or onnx-int8 (ONNX Runtime); "
        "heatmaps always use torch"
    )
    composed_methods: list[str] = Field(description="values accepted by search/composed `method`")
    method_licences: dict[str, str] = Field(
        {},
        description="the licence of each composed method whose weights come from elsewhere "
        "(e.g. zero-shot with SEARLE's phi: CC BY-NC 4.0, non-commercial use only)",
    )
    vocabulary: str | None = Field(None, description="default tagging vocabulary")
    uploaded: bool = Field(description="true for collections created through the API")
    skipped: list[Skipped] = Field(
        [], description="files and metadata rows the last indexing left out, with the reason"
    )


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
    score: float = Field(
        description="cosine similarity between query and item, -1..1; each kind of query and "
        "each composed method has its own typical range, so compare scores within one search"
    )
    rank: int = Field(description="1-based position in the whole ranking (offset included)")


class Histogram(BaseModel):
    edges: list[float] = Field(description="bin edges, one more than counts")
    counts: list[int]


class ScoreProfile(BaseModel):
    """Why these results: the query's similarity over the whole collection."""

    count: int = Field(description="items scored (the whole collection)")
    best: float
    median: float
    spread: float = Field(description="standard deviation of the scores")
    k: int
    top_k_score: float = Field(description="the score at the top-k cut")
    min_score: float | None = None
    above_min_score: int | None = Field(None, description="items scoring at least min_score")
    histogram: Histogram


class MapPosition(BaseModel):
    x: float = Field(description="on the collection map (GET .../map), 0..1")
    y: float


class PartRank(BaseModel):
    id: str
    reference_rank: int = Field(description="the hit's rank by the reference image alone")
    text_rank: int = Field(description="the hit's rank by the text alone")


class SearchResponse(BaseModel):
    collection: str
    query: dict[str, Any]
    k: int
    offset: int
    notes: list[str] = Field(
        description="remarks, e.g. that a long text was truncated, or that min_score left no hit "
        "(with the best score it hid)"
    )
    hits: list[HitOut]
    profile: ScoreProfile | None = None
    map_position: MapPosition | None = Field(
        None, description="where the query lands on the collection map; null without a map"
    )
    part_ranks: list[PartRank] | None = Field(
        None, description="composed search: each hit's rank by each part of the query alone"
    )

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


class MapPoint(BaseModel):
    id: str
    x: float = Field(description="0..1")
    y: float = Field(description="0..1")
    group: str = Field(description="the colour group: a field's value, or 'top results'")
    title: str


class PlacedQuery(MapPosition):
    text: str


class CollectionMap(BaseModel):
    collection: str
    count: int = Field(description="items in the collection (points may be a sample)")
    method: str | None = Field(None, description="umap or pca")
    requested: str | None = None
    seconds: float | None = Field(None, description="time the layout took when it was stored")
    trustworthiness: float | None = Field(
        None, description="k=10 on a sample; 1.0: every map neighbour is a true neighbour"
    )
    points: list[MapPoint]
    query: PlacedQuery | None = None
    top: list[ItemOut] = Field(description="the query's top results, best first")


class DuplicateGroup(BaseModel):
    score: float = Field(description="the weakest copy probability inside the group, 0..1")
    items: list[ItemOut]


class DuplicateGroups(BaseModel):
    collection: str
    min_copy_score: float
    groups: list[DuplicateGroup] = Field(description="strongest first")


class DuplicateDecisions(BaseModel):
    collection: str
    not_duplicates: list[list[str]] = Field(description="every group of ids marked so far")


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
    score: float = Field(
        description="cosine similarity of image and query: what the map explains; always computed "
        "with PyTorch (the map needs gradients), whatever runtime serves the collection's searches"
    )
    method: str
    width: int = Field(description="width of the explained image in pixels")
    height: int
    peak: list[float] = Field(description="(x, y) of the most relevant point, in image pixels")
    heatmap: list[list[float]] = Field(description="relevance rows in [0, 1], at most 256 wide")


class Deleted(BaseModel):
    deleted: str


# -- filling them ------------------------------------------------------------------------------
def public_item(item: dict) -> dict:
    """An item's metadata without the fields only the index needs."""
    return {key: value for key, value in item.items() if key not in INTERNAL_FIELDS}


def item_out(request: Request, collection: str, item: dict) -> dict:
    """An item with absolute links to its thumbnail and image (an ItemOut)."""
    url = str(request.url_for("item_image", collection=collection, item_id=item["id"]))
    return {
        "id": item["id"],
        "item": public_item(item),
        "thumb_url": f"{url}?size=thumb",
        "image_url": f"{url}?size=full",
    }
