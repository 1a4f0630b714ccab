"""Explain tab: a heatmap of which parts of an image match a text.

It also answers the detail panel's "Why this result?", explaining a clicked result against the
query that found it. The heatmap itself is `webapp.analysis.explain`, shared with the REST API.
"""

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.explain import METHODS
from webapp import analysis
from webapp.ui.common import (
    image_or_item,
    item_image,
    large_image,
    listen,
    reference_of,
    updates,
    wire_item_box,
)
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
from webapp.ui.shell import Shell


def explain_query(collection: Collection, query: dict | None):
    """The query a search ran with, in the form `retrieval.explain.explain` takes."""
    if not query:
        raise BadInput(
            "this item was not found by a search: run a search, then ask why of one of its "
            "results (or use the Explain tab with a text of your own)"
        )
    if query["type"] == "text":
        return query["text"]
    if query["type"] == "item":
        return collection.searcher.item_vector(query["id"])
    if query["type"] == "image":
        return Path(query["image"])  # a str would be read as a text
    return np.asarray(query["vector"], dtype=np.float32)


def explain(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    query,
    method: str = "auto",
    opacity: float = 0.5,
):
    """(overlay PIL image, markdown): which parts of the image match the query, and the score."""
    if isinstance(query, str) and not query.strip():
        raise BadInput("type the text the image should be explained against")
    heatmap = analysis.explain(collection, reference_of(image, item_id), query, method)
    note = f"Similarity **{heatmap.score:.3f}** · method `{heatmap.method}`"
    return heatmap.overlay(float(opacity)), note + runtime_note(collection)


def runtime_note(collection: Collection) -> str:
    """Searches may run on ONNX Runtime; heatmaps never do, and people comparing scores should know."""
    runtime = collection.backbone.runtime
    if runtime == "torch":
        return ""
    return (
        f" · computed with PyTorch: heatmaps need gradients, so they do not use the {runtime} "
        "runtime that serves this collection's searches (its scores differ in the third decimal)"
    )


def build() -> SimpleNamespace:
    with gr.Tab(t("tab_explain"), id="explain") as page_tab:
        with image_or_item(t("image_input"), "explain-item") as (image, item):
            text = gr.Textbox(label=t("explain_against"), elem_id="explain-text")
            method = gr.Radio(list(METHODS), value="auto", label=t("method"))
            opacity = gr.Slider(0, 1, 0.5, step=0.05, label=t("opacity"))
            button = gr.Button(t("explain"), variant="primary", elem_id="explain-button")
        # no visible label: it would cover the top of the heatmap
        output = large_image(t("heatmap"), "explain-output", height=420, show_label=False)
        note = gr.Markdown(elem_id="explain-note")
    link_fields = {"item": item, "text": text}
    stale = {output: None, note: "", item: ""}  # cleared when the collection changes
    shown = note  # changes after an explanation: the link follows
    return SimpleNamespace(**locals())


def explain_outputs(current: Collection, image, item_id, text, method="auto", opacity=0.5):
    """(image shown, heatmap, note)."""
    overlay, note = explain(current, image, item_id, text or "", method, opacity)
    heatmap = gr.Image(overlay, alt_text=f"relevance heatmap for “{text.strip()}”")
    return item_image(current, item_id), heatmap, note


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's item, explained against its text."""
    found = explain_outputs(collection, None, view.item, view.text)
    outputs = [tab.image, tab.output, tab.note]
    return {tab.item: view.item, tab.text: view.text, **updates(outputs, found)}


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    def explain_image(collection_name, image, item_id, text, method_name, opacity, session):
        current = shell.resolve(session, collection_name)
        return explain_outputs(current, image, item_id, text, method_name, opacity)

    listen(  # the button, or Enter in the text or item box
        [tab.button.click, tab.text.submit, tab.item.submit],
        explain_image,
        [
            shell.collection,
            tab.image,
            tab.item,
            tab.text,
            tab.method,
            tab.opacity,
            shell.session,
        ],
        [tab.image, tab.output, tab.note],
        api_name="ui_explain",
    )
    wire_item_box(shell, tab.image, tab.item, "explained")

    def why_this_result(collection_name, item_id, query_used, session):
        current = shell.resolve(session, collection_name)
        overlay, note = explain(current, None, item_id, explain_query(current, query_used))
        return gr.Image(overlay, visible=True, alt_text="why this result: relevance heatmap"), note

    listen(
        detail.why_button.click,
        why_this_result,
        [shell.collection, detail.selected_id, detail.selected_query, shell.session],
        [detail.why_image, detail.why_note],
        api_name="why_this_result",
        api_visibility="private",
    )
