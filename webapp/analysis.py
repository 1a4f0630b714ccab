"""Tagging and relevance heatmaps, one implementation for the REST API and the UI.

The image is an item of the collection named by its id (a str, as in `retrieval.search`:
tagging reuses its stored vector, heatmaps read its file) or an uploaded image (bytes, a Path).
A vocabulary is the user's own terms or one the server ships, chosen by name: a name is never
taken as a path to a file on the server.
"""

from __future__ import annotations

from retrieval import explain as heatmaps
from retrieval import tags
from retrieval.catalog import Collection
from retrieval.errors import BadInput, NotFound
from retrieval.images import ImageSource

FALLBACK_VOCABULARY = "heritage"  # general museum terms, for collections without their own


def default_vocabulary(collection: Collection | None) -> str:
    """The collection's own vocabulary when the server ships it, else the general one."""
    wanted = collection.spec.vocabulary if collection is not None else None
    return wanted if wanted in tags.list_vocabularies() else FALLBACK_VOCABULARY


def shipped_vocabulary(name: str | None) -> tags.Vocabulary:
    """A vocabulary that ships with the server, by name."""
    shipped = tags.list_vocabularies()
    if name is None:
        raise BadInput(f"choose a vocabulary: one of {', '.join(shipped)}")
    if name not in shipped:
        raise NotFound(f"no vocabulary {name!r}; choose one of {', '.join(shipped)} or send terms")
    return tags.load_vocabulary(name)


def vocabulary_for(collection: Collection, terms: str | None, name: str | None) -> tags.Vocabulary:
    """The user's terms (one per line or comma-separated), else a shipped vocabulary by name,
    else the collection's default."""
    if terms is not None and terms.strip():
        words = [w.strip() for line in terms.splitlines() for w in line.split(",") if w.strip()]
        if len(words) > tags.MAX_TERMS:
            raise BadInput(f"give at most {tags.MAX_TERMS} terms, not {len(words)}")
        return tags.vocabulary_from_terms(words)
    return shipped_vocabulary(name if name is not None else default_vocabulary(collection))


def tag(
    collection: Collection,
    vocabulary: tags.Vocabulary,
    source: str | ImageSource,
    mode: str = "single",
    top_k: int = 1,
    threshold: float | None = None,
) -> list[dict]:
    """Tags of an item (its stored vector: nothing is re-encoded) or of an image, best first."""
    if isinstance(source, str):
        vectors = collection.searcher.item_vector(source)[None]
    else:
        vectors = collection.backbone.encode_images([source])
    found = tags.tag_vectors(
        collection.backbone, vectors, vocabulary, mode=mode, top_k=top_k, threshold=threshold
    )[0]
    return [{"tag": t.tag, "score": float(t.score), "group": t.group} for t in found]


def explain(
    collection: Collection, source: str | ImageSource, query, method: str = "auto"
) -> heatmaps.Heatmap:
    """Which parts of an item's image (a str id) or of an uploaded image make it match `query`
    (a text, an image, or a query vector such as a composed search's)."""
    image = collection.index.image_path(source) if isinstance(source, str) else source
    return heatmaps.explain(collection.backbone, image, query, method=method)
