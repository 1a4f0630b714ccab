"""Composed search tab: a reference image plus a change in words, refined step by step.

Clicking a result makes it the next reference; the steps so far show as breadcrumbs and
"Step back" undoes the last one. It also answers the detail panel's "Use as reference".
"""

import html
from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from webapp.ui.common import (
    GalleryItems,
    clicked_id,
    empty_note,
    guarded,
    hits_of,
    image_or_item,
    pick_random,
    reference_of,
    results_gallery,
    to_gallery,
    warn,
)
from webapp.ui.detail import Detail, item_details
from webapp.ui.shell import Shell

NO_STEPS = "No refinement steps yet."


def composed_methods(collection: Collection) -> list[str]:
    """Trained methods first ("combiner", "zero-shot"), the "sum" baseline last."""
    names = list(collection.searcher.composers)
    return sorted(names, key=lambda name: (name == "sum", names.index(name)))


def composed_search(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    text: str,
    method: str = "sum",
    k: int = 12,
) -> tuple[GalleryItems, list[dict], list[str], list[float]]:
    """(gallery, hits, notes, query vector): the vector lets "why this result?" explain it."""
    reference = reference_of(image, item_id)
    vector, exclude, notes = collection.searcher.composed_vector(reference, text or "", method)
    result = collection.searcher.by_vector(vector, k=int(k), exclude=exclude)
    hits = hits_of(collection, result)
    return to_gallery(collection, hits), hits, notes + empty_note(hits), vector.tolist()


# -- the refinement chain --------------------------------------------------------------------
def push_step(
    chain: list[dict] | None,
    item_id: str | None,
    image: str | None,
    title: str,
    text: str,
    method: str,
    hits: list[dict],
) -> list[dict]:
    """A new chain with one more refinement step (the old list is left as it was)."""
    step = {
        "id": item_id or None,
        "image": image if not item_id else None,
        "title": title,
        "text": text.strip(),
        "method": method,
        "hits": hits,
    }
    return [*(chain or []), step]


def reference_title(collection: Collection, item_id: str | None) -> str:
    if item_id:
        return str(collection.index.item(item_id).get("title", item_id))
    return "your image"


def breadcrumbs(chain: list[dict] | None, current_title: str | None = None) -> str:
    """reference + “text” → reference + “text” → current reference."""
    parts = [
        f"**{html.escape(step['title'])}** + “{html.escape(step['text'])}”" for step in chain or []
    ]
    if current_title:
        parts.append(f"**{html.escape(current_title)}**")
    return " → ".join(parts) if parts else NO_STEPS


def step_back(chain: list[dict] | None) -> tuple[list[dict], dict | None, list[dict]]:
    """Undo the last step: (shorter chain, that step (its reference and text), earlier hits)."""
    if not chain:
        raise BadInput("there is no step to go back to")
    shorter, last = chain[:-1], chain[-1]
    previous_hits = shorter[-1]["hits"] if shorter else []
    return shorter, last, previous_hits


