"""The Gradio UI: browse a collection, search it by text, image or image + text, tag and explain.

Layout, mobile first: the collection switcher and share box (`shell`), one tab per task (tabs
wrap onto more rows on narrow screens rather than hiding in a menu), and a detail panel
(`detail`) that every gallery fills when an image is clicked: beside the tabs on wide screens,
below them on phones. Each tab's module owns its components, its handlers and the plain
functions behind them. Per-user data (uploaded collections, the last query, the composed-search
chain) lives in gr.State, so users never see each other's state. `links` keeps the view in the
URL; `endpoints` holds the typed API and MCP tools; `i18n` the interface's languages.
"""

import gradio as gr

from retrieval.catalog import Catalog
from retrieval.config import Settings
from webapp.ui import (
    collection_map,
    composed,
    detail,
    duplicates,
    endpoints,
    explain,
    gallery,
    image_search,
    links,
    shell,
    tagging,
    text_search,
    why,
    your_collection,
)
from webapp.ui.common import clearing
from webapp.ui.i18n import CHOOSE_LANGUAGE, translations, wire_tab_labels
from webapp.ui.state import sessions_root

CSS = """
#detail-panel {position: sticky; top: 0.5rem;}
/* result galleries: as many columns as the width holds (a fixed 6 hid half the results on phones) */
.result-gallery .grid-container {
    grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important;
    grid-template-rows: none !important;
}
/* ...and as many rows as the results need: no fixed 450 px box with an inner scrollbar */
.result-gallery .grid-wrap.fixed-height {min-height: 0 !important; max-height: none !important; height: auto !important;}
/* a result's score and title on up to two lines (one line cut every title to "0.963 · r…") */
.result-gallery .caption-label {
    white-space: normal !important; max-width: calc(100% - 8px) !important;
    display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
    font-size: 11px; line-height: 1.25; padding: 2px 6px !important; max-height: calc(2.5em + 4px);
}
/* small images (thumbnails, 64 px heatmaps) fill their frame instead of staying tiny */
.large-image img {width: 100%; height: 100%; object-fit: contain;}
.score-note {font-size: var(--text-sm); opacity: 0.8;}
/* a long collection name ("... (unavailable)") ends before the dropdown's arrow on a phone */
#collection input {text-overflow: ellipsis; padding-right: 2rem;}
/* a keyboard user always sees where they are */
button:focus-visible, [role=tab]:focus-visible, input:focus-visible, textarea:focus-visible,
.gallery-item:focus-visible, [role=radio]:focus-visible {
    outline: 3px solid var(--color-accent) !important; outline-offset: 2px;
}
"""


def launch_options(settings: Settings) -> dict:
    """Options for `demo.launch(...)` and `gr.mount_gradio_app(...)` alike."""
    return {
        "theme": gr.themes.Soft(),
        "css": CSS,
        "max_file_size": f"{settings.max_upload_mb}mb",
        "i18n": translations(),
        "head": CHOOSE_LANGUAGE,
        "mcp_server": True,
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
    start = default_collection(catalog)
    with gr.Blocks(title="Smart Retrieval", fill_width=True) as demo:
        frame = shell.build(catalog, settings, start)
        with gr.Row():
            with gr.Column(scale=3, min_width=340), gr.Tabs(overflow_behavior="wrap") as tabs:
                browse_tab = gallery.build()
                text_tab = text_search.build(settings)
                image_tab = image_search.build(settings)
                composed_tab = composed.build(settings, frame.start)
                tagging_tab = tagging.build(frame.start)
                explain_tab = explain.build()
                map_tab = collection_map.build()
                duplicates_tab = duplicates.build()
                upload_tab = your_collection.build(settings)
            with gr.Column(scale=2, min_width=300, elem_id="detail-panel"):
                panel = detail.build(frame)
        frame.tabs = tabs
        frame.followers = [
            (browse_tab.follows, gallery.follow),
            (text_tab.follows, text_search.follow),
            (image_tab.follows, image_search.follow),
            (composed_tab.follows, composed.follow),
            (tagging_tab.follows, tagging.follow),
            (upload_tab.follows, your_collection.follow),
            (map_tab.follows, collection_map.follow),
            *(clearing(part.stale) for part in (text_tab, image_tab, composed_tab, tagging_tab)),
            *(clearing(part.stale) for part in (explain_tab, panel, map_tab, duplicates_tab)),
        ]
        shell.wire(demo, frame)
        gallery.wire(browse_tab, frame, panel)
        detail.wire(panel)
        text_search.wire(text_tab, frame, panel)
        image_search.wire(image_tab, frame, panel)
        composed.wire(composed_tab, frame, panel)
        last_search = gr.State(None)  # the latest query of any search tab, for the map
        for searching in (text_tab, image_tab, composed_tab):
            why.wire(searching.explanation, frame, searching)
            searching.query_used.change(
                lambda query: query, searching.query_used, last_search, api_visibility="private"
            )
        collection_map.wire(map_tab, frame, panel, last_search)
        duplicates.wire(duplicates_tab, frame, panel)
        tagging.wire(tagging_tab, frame)
        explain.wire(explain_tab, frame, panel)
        your_collection.wire(upload_tab, frame)
        pages = {
            "gallery": (gallery, browse_tab),
            "text": (text_search, text_tab),
            "image": (image_search, image_tab),
            "composed": (composed, composed_tab),
            "tagging": (tagging, tagging_tab),
            "explain": (explain, explain_tab),
            "upload": (your_collection, upload_tab),
            "map": (collection_map, map_tab),
            "duplicates": (duplicates, duplicates_tab),
        }
        links.wire(demo, frame, pages)
        wire_tab_labels(demo, {tab_id: tab.page_tab for tab_id, (_, tab) in pages.items()})
        if start is not None:
            endpoints.register(frame, start)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo
