"""Image search tab: items that look like an uploaded image or like an item of the collection.

It also answers the detail panel's "Find similar" button, which opens this tab on the item.
"""

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from webapp.ui.common import (
    GalleryItems,
    empty_note,
    guarded,
    hits_of,
    image_or_item,
    minimum_score,
    pick_random,
    reference_of,
    results_gallery,
    to_gallery,
    warn,
)
from webapp.ui.detail import Detail
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
    with gr.Tab("Image search", id="image"):
        with image_or_item("Query image", "image-item", webcam=True) as (image, item):
            pick = gr.Button("Pick a random item", size="sm")
            k = gr.Slider(1, settings.max_k, 12, step=1, label="Results")
            minimum = gr.Slider(-1, 1, -1, step=0.01, label="Minimum score")
            button = gr.Button("Find similar", variant="primary")
        gallery, hits = results_gallery("Similar items", "image-results")
        query_used = gr.State(None)
    return SimpleNamespace(**locals())


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    @guarded
    def search(collection_name, image, item_id, k, min_score, session):
        current = shell.resolve(session, collection_name)
        gallery, hits, notes = image_search(current, image, item_id, k, min_score)
        warn(notes)
        item_id = (item_id or "").strip()
        query_used = (
            {"type": "item", "id": item_id} if item_id else {"type": "image", "image": image}
        )
        return gallery, hits, query_used

    gr.on(  # the button, or Enter in the item box
        [tab.button.click, tab.item.submit],
        search,
        [shell.collection, tab.image, tab.item, tab.k, tab.minimum, shell.session],
        [tab.gallery, tab.hits, tab.query_used],
        api_name="image_search",
    )
    tab.image.upload(
        lambda _: "", tab.image, tab.item, api_name="clear_image_item", api_visibility="private"
    )
    tab.pick.click(
        guarded(lambda name, session: pick_random(shell.resolve(session, name))),
        [shell.collection, shell.session],
        [tab.image, tab.item],
        api_name="pick_random_image",
        api_visibility="private",
    )
    detail.follow_clicks(tab.gallery, tab.hits, tab.query_used, "select_image_result")
    wire_find_similar(tab, shell, detail)


def wire_find_similar(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    """The detail panel's "Find similar": this tab, searching by the shown item."""

    @guarded
    def find_similar(collection_name, item_id, k, session):
        current = shell.resolve(session, collection_name)
        gallery, hits, notes = image_search(current, None, item_id, k)
        warn(notes)
        image = str(current.index.image_path(item_id.strip()))
        query_used = {"type": "item", "id": item_id.strip()}
        return gr.Tabs(selected="image"), image, item_id.strip(), gallery, hits, query_used

    detail.similar_button.click(
        find_similar,
        [shell.collection, detail.selected_id, tab.k, shell.session],
        [shell.tabs, tab.image, tab.item, tab.gallery, tab.hits, tab.query_used],
        api_name="find_similar",
        api_visibility="private",
    )
