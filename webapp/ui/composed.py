"""Composed search tab: a reference image plus a change in words, refined step by step.

Clicking a result makes it the next reference; the steps so far show as breadcrumbs (click
one to go back to it) and "Step back" undoes the last one. It also answers the detail panel's "Use as reference".
"""

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from webapp.ui import why
from webapp.ui.common import (
    GalleryItems,
    clicked_id,
    empty_note,
    hits_of,
    image_or_item,
    item_image,
    listen,
    pick_random,
    reference_of,
    results_gallery,
    to_gallery,
    updates,
    warn,
    wire_item_box,
)
from webapp.ui.detail import Detail, item_details, shown_image
from webapp.ui.i18n import t
from webapp.ui.shell import Shell

# The note under the results says what each method's number is; its i18n key per method.
SCORE_MEANINGS = {
    "combiner": "score_meaning_combiner",
    "zero-shot": "score_meaning_zero_shot",
    "sum": "score_meaning_sum",
}


def score_note_key(method: str | None) -> str:
    """The i18n key of what `method`'s scores mean; the generic note for a method it does not know."""
    return SCORE_MEANINGS.get((method or "").strip(), "score_note_composed")


def score_note(method: str | None):
    return t(score_note_key(method))


def method_licence(collection: Collection | None, method: str | None) -> str | None:
    """The licence of a method's weights where they carry one of their own, else None."""
    return collection.method_licences().get(method or "") if collection else None


def licence_box(collection: Collection | None, method: str | None):
    """The licence of the chosen method's weights, shown only where they carry one."""
    licence = method_licence(collection, method)
    return gr.update(value=licence or "", visible=bool(licence))


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
    query: dict | None = None,
) -> list[dict]:
    """A new chain with this search as its last step (the old list is left as it was).

    A search from the same reference as the last step (another method, a reworded change)
    replaces that step: it is a second try, not a refinement, so the trail does not repeat."""
    step = {
        "id": item_id or None,
        "image": image if not item_id else None,
        "title": title,
        "text": text.strip(),
        "method": method,
        "hits": hits,
        "query": query,
    }
    chain = list(chain or [])
    if chain and (chain[-1]["id"], chain[-1]["image"]) == (step["id"], step["image"]):
        chain.pop()
    return [*chain, step]


def reference_title(collection: Collection, item_id: str | None) -> str:
    if item_id:
        return str(collection.index.item(item_id).get("title", item_id))
    return "your image"


def step_choices(chain: list[dict] | None) -> list[tuple[str, int]]:
    """One clickable breadcrumb per step: "1. reference + “change” (method)"."""
    return [
        (f"{number}. {step['title']} + “{step['text']}” ({step['method']})", number - 1)
        for number, step in enumerate(chain or [], start=1)
    ]


def trail(chain: list[dict] | None) -> gr.Radio:
    return gr.Radio(choices=step_choices(chain), value=None, label=trail_label(chain))


def trail_label(chain: list[dict] | None):
    return t("steps") if chain else t("no_steps")


def step_back(chain: list[dict] | None) -> tuple[list[dict], dict | None, list[dict]]:
    """Undo the last step: (shorter chain, that step (its reference and text), earlier hits)."""
    if not chain:
        raise BadInput("there is no step to go back to")
    shorter, last = chain[:-1], chain[-1]
    previous_hits = shorter[-1]["hits"] if shorter else []
    return shorter, last, previous_hits


def go_to_step(chain: list[dict] | None, index) -> tuple[list[dict], dict]:
    """Back to step `index` (a clicked breadcrumb): the steps after it are dropped."""
    chain = chain or []
    if index is None or not 0 <= int(index) < len(chain):
        raise BadInput("that step is no longer in the trail; search again")
    return chain[: int(index) + 1], chain[int(index)]


# -- the tab ---------------------------------------------------------------------------------
def build(settings, first: Collection | None) -> SimpleNamespace:
    methods = composed_methods(first) if first else ["sum"]
    with gr.Tab(t("tab_composed"), id="composed") as page_tab:
        gr.Markdown(t("composed_intro"))
        with image_or_item(t("reference_image"), "ref-item", webcam=True) as (image, item):
            pick = gr.Button(t("pick_random_reference"), size="sm")
            text = gr.Textbox(
                label=t("modification"), placeholder="e.g. make it red", elem_id="ref-text"
            )
            method = gr.Dropdown(
                methods,
                value=methods[0],
                label=t("method"),
                allow_custom_value=True,
                elem_id="composed-method",
            )
            k = gr.Slider(1, settings.max_k, 12, step=1, label=t("results"))
            with gr.Row():
                button = gr.Button(t("search"), variant="primary", elem_id="composed-search")
                back_button = gr.Button(t("step_back"), elem_id="step-back")
        crumbs = gr.Radio([], label=t("no_steps"), elem_id="breadcrumbs", interactive=True)
        gallery, hits = results_gallery(t("composed_results"), "composed-results")
        note = gr.Markdown(  # what the numbers mean for the method chosen: see wire_score_note
            score_note(methods[0]), elem_classes=["score-note"], elem_id="composed-score-note"
        )
        first_licence = method_licence(first, methods[0])
        licence = gr.Textbox(
            first_licence or "",
            label=t("weights_licence"),
            interactive=False,
            visible=bool(first_licence),
            elem_id="composed-licence",
        )
        explanation = why.build("composed")
        chain = gr.State([])
        query_used = gr.State(None)
    follows = [method]
    no_trail = gr.update(choices=[], value=None, label=t("no_steps"))  # an update, not a component
    stale = {gallery: [], hits: None, chain: [], crumbs: no_trail, query_used: None, item: ""}
    link_fields = {"ref": item, "text": text, "method": method}
    shown = hits  # changes after a search: the link follows
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The methods the chosen collection ships weights for."""
    if collection is None:
        return (gr.update(),)
    methods = composed_methods(collection)
    return (gr.Dropdown(choices=methods, value=methods[0]),)


def run_step(current: Collection, image, item_id, text, method_name, k, steps) -> tuple:
    """One search: (reference shown, gallery, hits, longer chain, trail, query for "why")."""
    gallery, hits, notes, vector = composed_search(current, image, item_id, text, method_name, k)
    warn(notes)
    item_id = (item_id or "").strip() or None
    title = reference_title(current, item_id)
    parts = {"item": item_id, "image": image, "text": text}  # for each part's own ranks
    query_used = {"type": "vector", "vector": vector, "parts": parts}
    steps = push_step(steps, item_id, image, title, text, method_name, hits, query_used)
    return item_image(current, item_id), gallery, hits, steps, trail(steps), query_used


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's reference, change and method, searched as a first step."""
    methods = composed_methods(collection)
    method = view.method if view.method in methods else methods[0]
    found = run_step(collection, None, view.ref, view.text, method, 12, [])
    return {
        tab.item: view.ref,
        tab.text: view.text,
        tab.method: method,
        **updates(tab.search_outputs, found),
    }


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    tab.search_outputs = [tab.image, tab.gallery, tab.hits, tab.chain, tab.crumbs, tab.query_used]
    wire_search(tab, shell)
    wire_score_note(tab)
    wire_licence(tab, shell)
    wire_steps(tab, shell)
    wire_refinement(tab, shell, detail)