# -- the tab ---------------------------------------------------------------------------------
def build(settings, first: Collection | None) -> SimpleNamespace:
    methods = composed_methods(first) if first else ["sum"]
    with gr.Tab("Composed search", id="composed"):
        gr.Markdown(
            "Start from a reference image and say what to change. Click a result "
            "to make it the new reference and keep refining."
        )
        with image_or_item("Reference image", "ref-item", webcam=True) as (image, item):
            pick = gr.Button("Pick a random reference", size="sm")
            text = gr.Textbox(
                label="Modification", placeholder="e.g. make it red", elem_id="ref-text"
            )
            method = gr.Dropdown(methods, value=methods[0], label="Method", allow_custom_value=True)
            k = gr.Slider(1, settings.max_k, 12, step=1, label="Results")
            with gr.Row():
                button = gr.Button("Search", variant="primary", elem_id="composed-search")
                back_button = gr.Button("↩ Step back")
        crumbs = gr.Markdown(NO_STEPS, elem_id="breadcrumbs")
        gallery, hits = results_gallery("Results (click one to refine from it)", "composed-results")
        chain = gr.State([])
        query_used = gr.State(None)
    follows = [method]
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The methods the chosen collection ships weights for."""
    if collection is None:
        return (gr.update(),)
    methods = composed_methods(collection)
    return (gr.Dropdown(choices=methods, value=methods[0]),)


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    wire_search(tab, shell)
    wire_refinement(tab, shell, detail)


def wire_search(tab: SimpleNamespace, shell: Shell) -> None:
    @guarded
    def search(collection_name, image, item_id, text, method_name, k, steps, session):
        current = shell.resolve(session, collection_name)
        gallery, hits, notes, vector = composed_search(
            current, image, item_id, text, method_name, k
        )
        warn(notes)
        item_id = (item_id or "").strip() or None
        title = reference_title(current, item_id)
        steps = push_step(steps, item_id, image, title, text, method_name, hits)
        query_used = {"type": "vector", "vector": vector}
        return gallery, hits, steps, breadcrumbs(steps), query_used

    gr.on(  # the button, or Enter in the text or item box
        [tab.button.click, tab.text.submit, tab.item.submit],
        search,
        [
            shell.collection,
            tab.image,
            tab.item,
            tab.text,
            tab.method,
            tab.k,
            tab.chain,
            shell.session,
        ],
        [tab.gallery, tab.hits, tab.chain, tab.crumbs, tab.query_used],
        api_name="composed_search",
    )

    @guarded
    def composed_back(collection_name, steps, session):
        current = shell.resolve(session, collection_name)
        steps, last, hits = step_back(steps)
        image = str(current.index.image_path(last["id"])) if last["id"] else last["image"]
        gallery = to_gallery(current, hits)
        crumbs = breadcrumbs(steps, last["title"])
        return image, last["id"] or "", last["text"], last["method"], gallery, hits, steps, crumbs

    tab.back_button.click(
        composed_back,
        [shell.collection, tab.chain, shell.session],
        [
            tab.image,
            tab.item,
            tab.text,
            tab.method,
            tab.gallery,
            tab.hits,
            tab.chain,
            tab.crumbs,
        ],
        api_name="composed_back",
    )


def wire_refinement(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    """New references: a clicked result, a random item, the detail panel's item, an upload."""

    @guarded
    def refine_from(hits, collection_name, steps, session, query_used, evt: gr.SelectData):
        item_id = clicked_id(hits, evt)
        current = shell.resolve(session, collection_name)
        image, card = item_details(current, item_id)
        crumb = breadcrumbs(steps, reference_title(current, item_id))
        return image, item_id, "", crumb, image, card, item_id, query_used

    tab.gallery.select(
        refine_from,
        [tab.hits, shell.collection, tab.chain, shell.session, tab.query_used],
        [
            tab.image,
            tab.item,
            tab.text,
            tab.crumbs,
            detail.image,
            detail.card,
            detail.selected_id,
            detail.selected_query,
        ],
        api_name="refine_from_result",
        api_visibility="private",
    )

    @guarded
    def pick_reference(collection_name, session):
        current = shell.resolve(session, collection_name)
        image, item_id = pick_random(current)
        return image, item_id, [], breadcrumbs([], reference_title(current, item_id))

    tab.pick.click(
        pick_reference,
        [shell.collection, shell.session],
        [tab.image, tab.item, tab.chain, tab.crumbs],
        api_name="pick_random_reference",
        api_visibility="private",
    )

    @guarded
    def use_as_reference(collection_name, item_id, session):
        current = shell.resolve(session, collection_name)
        image, _ = item_details(current, item_id)
        crumbs = breadcrumbs([], reference_title(current, item_id.strip()))
        return gr.Tabs(selected="composed"), image, item_id.strip(), [], crumbs, [], []

    detail.reference_button.click(
        use_as_reference,
        [shell.collection, detail.selected_id, shell.session],
        [shell.tabs, tab.image, tab.item, tab.chain, tab.crumbs, tab.gallery, tab.hits],
        api_name="use_as_reference",
        api_visibility="private",
    )
    tab.image.upload(
        lambda _: "", tab.image, tab.item, api_name="clear_reference_item", api_visibility="private"
    )
