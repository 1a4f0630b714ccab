"""The app's typed endpoints: what gradio_client users and AI assistants (MCP) call.

The UI's own events take every widget of a tab as an argument; these take a few named,
documented arguments with defaults and answer plain lists of hits. They are the only endpoints
on the app's "Use via API" page and the only MCP tools. Each hit carries links to the REST
API's image routes. The searching itself is the tabs' own functions.
"""

from pathlib import Path
from urllib.parse import quote

import gradio as gr
from gradio import FileData

from retrieval.catalog import Collection
from webapp.ui import composed, image_search, tagging, text_search
from webapp.ui.common import guarded
from webapp.ui.shell import Shell, serve_files


def with_links(request: gr.Request | None, collection: str, hits: list[dict]) -> list[dict]:
    """Each hit with absolute links to its thumbnail and full image (the REST API serves them)."""
    base = str(request.base_url).rstrip("/") if request is not None else ""
    linked = []
    for hit in hits:
        url = f"{base}/api/collections/{quote(collection)}/items/{quote(hit['id'])}/image"
        linked.append({**hit, "thumb_url": f"{url}?size=thumb", "image_url": f"{url}?size=full"})
    return linked


def uploaded(image: FileData | dict | None) -> str | None:
    """The server-side path of an image sent with gradio_client's handle_file or over MCP."""
    if image is None:
        return None
    path = image["path"] if isinstance(image, dict) else image.path
    return str(Path(path)) if path else None


def register(shell: Shell, default_collection: str) -> None:
    """Add the endpoints to the Blocks being built; `default_collection` is every default."""

    def opened(name: str) -> Collection:
        collection = shell.catalog.get(name or default_collection)
        serve_files(collection)
        return collection

    def list_collections() -> list[dict]:
        """The collections this server offers, whether each can be searched now, and why not.

        Returns:
            one entry per collection: name, title, ready (true/false) and reason when not ready.
        """
        entries = []
        for name, spec in shell.catalog.specs.items():
            reason = shell.catalog.status(name)
            entry = {"name": name, "title": spec.title or name, "ready": reason is None}
            entries.append(entry if reason is None else {**entry, "reason": reason})
        return entries

    def text_search_tool(
        query: str,
        collection: str = default_collection,
        k: int = 12,
        min_score: float = -1.0,
        artist: str = "",
        year_from: str = "",
        year_to: str = "",
        keyword: str = "",
        request: gr.Request = None,
    ) -> list[dict]:
        """Find the images of a collection that match a description in English.

        Args:
            query: what to look for, e.g. "a large red circle".
            collection: the collection's name (list_collections gives them).
            k: how many results, best first.
            min_score: leave out results below this cosine similarity (-1: keep all).
            artist: only this artist's works (empty: any).
            year_from: only works dated from this year (empty: no bound).
            year_to: only works dated up to this year (empty: no bound).
            keyword: only items whose title or description holds this word (empty: any).

        Returns:
            hits, best first: id, rank, title, score (cosine similarity, -1 to 1) and image links.
        """
        filters = text_search.make_filters(artist, year_from, year_to, keyword)
        _, hits, _ = text_search.text_search(opened(collection), query, k, min_score, filters)
        return with_links(request, collection or default_collection, hits)

    def image_search_tool(
        image: FileData | None = None,
        item_id: str = "",
        collection: str = default_collection,
        k: int = 12,
        request: gr.Request = None,
    ) -> list[dict]:
        """Find the images of a collection that look like an image: an uploaded one or an item.

        Args:
            image: an image file (leave empty to search by item_id).
            item_id: an item of the collection to find similar items to (it is left out).
            collection: the collection's name (list_collections gives them).
            k: how many results, best first.

        Returns:
            hits, best first: id, rank, title, score (cosine similarity, -1 to 1) and image links.
        """
        current = opened(collection)
        _, hits, _ = image_search.image_search(current, uploaded(image), item_id, k)
        return with_links(request, collection or default_collection, hits)

    def composed_search_tool(
        text: str,
        item_id: str = "",
        image: FileData | None = None,
        method: str = "",
        collection: str = default_collection,
        k: int = 12,
        request: gr.Request = None,
    ) -> list[dict]:
        """Find images like a reference image but changed as a text asks ("make it blue").

        Args:
            text: the change to make to the reference, in English.
            item_id: the reference: an item of the collection (or give image instead).
            image: the reference as an image file (used when item_id is empty).
            method: "combiner", "zero-shot" or "sum" (empty: the collection's best).
            collection: the collection's name (list_collections gives them).
            k: how many results, best first.

        Returns:
            hits, best first: id, rank, title, score (each method has its own scale), links.
        """
        current = opened(collection)
        method = method or composed.composed_methods(current)[0]
        _, hits, _, _ = composed.composed_search(current, uploaded(image), item_id, text, method, k)
        return with_links(request, collection or default_collection, hits)

    def tag_image_tool(
        item_id: str = "",
        image: FileData | None = None,
        vocabulary: str = "",
        mode: str = "single",
        top_k: int = 3,
        threshold: float = 0.1,
        collection: str = default_collection,
    ) -> list[dict]:
        """Zero-shot tags for an item of a collection or an image, from a shipped vocabulary.

        Args:
            item_id: the item to tag (or give image instead).
            image: an image file to tag (used when item_id is empty).
            vocabulary: a shipped vocabulary's name (empty: the collection's own).
            mode: "single" (the best tags of each group) or "multi" (all above threshold).
            top_k: tags per group in single mode.
            threshold: the lowest probability kept in multi mode.
            collection: the collection whose model tags (list_collections gives them).

        Returns:
            tags, most probable first: tag, score (a probability) and group.
        """
        current = opened(collection)
        vocabulary = vocabulary or tagging.vocabularies(current)[1]
        limit = threshold if mode == "multi" else None
        return tagging.tag(current, uploaded(image), item_id, vocabulary, mode, top_k, limit)

    tools = {
        "list_collections": list_collections,
        "text_search": text_search_tool,
        "image_search": image_search_tool,
        "composed_search": composed_search_tool,
        "tag_image": tag_image_tool,
    }
    for name, tool in tools.items():
        tool.__name__ = name  # the MCP tool's name
        gr.api(guarded(tool), api_name=name)