def wire_search(tab: SimpleNamespace, shell: Shell) -> None:
    def search(collection_name, image, item_id, text, method_name, k, steps, session):
        current = shell.resolve(session, collection_name)
        return run_step(current, image, item_id, text, method_name, k, steps)

    listen(  # the button, or Enter in the text or item box
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
        tab.search_outputs,
        api_name="ui_composed_search",
    )
    wire_item_box(shell, tab.image, tab.item, "reference")


def wire_score_note(tab: SimpleNamespace) -> None:
    """The note follows the method: when it is chosen (by a person, a step back, a link, another
    collection) and after each search, whose hits were scored by the method then chosen."""
    listen(
        [tab.method.change, tab.hits.change],
        score_note,
        [tab.method],
        [tab.note],
        api_name="composed_score_note",
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def wire_licence(tab: SimpleNamespace, shell: Shell) -> None:
    """A method whose weights come with their own licence (SEARLE's: non-commercial) says so."""

    def shown(collection_name, method, session):
        return licence_box(shell.resolve(session, collection_name), method)

    listen(
        tab.method.change,
        shown,
        [shell.collection, tab.method, shell.session],
        [tab.licence],
        api_name="composed_licence",
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def wire_steps(tab: SimpleNamespace, shell: Shell) -> None:
    """ "Step back" and the clickable breadcrumbs."""
    restored = [tab.image, tab.item, tab.text, tab.method, tab.gallery, tab.hits]

    def restore(current: Collection, step: dict, hits: list[dict]) -> tuple:
        image = str(current.index.image_path(step["id"])) if step["id"] else step["image"]
        gallery = to_gallery(current, hits)
        return image, step["id"] or "", step["text"], step["method"], gallery, hits

    def composed_back(collection_name, steps, session):
        current = shell.resolve(session, collection_name)
        steps, last, hits = step_back(steps)
        return *restore(current, last, hits), steps, trail(steps)

    listen(
        tab.back_button.click,
        composed_back,
        [shell.collection, tab.chain, shell.session],
        [*restored, tab.chain, tab.crumbs],
        api_name="composed_back",
    )

    def jump(collection_name, steps, index, session):
        current = shell.resolve(session, collection_name)
        steps, step = go_to_step(steps, index)
        return *restore(current, step, step["hits"]), steps, trail(steps), step["query"]

    listen(
        tab.crumbs.input,
        jump,
        [shell.collection, tab.chain, tab.crumbs, shell.session],
        [*restored, tab.chain, tab.crumbs, tab.query_used],
        api_name="composed_go_to_step",
    )


def wire_refinement(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    """New references: a clicked result, a random item, the detail panel's item."""

    def refine_from(hits, collection_name, session, query_used, evt: gr.SelectData):
        item_id = clicked_id(hits, evt)
        current = shell.resolve(session, collection_name)
        image, card = item_details(current, item_id)
        return image, item_id, "", shown_image(image, card), card, item_id, query_used

    listen(
        tab.gallery.select,
        refine_from,
        [tab.hits, shell.collection, shell.session, tab.query_used],
        [
            tab.image,
            tab.item,
            tab.text,
            detail.image,
            detail.card,
            detail.selected_id,
            detail.selected_query,
        ],
        api_name="refine_from_result",
        api_visibility="private",
    )

    def pick_reference(collection_name, session):
        image, item_id = pick_random(shell.resolve(session, collection_name))
        return image, item_id, [], trail([])

    listen(
        tab.pick.click,
        pick_reference,
        [shell.collection, shell.session],
        [tab.image, tab.item, tab.chain, tab.crumbs],
        api_name="pick_random_reference",
        api_visibility="private",
    )

    def use_as_reference(collection_name, item_id, session):
        """The panel's item becomes the next reference; the steps so far stay (a next step)."""
        image, _ = item_details(shell.resolve(session, collection_name), item_id)
        return gr.Tabs(selected="composed"), "composed", image, item_id.strip(), ""

    listen(
        detail.reference_button.click,
        use_as_reference,
        [shell.collection, detail.selected_id, shell.session],
        [shell.tabs, shell.current_tab, tab.image, tab.item, tab.text],
        api_name="use_as_reference",
        api_visibility="private",
    )
