"""What the UI does, as plain functions over a `Collection`: testable without Gradio or a browser.

Every function returns plain data (gallery pairs, hit dicts, markdown). `webapp.ui` only wires
them to components and turns `RetrievalError`s into messages.
"""

from __future__ import annotations

import html
import importlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from retrieval.backbone import display_spec
from retrieval.catalog import Catalog, Collection
from retrieval.errors import BadInput, NotFound
from retrieval.search import Filters, SearchResult, tag_names

PAGE_SIZE = 24
MAX_ARTISTS = 1000
SESSION_PREFIX = "my:"

GalleryItems = list[tuple[str, str]]


def optional_module(name: str) -> ModuleType | None:
    """Tagging and heatmaps are optional features: the app works without their modules."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- collections -----------------------------------------------------------------------------
@dataclass
class SessionCollections:
    """Collections one browser session uploaded; kept in gr.State, never shared between users."""

    folder: Path
    collections: dict[str, Collection] = field(default_factory=dict)


def get_collection(
    catalog: Catalog, session: SessionCollections | None, name: str | None
) -> Collection:
    """A session's own upload first, else the shared catalog (which loads once and caches)."""
    if not name:
        raise BadInput("choose a collection first")
    if session is not None and name in session.collections:
        return session.collections[name]
    if name.startswith(SESSION_PREFIX):
        raise NotFound(
            f"the uploaded collection {name[len(SESSION_PREFIX) :]!r} belongs to another or an "
            "expired session; upload it again"
        )
    return catalog.get(name)


def collection_choices(
    catalog: Catalog, session: SessionCollections | None = None
) -> list[tuple[str, str]]:
    """(label, value) pairs for the collection dropdown: shared ones, then this session's."""
    choices = [(spec.title or name, name) for name, spec in catalog.specs.items()]
    if session is not None:
        choices += [
            (collection.spec.title, name) for name, collection in session.collections.items()
        ]
    return choices


def collection_summary(collection: Collection) -> str:
    spec, index = collection.spec, collection.index
    methods = ", ".join(collection.searcher.composers)
    text = f"**{html.escape(spec.title or spec.name)}**: {len(index):,} items"
    text += f" · model `{display_spec(index.model_spec())}` · composed search: {methods}"
    if spec.description:
        text += f"\n\n{html.escape(spec.description)}"
    return text


def unavailable_message(name: str, reason: str) -> str:
    return f"⚠️ **{html.escape(name)} is not available**: {html.escape(reason)}"


def catalog_overview(catalog: Catalog) -> str:
    """One line per shared collection with its state; loading is attempted (and cached) here."""
    lines = []
    for name, spec in catalog.specs.items():
        reason = catalog.status(name)
        state = "✅ ready" if reason is None else f"⚠️ unavailable: {html.escape(reason)}"
        lines.append(f"- **{html.escape(spec.title or name)}** (`{name}`): {state}")
    return "\n".join(lines)


def artists(collection: Collection, limit: int = MAX_ARTISTS) -> list[str]:
    """The most frequent artists, for the filter dropdown (other names can still be typed)."""
    counts = Counter(
        str(item["artist"]).strip() for item in collection.index.items if item.get("artist")
    )
    return [name for name, _ in counts.most_common(limit)]


def composed_methods(collection: Collection) -> list[str]:
    """Trained methods first ("combiner", "zero-shot"), the "sum" baseline last."""
    names = list(collection.searcher.composers)
    return sorted(names, key=lambda name: (name == "sum", names.index(name)))


# -- gallery and items -----------------------------------------------------------------------
def _hit_record(collection: Collection, item_id: str, score: float | None, rank: int) -> dict:
    item = collection.index.item(item_id)
    record = {"id": item_id, "rank": rank, "title": str(item.get("title", item_id))}
    if score is not None:
        record["score"] = round(float(score), 4)
    return record


def to_gallery(collection: Collection, hits: list[dict]) -> GalleryItems:
    """(thumbnail path, caption) pairs; thumbnails are served from the index folder as they are."""
    pairs = []
    for hit in hits:
        caption = hit["title"] if "score" not in hit else f"{hit['score']:.3f} · {hit['title']}"
        pairs.append((str(collection.index.thumb_path(hit["id"])), caption))
    return pairs


def page_count(collection: Collection, page_size: int = PAGE_SIZE) -> int:
    return max(1, -(-len(collection.index) // page_size))


def browse(
    collection: Collection, page: int = 1, page_size: int = PAGE_SIZE
) -> tuple[GalleryItems, list[dict], str, int]:
    """(gallery, items, "Page x of y", page): 1-based pages, clamped to the valid range."""
    page_size = max(1, min(int(page_size), 200))
    pages = page_count(collection, page_size)
    page = max(1, min(int(page or 1), pages))
    start = (page - 1) * page_size
    rows = collection.index.items[start : start + page_size]
    hits = [_hit_record(collection, row["id"], None, start + i + 1) for i, row in enumerate(rows)]
    info = f"Page {page} of {pages} · {len(collection.index):,} items"
    return to_gallery(collection, hits), hits, info, page


def random_sample(
    collection: Collection, count: int = PAGE_SIZE, seed: int | None = None
) -> tuple[GalleryItems, list[dict]]:
    count = min(int(count), len(collection.index))
    positions = random.Random(seed).sample(range(len(collection.index)), count)
    hits = [
        _hit_record(collection, collection.index.items[p]["id"], None, rank + 1)
        for rank, p in enumerate(positions)
    ]
    return to_gallery(collection, hits), hits


def _safe_url(url) -> str | None:
    url = str(url or "").strip()
    return url if url.lower().startswith(("http://", "https://")) else None


def item_details(collection: Collection, item_id: str) -> tuple[str, str]:
    """(large image path, markdown card) for one item."""
    item_id = (item_id or "").strip()
    if not item_id:
        raise BadInput("no item selected: click an image or give an item id")
    item = collection.index.item(item_id)
    lines = [f"### {html.escape(str(item.get('title', item_id)))}"]
    for key, label in (("artist", "Artist"), ("date", "Date"), ("license", "License")):
        if item.get(key):
            lines.append(f"**{label}:** {html.escape(str(item[key]))}")
    if item.get("description"):
        lines.append(html.escape(str(item["description"])))
    tags = item.get("tags")
    if tags:
        lines.append("**Tags:** " + html.escape(", ".join(tag_names(tags))))
    url = _safe_url(item.get("url"))
    if url:
        lines.append(f"[Source]({html.escape(url, quote=True)})")
    lines.append(f"<small>id `{html.escape(item_id)}`</small>")
    return str(collection.index.image_path(item_id)), "\n\n".join(lines)


# -- searches --------------------------------------------------------------------------------
def _hits(collection: Collection, result: SearchResult) -> list[dict]:
    return [_hit_record(collection, hit.id, hit.score, hit.rank) for hit in result.hits]


def _min_score(value) -> float | None:
    """The slider's lowest value (-1) means no minimum."""
    return None if value is None or float(value) <= -1 else float(value)


def _year(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise BadInput(f"a year must be a number, got {value!r}") from None


def make_filters(artist=None, date_from=None, date_to=None, keyword=None) -> Filters:
    date_from, date_to = _year(date_from), _year(date_to)
    if date_from is not None and date_to is not None and date_from > date_to:
        raise BadInput(f"the date range is empty: {date_from} is after {date_to}")
    return Filters(
        artist=(artist or "").strip() or None,
        date_from=date_from,
        date_to=date_to,
        keyword=(keyword or "").strip() or None,
    )


def text_search(
    collection: Collection,
    query: str,
    k: int = 12,
    min_score=None,
    filters: Filters | None = None,
) -> tuple[GalleryItems, list[dict], list[str]]:
    """(gallery, hits, notes): notes are warnings worth showing (truncated text, nothing found)."""
    result = collection.searcher.text(
        query or "", k=int(k), min_score=_min_score(min_score), filters=filters
    )
    hits = _hits(collection, result)
    return to_gallery(collection, hits), hits, result.notes + _empty_note(hits, filters)


def _empty_note(hits: list[dict], filters: Filters | None = None) -> list[str]:
    if hits:
        return []
    if filters is not None and not filters.is_empty():
        return ["no item matches the filters and the minimum score; loosen them"]
    return ["nothing scored above the minimum score; lower it"]


def reference_of(image: str | None, item_id: str | None):
    """An item id when one is picked, else the uploaded image (a file path)."""
    item_id = (item_id or "").strip()
    if item_id:
        return item_id
    if image:
        return image
    raise BadInput("give an image: upload one, or pick an item of the collection")


def image_search(
    collection: Collection,
    image: str | None = None,
    item_id: str | None = None,
    k=12,
    min_score=None,
) -> tuple[GalleryItems, list[dict], list[str]]:
    """Items that look like the image; a picked item is left out of its own results."""
    reference = reference_of(image, item_id)
    options = {"k": int(k), "min_score": _min_score(min_score)}
    if reference == (item_id or "").strip():
        result = collection.searcher.similar(reference, **options)
    else:
        result = collection.searcher.image(reference, **options)
    hits = _hits(collection, result)
    return to_gallery(collection, hits), hits, _empty_note(hits)


def composed_search(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    text: str,
    method: str = "sum",
    k: int = 12,
) -> tuple[GalleryItems, list[dict], list[str], list[float]]:
    """(gallery, hits, notes, query vector): the vector lets "why this result?" explain it."""
    reference = reference_of(image, item_id)
    vector, exclude, notes = collection.searcher.composed_vector(reference, text or "", method)
    result = collection.searcher.by_vector(vector, k=int(k), exclude=exclude)
    hits = _hits(collection, result)
    return to_gallery(collection, hits), hits, notes + _empty_note(hits), vector.tolist()


# -- composed refinement chain ---------------------------------------------------------------
def push_step(
    chain: list[dict] | None,
    item_id: str | None,
    image: str | None,
    title: str,
    text: str,
    method: str,
    hits: list[dict],
) -> list[dict]:
    """A new chain with one more refinement step (the old list is left as it was)."""
    step = {
        "id": item_id or None,
        "image": image if not item_id else None,
        "title": title,
        "text": text.strip(),
        "method": method,
        "hits": hits,
    }
    return [*(chain or []), step]


def reference_title(collection: Collection, item_id: str | None) -> str:
    if item_id:
        return str(collection.index.item(item_id).get("title", item_id))
    return "your image"


def breadcrumbs(chain: list[dict] | None, current_title: str | None = None) -> str:
    """reference + “text” → reference + “text” → current reference."""
    parts = [
        f"**{html.escape(step['title'])}** + “{html.escape(step['text'])}”" for step in chain or []
    ]
    if current_title:
        parts.append(f"**{html.escape(current_title)}**")
    return " → ".join(parts) if parts else "No refinement steps yet."


def step_back(chain: list[dict] | None) -> tuple[list[dict], dict | None, list[dict]]:
    """Undo the last step: (shorter chain, that step (its reference and text), earlier hits)."""
    if not chain:
        raise BadInput("there is no step to go back to")
    shorter, last = chain[:-1], chain[-1]
    previous_hits = shorter[-1]["hits"] if shorter else []
    return shorter, last, previous_hits


# -- tagging and explanations ----------------------------------------------------------------
def vocabularies(collection: Collection | None = None) -> tuple[list[str], str | None]:
    """(shipped vocabulary names, the collection's default if it ships one)."""
    tags = optional_module("retrieval.tags")
    if tags is None:
        return [], None
    names = tags.list_vocabularies()
    wanted = collection.spec.vocabulary if collection is not None else None
    return names, wanted if wanted in names else (names[0] if names else None)


def tag(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    vocabulary: str,
    mode: str = "single",
    top_k: int = 3,
    threshold: float | None = None,
) -> list[dict]:
    """Tags for one image, most probable first; a picked item reuses its stored vector."""
    tags = optional_module("retrieval.tags")
    if tags is None:
        raise BadInput("tagging is not available in this installation (retrieval.tags missing)")
    shipped = tags.list_vocabularies()
    if vocabulary not in shipped:  # never a path: the server's files are not vocabularies
        raise BadInput(f"choose a vocabulary: one of {', '.join(shipped)}")
    reference = reference_of(image, item_id)
    backbone = collection.backbone
    if reference == (item_id or "").strip():
        vectors = collection.searcher.item_vector(reference)[None]
        found = tags.tag_vectors(backbone, vectors, vocabulary, mode, int(top_k), threshold)[0]
    else:
        found = tags.tag_image(backbone, reference, vocabulary, mode, int(top_k), threshold)
    return [{"tag": t.tag, "score": round(float(t.score), 4), "group": t.group} for t in found]


def explain_query(collection: Collection, query: dict | None):
    """The query a search ran with, in the form `retrieval.explain.explain` takes."""
    if not query:
        raise BadInput("run a search and click one of its results first")
    if query["type"] == "text":
        return query["text"]
    if query["type"] == "item":
        return collection.searcher.item_vector(query["id"])
    if query["type"] == "image":
        return query["image"]
    return np.asarray(query["vector"], dtype=np.float32)


def explain(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    query,
    method: str = "auto",
    opacity: float = 0.5,
):
    """(overlay PIL image, markdown): which parts of the image match the query, and the score."""
    module = optional_module("retrieval.explain")
    if module is None:
        raise BadInput(
            "heatmaps are not available in this installation (retrieval.explain missing)"
        )
    if isinstance(query, str) and not query.strip():
        raise BadInput("type the text the image should be explained against")
    reference = reference_of(image, item_id)
    if reference == (item_id or "").strip():
        reference = str(collection.index.image_path(reference))
    heatmap = module.explain(collection.backbone, reference, query, method=method)
    note = f"Similarity **{heatmap.score:.3f}** · method `{heatmap.method}`"
    return heatmap.overlay(float(opacity)), note
