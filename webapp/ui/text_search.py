"""Text search tab: describe what you look for, optionally filtered by artist, years, keyword."""

from collections import Counter
from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.search import Filters
from webapp.ui.common import (
    GalleryItems,
    empty_note,
    guarded,
    hits_of,
    minimum_score,
    results_gallery,
    to_gallery,
    warn,
)
from webapp.ui.detail import Detail
from webapp.ui.shell import Shell

MAX_ARTISTS = 1000


def artists(collection: Collection, limit: int = MAX_ARTISTS) -> list[str]:
    """The most frequent artists, for the filter dropdown (other names can still be typed)."""
    counts = Counter(
        str(item["artist"]).strip() for item in collection.index.items if item.get("artist")
    )
    return [name for name, _ in counts.most_common(limit)]


def _year(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise BadInput(f"a year must be a number, got {value!r}") from None


def make_filters(artist=None, date_from=None, date_to=None, keyword=None) -> Filters:
    date_from, date_to = _year(date_from), _year(date_to)
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
        query or "", k=int(k), min_score=minimum_score(min_score), filters=filters
    )
    hits = hits_of(collection, result)
    return to_gallery(collection, hits), hits, result.notes + empty_note(hits, filters)


def build(settings) -> SimpleNamespace:
    with gr.Tab("Text search", id="text"):
        with gr.Row(equal_height=True):
            query = gr.Textbox(label="Describe what you look for", scale=4, elem_id="text-query")
            button = gr.Button("Search", variant="primary", scale=1, elem_id="text-search")
        examples = gr.Dataset(components=[query], samples=[], label="Examples", type="values")
        with gr.Row():
            k = gr.Slider(1, settings.max_k, 12, step=1, label="Results (top k)")
            minimum = gr.Slider(-1, 1, -1, step=0.01, label="Minimum score (-1: no minimum)")
        with gr.Accordion("Filters", open=False), gr.Row():
            artist = gr.Dropdown([], label="Artist", allow_custom_value=True)
            # Textboxes, not Numbers: an opened, untouched Number reports 0, which filtered out
            # everything; empty means no bound.
            date_from = gr.Textbox(label="Year from", placeholder="e.g. 1600")
            date_to = gr.Textbox(label="Year to", placeholder="e.g. 1700")
            keyword = gr.Textbox(label="Keyword in title or description")
        gallery, hits = results_gallery("Results", "text-results")
        query_used = gr.State(None)
    follows = [examples, artist]
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The chosen collection's example queries and its artists."""
    if collection is None:
        return gr.Dataset(samples=[]), gr.update()
    return (
        gr.Dataset(samples=[[example] for example in collection.spec.examples]),
        gr.Dropdown(choices=artists(collection), value=None),
    )


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    @guarded
    def search(collection_name, text, k, min_score, artist_name, year_from, year_to, word, session):
        filters = make_filters(artist_name, year_from, year_to, word)
        gallery, hits, notes = text_search(
            shell.resolve(session, collection_name), text, k, min_score, filters
        )
        warn(notes)
        return gallery, hits, {"type": "text", "text": text.strip()}

    inputs = [
        shell.collection,
        tab.query,
        tab.k,
        tab.minimum,
        tab.artist,
        tab.date_from,
        tab.date_to,
        tab.keyword,
        shell.session,
    ]
    outputs = [tab.gallery, tab.hits, tab.query_used]
    gr.on([tab.button.click, tab.query.submit], search, inputs, outputs, api_name="text_search")
    tab.examples.click(  # an example fills the box and runs the search
        lambda sample_values: sample_values[0],
        tab.examples,
        tab.query,
        api_name="use_example",
        api_visibility="private",
    ).then(search, inputs, outputs, api_name="example_search", api_visibility="private")
    detail.follow_clicks(tab.gallery, tab.hits, tab.query_used, "select_text_result")
