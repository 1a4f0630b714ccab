"""The Gradio UI: browse a collection, search it by text, image or image + text, tag and explain.

Layout: a collection switcher, one tab per task, and a detail panel on the right that every
gallery fills when an image is clicked. The work happens in `webapp.ui_logic` (plain functions);
this module only wires components. Per-user data (uploaded collections, the last query, the
composed-search chain) lives in gr.State, so users never see each other's state.
"""

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Catalog, Collection
from retrieval.config import Settings, get_settings
from retrieval.errors import RetrievalError
from webapp import ui_logic as logic
from webapp.ui_events import guarded, wire_searches, wire_tools
from webapp.ui_layout import build_layout
from webapp.ui_upload import sessions_root

CSS = """
#detail-panel {position: sticky; top: 0.5rem;}
#breadcrumbs {min-height: 2rem;}
"""
_served: set[Path] = set()


def launch_options(settings: Settings | None = None) -> dict:
    """Options for `demo.launch(...)` and `gr.mount_gradio_app(...)` alike."""
    settings = settings or get_settings()
    return {
        "theme": gr.themes.Soft(),
        "css": CSS,
        "max_file_size": f"{settings.max_upload_mb}mb",
    }


def serve_files(collection: Collection) -> None:
    """Serve thumbnails and originals straight from the collection's folders (no copies)."""
    folders = [collection.index.directory, collection.index.source_root()]
    new = [f.resolve() for f in folders if f.is_dir() and f.resolve() not in _served]
    if new:
        _served.update(new)
        gr.set_static_paths(new)


def default_collection(catalog: Catalog) -> str | None:
    """The first collection that loads (loading it now makes the first page fast)."""
    for name in catalog.names():
        if catalog.status(name) is None:
            return name
    return next(iter(catalog.names()), None)


def build_ui(catalog: Catalog, settings: Settings | None = None) -> gr.Blocks:
    settings = settings or get_settings()
    sessions = sessions_root(settings)
    sessions.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([sessions])
    start = default_collection(catalog)

    def resolve(session, collection_name) -> Collection:
        collection = logic.get_collection(catalog, session, collection_name)
        serve_files(collection)
        return collection

    with gr.Blocks(title="Smart Retrieval", fill_width=True) as demo:
        ui = build_layout(catalog, settings, start)
        item_details = wire_browsing(demo, ui, resolve, catalog)
        wire_searches(ui, resolve, item_details)
        wire_tools(ui, resolve, catalog, settings, serve_files)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def wire_browsing(demo: gr.Blocks, ui: SimpleNamespace, resolve, catalog: Catalog):
    """The collection switcher, the gallery pages and the detail panel; returns item_details."""
    session = ui.session

    # -- collection ------------------------------------------------------------------------
    @guarded
    def select_collection(collection_name, session):
        """Status, first gallery page and per-collection choices for the chosen collection."""
        try:
            current = resolve(session, collection_name)
        except RetrievalError as error:
            gr.Warning(str(error))
            empty = gr.update()
            return (
                logic.unavailable_message(collection_name or "?", str(error)),
                [],
                [],
                "",
                1,
                gr.Dataset(samples=[]),
                empty,
                empty,
                empty,
            )
        gallery, hits, info, _ = logic.browse(current, 1)
        names, default_vocabulary = logic.vocabularies(current)
        methods = logic.composed_methods(current)
        return (
            logic.collection_summary(current),
            gallery,
            hits,
            info,
            1,
            gr.Dataset(samples=[[example] for example in current.spec.examples]),
            gr.Dropdown(choices=logic.artists(current), value=None),
            gr.Dropdown(choices=methods, value=methods[0]),
            gr.Dropdown(choices=names, value=default_vocabulary),
        )

    collection_outputs = [
        ui.status,
        ui.browse_gallery,
        ui.browse_hits,
        ui.page_info,
        ui.page,
        ui.examples,
        ui.artist,
        ui.method,
        ui.vocabulary,
    ]
    ui.collection.change(
        select_collection,
        [ui.collection, session],
        collection_outputs,
        api_name="select_collection",
    )
    demo.load(
        select_collection,
        [ui.collection, session],
        collection_outputs,
        api_name="initial_collection",
        api_visibility="private",
    )
    demo.load(
        guarded(lambda: logic.catalog_overview(catalog)),
        None,
        ui.overview,
        api_name="collections_overview",
    )

    # -- gallery ---------------------------------------------------------------------------
    @guarded
    def browse(collection_name, page_number, session):
        return logic.browse(resolve(session, collection_name), page_number or 1)

    browse_outputs = [ui.browse_gallery, ui.browse_hits, ui.page_info, ui.page]
    ui.page.submit(browse, [ui.collection, ui.page, session], browse_outputs, api_name="browse")
    ui.prev_page.click(
        guarded(lambda name, p, s: browse(name, (p or 1) - 1, s)),
        [ui.collection, ui.page, session],
        browse_outputs,
        api_name="browse_previous",
        api_visibility="private",
    )
    ui.next_page.click(
        guarded(lambda name, p, s: browse(name, (p or 1) + 1, s)),
        [ui.collection, ui.page, session],
        browse_outputs,
        api_name="browse_next",
        api_visibility="private",
    )

    @guarded
    def sample_items(collection_name, session):
        gallery, hits = logic.random_sample(resolve(session, collection_name))
        return gallery, hits, "Random sample"

    ui.sample.click(
        sample_items,
        [ui.collection, session],
        [ui.browse_gallery, ui.browse_hits, ui.page_info],
        api_name="random_sample",
    )

    # -- detail panel ----------------------------------------------------------------------
    @guarded
    def item_details(collection_name, item_id, session):
        image, card = logic.item_details(resolve(session, collection_name), item_id)
        return image, card, gr.update(visible=False), ""

    detail_outputs = [ui.detail_image, ui.detail_card, ui.why_image, ui.why_note]
    ui.selected_id.submit(
        item_details,
        [ui.collection, ui.selected_id, session],
        detail_outputs,
        api_name="item_details",
    )

    def on_select(hits, collection_name, session, query, evt: gr.SelectData):
        if not hits or evt.index is None or evt.index >= len(hits):
            raise gr.Error("that result is no longer shown; search again")
        item_id = hits[evt.index]["id"]
        return (*item_details(collection_name, item_id, session), item_id, query)

    select_outputs = [*detail_outputs, ui.selected_id, ui.selected_query]
    for gallery, hits_box, query_state, api in (
        (ui.browse_gallery, ui.browse_hits, None, "select_gallery_item"),
        (ui.text_gallery, ui.text_hits, ui.text_query, "select_text_result"),
        (ui.image_gallery, ui.image_hits, ui.image_query, "select_image_result"),
    ):
        inputs = [hits_box, ui.collection, session, query_state or gr.State(None)]
        gallery.select(
            guarded(on_select),
            inputs,
            select_outputs,
            api_name=api,
            api_visibility="private",
        )

    return item_details
