"""The Map tab: the whole collection on a plane, neighbours beside each other, for seeing why a
query finds what it finds (the points come from `webapp.overview`). Dragging across the plot
zooms into that band and lists its items; a double click zooms out. A query (typed here, the last search of any tab, or the
one that found the item in the detail panel) is placed among its nearest items, and its top
results are highlighted and listed.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from webapp.overview import (
    MAX_POINTS,
    NO_COLOUR,
    OTHER,
    QUERY,
    SELECTED,
    TOP,
    colour_fields,
    map_rows,
    map_summary,
    region_items,
)
from webapp.ui.common import hit_record, listen, results_gallery, to_gallery
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
from webapp.ui.shell import Shell
from webapp.ui.why import query_vector

REGION_ITEMS = 24
MARKED = {QUERY: "#111827", TOP: "#dc2626", SELECTED: "#f59e0b", OTHER: "#94a3b8"}
PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777",
           "#65a30d", "#7c3aed", "#0d9488", "#ea580c", "#4f46e5", "#be123c"]  # fmt: skip


def colours(groups: list[str]) -> dict[str, str]:
    """A colour for each group drawn: the query, its results and the chosen item stand out."""
    groups = list(dict.fromkeys(groups))
    plain = iter(PALETTE * (len(groups) // len(PALETTE) + 1))
    return {group: MARKED.get(group) or next(plain) for group in groups}


def map_note(collection: Collection) -> str:
    if collection.index.layout is None:
        return f"This collection has no map yet: run `python -m retrieval map {collection.index.directory.name}`."
    drawn = map_summary(collection)
    quality = drawn.get("trustworthiness")
    text = f"{len(collection.index):,} items · layout **{drawn.get('method', '?').upper()}**"
    if quality is not None:
        text += f" · trustworthiness {quality:.3f} (1 = every neighbour on the map is a true one)"
    if drawn.get("method") == "pca":
        text += " · for a map that keeps neighbours together, run `python -m retrieval map INDEX`"
    if len(collection.index) > MAX_POINTS:
        text += f" · showing a fixed sample of {MAX_POINTS:,} points"
    return text


def map_points(
    collection: Collection, colour_by: str, query: dict | None = None, selected: str | None = None
) -> tuple[pd.DataFrame, list[int]]:
    """(the points to draw, with the query as one more point; the query's top positions)."""
    vector = query_vector(collection, query) if query else None
    rows, point, top = map_rows(collection, colour_by, vector, selected)
    if point is not None:
        rows.append({"id": "", **point, "group": QUERY, "title": query_title(query)})
    return pd.DataFrame(rows, columns=["x", "y", "group", "title", "id"]), top


def query_title(query: dict) -> str:
    if query.get("type") == "text":
        return f"“{query['text']}”"
    return {"item": "similar to an item", "image": "an uploaded image"}.get(
        query.get("type"), "a composed query"
    )


def records(collection: Collection, positions: list[int]) -> list[dict]:
    items = collection.index.items
    return [
        hit_record(collection, items[p]["id"], None, rank + 1) for rank, p in enumerate(positions)
    ]


def show_map(collection: Collection, colour_by=NO_COLOUR, query=None, selected=None) -> tuple:
    """(plot, note, gallery, hits, what the gallery shows)."""
    frame, top = map_points(collection, colour_by or NO_COLOUR, query, selected)
    hits = records(collection, top)
    if top:
        caption = f"The top {len(top)} results for {query_title(query)}, highlighted on the map."
    else:
        caption = "Drag across the map to list the items in that band; double-click to zoom out."
    plot = gr.ScatterPlot(value=frame, x_lim=None, y_lim=None)
    return plot, map_note(collection), to_gallery(collection, hits), hits, caption


def zoom(collection: Collection, x_range: list[float]) -> tuple:
    """(zoomed plot, gallery, hits, caption) for a dragged band."""
    positions, total = region_items(collection, x_range, REGION_ITEMS)
    low, high = sorted(float(value) for value in x_range)
    inside = collection.index.layout[:, 0]
    band = collection.index.layout[(inside >= low) & (inside <= high), 1]
    y_lim = [float(band.min()), float(band.max())] if len(band) else None
    hits = records(collection, positions)
    caption = f"{total} items in this band; the {len(positions)} nearest its middle are shown."
    return (
        gr.ScatterPlot(x_lim=[low, high], y_lim=y_lim),
        to_gallery(collection, hits),
        hits,
        caption,
    )


def recolour(plot) -> gr.ScatterPlot:
    """The colour map for the groups now drawn, sent after the points themselves.

    Gradio's plot rebuilds its colour scale and legend only when the colour map changes, and
    then from the points it held before that update: sent together, new groups stay grey."""
    if plot is None:
        return gr.skip()
    plot = plot if isinstance(plot, dict) else plot.model_dump()
    column = plot["columns"].index("group")
    return gr.ScatterPlot(color_map=colours([row[column] for row in plot["data"]]))


def build() -> SimpleNamespace:
    with gr.Tab(t("tab_map"), id="map") as page_tab:
        note = gr.Markdown(elem_id="map-note")
        with gr.Row(equal_height=True):
            text = gr.Textbox(
                label=t("map_query"),
                placeholder="e.g. a red circle",
                scale=3,
                min_width=180,
                elem_id="map-query",
            )
            place = gr.Button(
                t("show_on_map"), variant="primary", scale=1, min_width=90, elem_id="map-place"
            )
            last = gr.Button(t("map_last_search"), scale=1, min_width=90, elem_id="map-last")
        colour = gr.Dropdown(
            [NO_COLOUR], value=NO_COLOUR, label=t("map_colour_by"), elem_id="map-colour"
        )
        plot = gr.ScatterPlot(
            x="x",
            y="y",
            color="group",
            tooltip=["title", "id", "group"],
            x_title=" ",
            y_title=" ",
            height=460,
            show_label=False,
            elem_id="map-plot",
        )
        caption = gr.Markdown(elem_id="map-caption")
        gallery, hits = results_gallery(t("map_items"), "map-results")
        query = gr.State(None)
        selected = gr.State(None)
    follows = [colour, note, plot]
    stale = {gallery: [], hits: None, query: None, selected: None, caption: ""}
    link_fields = {"q": text}
    shown = query  # changes after a placement: the link follows
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The chosen collection's colour fields and its map, drawn at once."""
    if collection is None:
        return gr.update(), "", gr.update()
    colours = gr.Dropdown(choices=colour_fields(collection), value=NO_COLOUR)
    if collection.index.layout is None:
        return colours, map_note(collection), gr.ScatterPlot(value=None)
    plot, note, *_ = show_map(collection)
    return colours, note, plot


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's text, placed on the map."""
    query = {"type": "text", "text": view.q}
    shown = show_map(collection, NO_COLOUR, query)
    outputs = [tab.plot, tab.note, tab.gallery, tab.hits, tab.caption]
    return {tab.text: view.q, tab.query: query, **dict(zip(outputs, shown, strict=True))}


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail, last_search: gr.State) -> None:
    outputs = [tab.plot, tab.note, tab.gallery, tab.hits, tab.caption]

    def draw(collection_name, colour_by, query, selected, session):
        return show_map(shell.resolve(session, collection_name), colour_by, query, selected)

    def typed(collection_name, colour_by, text, session):
        text = (text or "").strip()
        if not text:
            raise BadInput("type what to place on the map, e.g. “a red circle”")
        query = {"type": "text", "text": text}
        return *draw(collection_name, colour_by, query, None, session), query, None

    def latest(collection_name, colour_by, query, session):
        if not query:
            raise BadInput("no search yet: search in the Text, Image or Composed tab first")
        return *draw(collection_name, colour_by, query, None, session), query, None

    def dragged(collection_name, session, evt: gr.SelectData):
        return zoom(shell.resolve(session, collection_name), evt.index)

    base = [shell.collection, tab.colour]
    state_out = [tab.query, tab.selected]
    redraws = [
        listen(
            [tab.place.click, tab.text.submit],
            typed,
            [*base, tab.text, shell.session],
            outputs + state_out,
            api_name="map_place_text",
        ),
        listen(
            tab.last.click,
            latest,
            [*base, last_search, shell.session],
            outputs + state_out,
            api_name="map_last_search",
            api_visibility="private",
        ),
        listen(
            [tab.colour.input, tab.plot.double_click],
            draw,
            [*base, tab.query, tab.selected, shell.session],
            outputs,
            api_name="map_draw",
            api_visibility="private",
        ),
        wire_show_on_map(tab, shell, detail, outputs),
    ]
    for redraw in redraws:
        redraw.then(recolour, tab.plot, tab.plot, api_visibility="private", show_progress="hidden")
    listen(
        tab.plot.select,
        dragged,
        [shell.collection, shell.session],
        [tab.plot, tab.gallery, tab.hits, tab.caption],
        api_name="map_zoom",
        api_visibility="private",
    )
    detail.follow_clicks(tab.gallery, tab.hits, tab.query, "select_map_item")


def wire_show_on_map(tab: SimpleNamespace, shell: Shell, detail: Detail, outputs: list):
    """The detail panel's "Show on map": this tab, with the item (and its query) marked."""

    def show_item(collection_name, colour_by, item_id, query, session):
        item_id = (item_id or "").strip()
        if not item_id:
            raise BadInput("no item selected: click an image first")
        shown = show_map(shell.resolve(session, collection_name), colour_by, query, item_id)
        return gr.Tabs(selected="map"), "map", *shown, query, item_id

    return listen(
        detail.map_button.click,
        show_item,
        [shell.collection, tab.colour, detail.selected_id, detail.selected_query, shell.session],
        [shell.tabs, shell.current_tab, *outputs, tab.query, tab.selected],
        api_name="show_on_map",
        api_visibility="private",
    )
