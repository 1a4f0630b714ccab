"""The whole collection at a glance, one implementation for the REST API and the UI: the map's
points (with a query placed among them) and the items in a band of the map.

The layout is the one stored with the index (`retrieval.layout`), never computed per request.
At most `limit` points go to a browser (a fixed sample that always keeps the query's top
results), so 100k items do not freeze a phone.
"""

from __future__ import annotations

import numpy as np

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.layout import shown_points
from retrieval.search import tag_names

MAX_POINTS = 3_000
TOP_K = 12
MAX_GROUPS = 12  # a colour field with more values than this is no help to the eye
NO_COLOUR = "nothing"
QUERY, TOP, SELECTED, OTHER = "your query", "top results", "selected item", "other"
HIDDEN_FIELDS = {"id", "file", "thumb", "fingerprint", "tags"}


def colour_fields(collection: Collection) -> list[str]:
    """Metadata fields with a few distinct values (and "tag" when items have tags)."""
    items = collection.index.items[:5_000]
    values: dict[str, set] = {}
    for item in items:
        for key, value in item.items():
            if key not in HIDDEN_FIELDS and value not in ("", None):
                values.setdefault(key, set()).add(str(value))
    fields = sorted(k for k, seen in values.items() if 2 <= len(seen) <= MAX_GROUPS)
    tagged = any(item.get("tags") for item in items)
    return [NO_COLOUR, *fields, *(["tag"] if tagged else [])]


def group_of(item: dict, field: str | None) -> str:
    if field == "tag":
        names = tag_names(item.get("tags"))
        return names[0] if names else "(no tag)"
    if field in ("", NO_COLOUR, None):
        return OTHER
    return str(item.get(field) or f"(no {field})")


def layout_of(collection: Collection) -> np.ndarray:
    layout = collection.index.layout
    if layout is None:
        raise BadInput(
            f"the collection {collection.spec.name!r} has no map yet: its index was built before "
            f"maps existed; run `python -m retrieval map {collection.index.directory}`"
        )
    return layout


def map_summary(collection: Collection) -> dict:
    """How the stored map was drawn (method, seconds, trustworthiness), and the item count."""
    return {"count": len(collection.index), **collection.index.manifest.get("map", {})}


def map_rows(
    collection: Collection,
    colour_by: str | None = None,
    vector: np.ndarray | None = None,
    selected: str | None = None,
    limit: int = MAX_POINTS,
) -> tuple[list[dict], dict | None, list[int]]:
    """(points to draw, where the query lands, the query's top positions)."""
    if colour_by not in (None, NO_COLOUR, "tag") and colour_by not in colour_fields(collection):
        raise BadInput(f"cannot colour by {colour_by!r}; choose one of {colour_fields(collection)}")
    layout, items = layout_of(collection), collection.index.items
    point, top = None, []
    if vector is not None:
        _, positions = collection.index.search(vector, TOP_K)
        point, top = (
            collection.searcher.map_position(vector),
            [int(p) for p in positions[0] if p >= 0],
        )
    chosen = [collection.index.position(selected)] if selected else []
    marks = {p: TOP for p in top} | {p: SELECTED for p in chosen}
    rows = [
        {
            "id": items[p]["id"],
            "x": float(layout[p, 0]),
            "y": float(layout[p, 1]),
            "group": marks.get(int(p)) or group_of(items[p], colour_by),
            "title": str(items[p].get("title", items[p]["id"])),
        }
        for p in shown_points(len(items), limit, keep=top + chosen)
    ]
    return rows, point, top


def region_items(collection: Collection, x_range, limit: int = 24) -> tuple[list[int], int]:
    """(positions of items whose map point lies in the band [x0, x1], middle first; how many)."""
    layout = layout_of(collection)
    low, high = sorted(float(value) for value in x_range)
    inside = np.flatnonzero((layout[:, 0] >= low) & (layout[:, 0] <= high))
    ordered = inside[np.argsort(np.abs(layout[inside, 0] - (low + high) / 2))][:limit]
    return [int(p) for p in ordered], len(inside)
