"""Text search tab: describe what you look for, optionally filtered by artist, years, keyword."""

from collections import Counter
from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.search import Filters
from webapp.ui import why
from webapp.ui.common import (
    GalleryItems,
    empty_note,
    hits_of,
    keeping,
    listen,
    minimum_score,
    results_gallery,
    to_gallery,
    updates,
    warn,
)
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
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
    with gr.Tab(t("tab_text"), id="text") as page_tab:
        with gr.Row(equal_height=True):
            query = gr.Textbox(
                label=t("describe"),
                placeholder="e.g. a red circle on the left",
                scale=4,
                min_width=200,
                elem_id="text-query",
            )
            button = gr.Button(
                t("search"), variant="primary", scale=1, min_width=90, elem_id="text-search"
            )
        examples = gr.Dataset(
            components=[query], samples=[], label=t("examples"), type="values", visible=False
        )
        with gr.Row():
            k = gr.Slider(1, settings.max_k, 12, step=1, label=t("top_k"))
            minimum = gr.Slider(-1, 1, -1, step=0.01, label=t("min_score"))
        with gr.Accordion(t("filters"), open=False), gr.Row():
            artist = gr.Dropdown([], label=t("artist"), allow_custom_value=True)
            # Textboxes, not Numbers: an opened, untouched Number reports 0, which filtered out
            # everything; empty means no bound.
            date_from = gr.Textbox(label=t("year_from"), placeholder="e.g. 1600")
            date_to = gr.Textbox(label=t("year_to"), placeholder="e.g. 1700")
            keyword = gr.Textbox(label=t("keyword"))
        gallery, hits = results_gallery(t("results"), "text-results")
        gr.Markdown(t("score_note_text"), elem_classes=["score-note"], elem_id="text-score-note")
        explanation = why.build("text")
        query_used = gr.State(None)
    follows = [examples, artist, date_from, date_to]
    stale = {gallery: [], hits: None, query_used: None}  # cleared when the collection changes
    link_fields = {"q": query}
    shown = hits  # changes after a search: the link follows
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The chosen collection's example queries (none: no empty "Examples" header), its artists,
    and only the filters its metadata can answer (Shapes has no artists and no dates)."""
    if collection is None:
        return gr.Dataset(samples=[], visible=False), gr.update(), gr.update(), gr.update()
    samples = [[example] for example in collection.spec.examples]
    names = artists(collection)
    dated = any(item.get("date") for item in collection.index.items)
    return (
        gr.Dataset(samples=samples, visible=bool(samples)),
        gr.Dropdown(choices=names, value=None, visible=bool(names)),
        gr.Textbox(value="", visible=dated),
        gr.Textbox(value="", visible=dated),
    )


def search_outputs(collection: Collection, text: str, k=12, min_score=None, filters=None) -> tuple:
    """(gallery, hits, the query for "why this result?"), warnings shown."""
    gallery, hits, notes = text_search(collection, text, k, min_score, filters)
    warn(notes)
    return gallery, hits, {"type": "text", "text": text.strip()}


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's text query, searched."""
    found = search_outputs(collection, view.q)
    return {tab.query: view.q, **updates([tab.gallery, tab.hits, tab.query_used], found)}


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    def search(collection_name, text, k, min_score, artist_name, year_from, year_to, word, session):
        filters = make_filters(artist_name, year_from, year_to, word)
        current = shell.resolve(session, collection_name)
        return search_outputs(current, text, k, min_score, filters)

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
    enter = [box.submit for box in (tab.query, tab.date_from, tab.date_to, tab.keyword)]
    listen([tab.button.click, *enter], search, inputs, outputs, api_name="ui_text_search")
    tab.examples.click(  # an example fills the box and runs the search
        lambda sample_values: sample_values[0],
        tab.examples,
        tab.query,
        api_name="use_example",
        api_visibility="private",
    ).then(keeping(search, 3), inputs, outputs, api_name="example_search", api_visibility="private")
    detail.follow_clicks(tab.gallery, tab.hits, tab.query_used, "select_text_result")
