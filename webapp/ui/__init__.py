"""The Gradio UI: browse a collection, search it by text, image or image + text, tag and explain.

Layout: a collection switcher (`shell`), one tab per task, and a detail panel on the right
(`detail`) that every gallery fills when an image is clicked. Each tab's module owns its
components, its handlers and the plain functions behind them. Per-user data (uploaded
collections, the last query, the composed-search chain) lives in gr.State, so users never see
each other's state.
"""

import gradio as gr

from retrieval.catalog import Catalog
from retrieval.config import Settings
from webapp.ui import (
    composed,
    detail,
    explain,
    gallery,
    image_search,
    shell,
    tagging,
    text_search,
    your_collection,
)
from webapp.ui.state import sessions_root

CSS = """
#detail-panel {position: sticky; top: 0.5rem;}
#breadcrumbs {min-height: 2rem;}
/* result galleries: as many columns as the width holds (a fixed 6 hid half the results on phones) */
.result-gallery .grid-container {
    grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important;
    grid-template-rows: none !important;
}
"""


def launch_options(settings: Settings) -> dict:
    """Options for `demo.launch(...)` and `gr.mount_gradio_app(...)` alike."""
    return {
        "theme": gr.themes.Soft(),
        "css": CSS,
        "max_file_size": f"{settings.max_upload_mb}mb",
    }


def default_collection(catalog: Catalog) -> str | None:
    """The first collection that loads (loading it now makes the first page fast)."""
    for name in catalog.names():
        if catalog.status(name) is None:
            return name
    return next(iter(catalog.names()), None)


def build_ui(catalog: Catalog, settings: Settings | None = None) -> gr.Blocks:
    settings = settings or Settings.from_env()
    sessions = sessions_root(settings)
    sessions.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([sessions])
    with gr.Blocks(title="Smart Retrieval", fill_width=True) as demo:
        frame = shell.build(catalog, settings, default_collection(catalog))
        with gr.Row():
            with gr.Column(scale=3), gr.Tabs() as tabs:
                browse_tab = gallery.build()
                text_tab = text_search.build(settings)
                image_tab = image_search.build(settings)
                composed_tab = composed.build(settings, frame.start)
                tagging_tab = tagging.build(frame.start)
                explain_tab = explain.build()
                upload_tab = your_collection.build(settings)
            with gr.Column(scale=2, elem_id="detail-panel"):
                panel = detail.build(frame)
        frame.tabs = tabs
        followers = [
            (browse_tab.follows, gallery.follow),
            (text_tab.follows, text_search.follow),
            (composed_tab.follows, composed.follow),
            (tagging_tab.follows, tagging.follow),
        ]
        shell.wire(demo, frame, followers)
        gallery.wire(browse_tab, frame, panel)
        detail.wire(panel)
        text_search.wire(text_tab, frame, panel)
        image_search.wire(image_tab, frame, panel)
        composed.wire(composed_tab, frame, panel)
        tagging.wire(tagging_tab, frame)
        explain.wire(explain_tab, frame, panel)
        your_collection.wire(upload_tab, frame)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo
