"""Image search tab: items that look like an uploaded image or like an item of the collection.

It also answers the detail panel's "Find similar" button, which opens this tab on the item.
"""

from types import SimpleNamespace

import gradio as gr

from retrieval.backbone import display_spec
from retrieval.catalog import Collection
from retrieval.errors import BadInput
from webapp.ui import why
from webapp.ui.common import (
    GalleryItems,
    empty_note,
    hits_of,
    image_or_item,
    item_image,
    listen,
    minimum_score,
    pick_random,
    reference_of,
    results_gallery,
    to_gallery,
    updates,
    warn,
    wire_item_box,
)
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
from webapp.ui.shell import Shell


def image_search(
    collection: Collection,
    image: str | None = None,
    item_id: str | None = None,
    k=12,
    min_score=None,
) -> tuple[GalleryItems, list[dict], list[str]]:
    """Items that look like the image; a picked item is left out of its own results."""
    reference = reference_of(image, item_id)
    options = {"k": int(k), "min_score": minimum_score(min_score)}
    if isinstance(reference, str):
        result = collection.searcher.similar(reference, **options)
    else:
        result = collection.searcher.image(reference, **options)
    hits = hits_of(collection, result)
    return to_gallery(collection, hits), hits, empty_note(hits)


def build(settings) -> SimpleNamespace:
    with gr.Tab(t("tab_image"), id="image") as page_tab:
        with image_or_item(t("query_image"), "image-item", webcam=True) as (image, item):
            pick = gr.Button(t("pick_random_item"), size="sm")
            k = gr.Slider(1, settings.max_k, 12, step=1, label=t("results"))
            minimum = gr.Slider(-1, 1, -1, step=0.01, label=t("min_score"))
            button = gr.Button(t("find_similar"), variant="primary", elem_id="image-search")
        model_note = gr.Markdown(elem_classes=["score-note"], elem_id="image-model-note")
        gallery, hits = results_gallery(t("similar_items"), "image-results")
        gr.Markdown(t("score_note_image"), elem_classes=["score-note"], elem_id="image-score-note")
        explanation = why.build("image")
        query_used = gr.State(None)
    follows = [model_note]
    stale = {gallery: [], hits: None, query_used: None, item: ""}  # cleared on a new collection
    link_fields = {"item": item}
    shown = hits  # changes after a search: the link follows
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """Which model an uploaded photo is compared with, so odd results on photos make sense."""
    return (model_note(collection) if collection is not None else "",)


def model_note(collection: Collection) -> str:
    spec = display_spec(collection.index.model_spec())
    return (
        f"An uploaded image is compared using this collection's model, `{spec}`. "
        "A model trained on one kind of image (such as the Shapes demo's) "
        "gives poor matches for unrelated photos."
    )


def search_outputs(current: Collection, image, item_id, k=12, min_score=None) -> tuple:
    """(query image shown, gallery, hits, query for "why this result?"), warnings shown."""
    gallery, hits, notes = image_search(current, image, item_id, k, min_score)
    warn(notes)
    item_id = (item_id or "").strip()
    query_used = {"type": "item", "id": item_id} if item_id else {"type": "image", "image": image}
    return item_image(current, item_id), gallery, hits, query_used


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's item, searched for similar ones."""
    found = search_outputs(collection, None, view.item)
    return {tab.item: view.item, **updates(tab.search_outputs, found)}


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    tab.search_outputs = [tab.image, tab.gallery, tab.hits, tab.query_used]

    def search(collection_name, image, item_id, k, min_score, session):
        current = shell.resolve(session, collection_name)
        return search_outputs(current, image, item_id, k, min_score)

    listen(  # the button, or Enter in the item box
        [tab.button.click, tab.item.submit],
        search,
        [shell.collection, tab.image, tab.item, tab.k, tab.minimum, shell.session],
        tab.search_outputs,
        api_name="ui_image_search",
    )
    wire_item_box(shell, tab.image, tab.item, "image")
    listen(
        tab.pick.click,
        lambda name, session: pick_random(shell.resolve(session, name)),
        [shell.collection, shell.session],
        [tab.image, tab.item],
        api_name="pick_random_image",
        api_visibility="private",
    )
    detail.follow_clicks(tab.gallery, tab.hits, tab.query_used, "select_image_result")
    wire_find_similar(tab, shell, detail)


def wire_find_similar(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    """The detail panel's "Find similar": this tab, searching by the shown item."""

    def find_similar(collection_name, item_id, k, session):
        if not (item_id or "").strip():
            raise BadInput("no item selected: click an image first")
        current = shell.resolve(session, collection_name)
        found = search_outputs(current, None, item_id, k)
        return gr.Tabs(selected="image"), "image", (item_id or "").strip(), *found

    listen(
        detail.similar_button.click,
        find_similar,
        [shell.collection, detail.selected_id, tab.k, shell.session],
        [shell.tabs, shell.current_tab, tab.item, *tab.search_outputs],
        api_name="find_similar",
        api_visibility="private",
    )
