"""Gallery tab: page through the chosen collection, or look at a random sample of it."""

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from webapp.ui.common import (
    PAGE_SIZE,
    GalleryItems,
    hit_record,
    listen,
    random_sample,
    results_gallery,
    to_gallery,
)
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
from webapp.ui.shell import Shell


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
    hits = [hit_record(collection, row["id"], None, start + i + 1) for i, row in enumerate(rows)]
    info = f"Page {page} of {pages} · {len(collection.index):,} items"
    return to_gallery(collection, hits), hits, info, page


def build() -> SimpleNamespace:
    with gr.Tab(t("tab_gallery"), id="gallery") as page_tab:
        with gr.Row():
            prev_page = gr.Button(t("previous"), size="sm", min_width=80)
            # no minimum: a typed -3 is clamped to 1 by browse, not refused with an error box
            page = gr.Number(1, label=t("page"), precision=0, min_width=80)
            next_page = gr.Button(t("next"), size="sm", min_width=80)
            sample = gr.Button(t("random_sample"), size="sm", min_width=80)
        page_info = gr.Markdown()
        gallery, hits = results_gallery(
            t("collection"), "browse-gallery", json_title=t("items_as_json"), json_label=t("items")
        )
    follows = [gallery, hits, page_info, page]
    link_fields = {"gallery_page": page}
    shown = page_info  # changes when a page was shown: the link follows
    return SimpleNamespace(**locals())


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's page of the collection."""
    gallery, hits, info, page = browse(collection, int(view.gallery_page or 1))
    return {tab.gallery: gallery, tab.hits: hits, tab.page_info: info, tab.page: page}


def follow(collection: Collection | None) -> tuple:
    """A newly chosen collection opens on its first page."""
    if collection is None:
        return [], [], "", 1
    gallery, hits, info, _ = browse(collection, 1)
    return gallery, hits, info, 1


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    def show_page(collection_name, page_number, session):
        return browse(shell.resolve(session, collection_name), page_number or 1)

    inputs = [shell.collection, tab.page, shell.session]
    outputs = [tab.gallery, tab.hits, tab.page_info, tab.page]
    listen(tab.page.submit, show_page, inputs, outputs, api_name="browse")
    for button, step, api in (
        (tab.prev_page, -1, "browse_previous"),
        (tab.next_page, 1, "browse_next"),
    ):

        def turn(name, page_number, session, step=step):
            return show_page(name, (page_number or 1) + step, session)

        listen(button.click, turn, inputs, outputs, api_name=api)

    def sample_items(collection_name, session):
        gallery, hits = random_sample(shell.resolve(session, collection_name))
        return gallery, hits, "Random sample"

    listen(
        tab.sample.click,
        sample_items,
        [shell.collection, shell.session],
        [tab.gallery, tab.hits, tab.page_info],
        api_name="random_sample",
    )
    detail.follow_clicks(tab.gallery, tab.hits, None, "select_gallery_item")
