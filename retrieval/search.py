"""Search: turn a query (text, image, item, or image + modification text) into ranked items.

Every query becomes one normalised vector, then the index ranks items by inner product; filters,
thresholds and paging are applied here so every caller (CLI, UI, API) behaves the same.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from retrieval.backbone import Backbone
from retrieval.composed.baselines import RAW, Composer, input_features, sum_composer
from retrieval.config import DEFAULTS
from retrieval.errors import BadInput
from retrieval.images import ImageSource
from retrieval.index import Index, SearchEffort
from retrieval.layout import PLACE_NEIGHBOURS, place_query, score_profile

_YEAR = re.compile(r"(?<!\d)(\d{3,4})(?!\d)")


@dataclass
class Filters:
    """Metadata conditions; all given conditions must hold."""

    artist: str | None = None
    date_from: int | None = None
    date_to: int | None = None
    keyword: str | None = None
    tags: list[str] | None = None

    def __post_init__(self):
        if (
            self.date_from is not None
            and self.date_to is not None
            and self.date_from > self.date_to
        ):
            raise BadInput(
                f"the date range is empty: from {self.date_from} is after to {self.date_to}"
            )

    def is_empty(self) -> bool:
        return not any(value not in (None, "", []) for value in asdict(self).values())

    def matches(self, item: dict) -> bool:
        if self.artist and self.artist.strip().lower() != artist_key(item):
            return False
        if self.date_from is not None or self.date_to is not None:
            year = item_year(item)
            if year is None:
                return False
            if self.date_from is not None and year < self.date_from:
                return False
            if self.date_to is not None and year > self.date_to:
                return False
        if self.keyword:
            haystack = keyword_text(item)
            if not all(word in haystack for word in self.keyword.lower().split()):
                return False
        return not self.tags or {tag.lower() for tag in self.tags} <= tag_keys(item)


# What each filter compares, one definition for the local filters and the Milvus backend's rows.
def artist_key(item: dict) -> str:
    return str(item.get("artist", "")).strip().lower()


def keyword_text(item: dict) -> str:
    """The text a keyword must occur in: title and description, lower-cased."""
    return f"{item.get('title', '')} {item.get('description', '')}".lower()


def tag_keys(item: dict) -> set[str]:
    return {str(tag).lower() for tag in tag_names(item.get("tags"))}


def tag_names(tags) -> list[str]:
    """Tags as stored: a list of names or {tag, score} objects, or a "; "-separated string."""
    if not tags:
        return []
    if isinstance(tags, str):
        return [tag.strip() for tag in tags.split(";") if tag.strip()]
    return [tag["tag"] if isinstance(tag, dict) else str(tag) for tag in tags]


def item_year(item: dict) -> int | None:
    """The first 3-4 digit number in the date field ("c. 1650", "1503-1519" -> 1503)."""
    match = _YEAR.search(str(item.get("date", "")))
    return int(match.group(1)) if match else None


@dataclass
class Hit:
    id: str
    score: float
    rank: int
    item: dict


@dataclass
class SearchResult:
    hits: list[Hit]
    query: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    vector: np.ndarray | None = None  # the query as searched: the map and score profile place it


@dataclass
class Searcher:
    """Read-only over a loaded index and backbone, so one instance serves all requests."""

    index: Index
    backbone: Backbone
    composers: dict[str, Composer] = field(default_factory=dict)
    max_k: int = DEFAULTS.max_k  # the server's SR_MAX_K: the API validates against the same value

    def __post_init__(self):
        self.index.check_backbone(self.backbone)
        self.composers = {"sum": sum_composer, **self.composers}

    # -- query vectors -----------------------------------------------------------------------
    def text_notes(self, text: str) -> list[str]:
        """Checks a query text; the notes tell the user what the model will not see."""
        if not isinstance(text, str) or not text.strip():
            raise BadInput("the text query is empty")
        if self.backbone.is_truncated(text):
            return [
                f"the text is longer than the model's {self.backbone.context_length} tokens and was truncated"
            ]
        return []

    def text_vector(self, text: str) -> tuple[np.ndarray, list[str]]:
        notes = self.text_notes(text)
        return self.backbone.encode_texts([text])[0], notes

    def image_vector(self, source: ImageSource) -> np.ndarray:
        return self.backbone.encode_images([source])[0]

    def item_vector(self, item_id: str) -> np.ndarray:
        return np.array(self.index.vectors[self.index.position(item_id)], dtype=np.float32)

    def _reference(self, reference, raw_for: str = "") -> tuple[np.ndarray, set[int]]:
        """A string is an item id (looked up, excluded from results); anything else is an image.

        Image files must come as `Path`: user-supplied strings never open server files. With
        `raw_for` (the method that needs it) the feature is the encoder's output before
        normalisation: an item's comes from its stored vector and norm.
        """
        if isinstance(reference, str):
            position = self.index.position(reference)
            if raw_for:
                return self.index.raw_vector(reference, raw_for), {position}
            return self.item_vector(reference), {position}
        if raw_for:
            return self.backbone.encode_images([reference], normalise=False)[0], set()
        return self.image_vector(reference), set()

    # -- queries -----------------------------------------------------------------------------
    def text(self, query: str, **options) -> SearchResult:
        vector, notes = self.text_vector(query)
        result = self.by_vector(vector, **options)
        result.query, result.notes = {"type": "text", "text": query.strip()}, notes + result.notes
        return result

    def image(self, source: ImageSource, **options) -> SearchResult:
        result = self.by_vector(self.image_vector(source), **options)
        result.query = {"type": "image"}
        return result

    def similar(self, item_id: str, **options) -> SearchResult:
        exclude = {self.index.position(item_id)} | options.pop("exclude", set())
        result = self.by_vector(self.item_vector(item_id), exclude=exclude, **options)
        result.query = {"type": "item", "id": item_id}
        return result

    def composed_vector(
        self, reference, text: str, method: str = "sum"
    ) -> tuple[np.ndarray, set[int], list[str]]:
        composer = self.composers.get(method)
        if composer is None:
            raise BadInput(
                f"composed method {method!r} is not available here; choose one of {sorted(self.composers)}"
            )
        notes = self.text_notes(text)  # the composer encodes the text itself
        raw_for = (
            f"the composed method {method!r} (trained on raw CLIP features)"
            if input_features(composer) == RAW
            else ""
        )
        reference_vector, exclude = self._reference(reference, raw_for)
        image_features = torch.from_numpy(reference_vector[None]).to(self.backbone.device)
        with torch.inference_mode():  # composers are functional: no lock, no hooks
            query = composer(self.backbone, image_features, [text.strip()])
        return query[0].float().cpu().numpy(), exclude, notes

    def composed(self, reference, text: str, method: str = "sum", **options) -> SearchResult:
        vector, exclude, notes = self.composed_vector(reference, text, method)
        result = self.by_vector(vector, exclude=exclude | options.pop("exclude", set()), **options)
        result.query = {"type": "composed", "text": text.strip(), "method": method}
        result.notes = notes + result.notes
        return result

    def part_ranks(self, reference, text: str, ids: list[str]) -> list[dict]:
        """Where each composed hit ranks by the reference image alone and by the text alone:
        a hit that neither part finds on its own is the composition's doing."""
        reference_vector, _ = self._reference(reference)
        text_vector, _ = self.text_vector(text)
        by_reference, by_text = self.all_scores(reference_vector), self.all_scores(text_vector)
        ranks = []
        for item_id in ids:
            position = self.index.position(item_id)
            ranks.append(
                {
                    "id": item_id,
                    "reference_rank": int((by_reference > by_reference[position]).sum()) + 1,
                    "text_rank": int((by_text > by_text[position]).sum()) + 1,
                }
            )
        return ranks

    def explanation(self, result: SearchResult, k: int, min_score: float | None = None) -> dict:
        """Why these results: the score profile over the whole collection (see
        `layout.score_profile`) and where the query lands on the map, from one pass."""
        scores = self.all_scores(result.vector)
        return {
            "profile": score_profile(scores, k, min_score),
            "map_position": self._placed(scores),
        }

    def map_position(self, vector: np.ndarray) -> dict | None:
        """Where the query lands on the collection map; None when the index has no map."""
        return self._placed(self.all_scores(vector))

    def _placed(self, scores: np.ndarray) -> dict | None:
        if self.index.layout is None:
            return None
        count = min(PLACE_NEIGHBOURS, len(scores))
        top = np.argpartition(-scores, count - 1)[:count]
        x, y = place_query(self.index.layout, scores[top], top)
        return {"x": x, "y": y}

    def all_scores(self, vector: np.ndarray) -> np.ndarray:
        """The query's similarity to every item (one pass over the stored vectors)."""
        return np.asarray(self.index.vectors, np.float32) @ np.asarray(vector, np.float32)

    def by_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        offset: int = 0,
        min_score: float | None = None,
        filters: Filters | None = None,
        exclude: set[int] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> SearchResult:
        """Rank all items; `offset`/`k` page through the ranking, after filtering and exclusion.

        `ef_search` (HNSW) / `nprobe` (IVF-PQ) trade speed for recall on this query only."""
        k, offset = _check_paging(k, offset, self.max_k)
        effort = SearchEffort(ef_search, nprobe)
        exclude = exclude or set()
        allowed = None
        if filters is not None and not filters.is_empty():
            allowed = self.index.allowed(filters)  # positions, or a filter a server evaluates
        wanted = offset + k + len(exclude)
        query = np.asarray(vector, np.float32)
        scores, positions = self.index.search(query, wanted, allowed, effort)
        hits = []
        for score, position in zip(scores[0], positions[0], strict=True):
            if position < 0 or int(position) in exclude:
                continue
            if min_score is not None and score < min_score:
                break
            hits.append((float(score), int(position)))
        page = hits[offset : offset + k]
        return SearchResult(
            [
                Hit(self.index.items[p]["id"], s, offset + rank + 1, self.index.items[p])
                for rank, (s, p) in enumerate(page)
            ],
            vector=query,
            notes=self.index.effort_notes(effort, filtered=allowed is not None),
        )

    def item(self, item_id: str) -> dict:
        return self.index.item(item_id)


def _check_paging(k: int, offset: int, max_k: int) -> tuple[int, int]:
    if not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadInput(f"k must be between 1 and {max_k}, got {k!r}")
    if not isinstance(offset, int) or not 0 <= offset <= 10_000:
        raise BadInput(f"offset must be between 0 and 10000, got {offset!r}")
    return k, offset
