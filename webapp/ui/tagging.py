"""Tagging tab: zero-shot tags for an uploaded image or an item, from a shipped vocabulary.

The tagging itself is `webapp.analysis.tag`, shared with the REST API.
"""

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.tags import list_vocabularies
from webapp import analysis
from webapp.ui.common import guarded, image_or_item, reference_of
from webapp.ui.shell import Shell


def vocabularies(collection: Collection | None = None) -> tuple[list[str], str]:
    """(shipped vocabulary names, the one to preselect for `collection`)."""
    return list_vocabularies(), analysis.default_vocabulary(collection)


def tag(
    collection: Collection,
    image: str | None,
    item_id: str | None,
    vocabulary: str,
    mode: str = "single",
    top_k: int = 3,
    threshold: float | None = None,
) -> list[dict]:
    """Tags for one image, most probable first; a picked item reuses its stored vector."""
    chosen = analysis.shipped_vocabulary(vocabulary or None)
    source = reference_of(image, item_id)
    found = analysis.tag(collection, chosen, source, mode, int(top_k), threshold)
    return [{**found_tag, "score": round(found_tag["score"], 4)} for found_tag in found]


def build(first: Collection | None) -> SimpleNamespace:
    names, default = vocabularies(first)
    with gr.Tab("Tagging", id="tags"):
        with image_or_item("Image", "tag-item") as (image, item):
            vocabulary = gr.Dropdown(names, value=default, label="Vocabulary")
            mode = gr.Radio(["single", "multi"], value="single", label="Mode")
            top_k = gr.Slider(1, 10, 3, step=1, label="Tags per group (single)")
            threshold = gr.Slider(0, 1, 0.1, step=0.01, label="Threshold (multi)")
            button = gr.Button("Tag", variant="primary", elem_id="tag-button")
        label = gr.Label(label="Tags", num_top_classes=20, elem_id="tag-label")
        with gr.Accordion("Tags as JSON", open=False):
            found = gr.JSON(label="Tags")
    follows = [vocabulary]
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The shipped vocabularies, the chosen collection's own preselected."""
    if collection is None:
        return (gr.update(),)
    names, default = vocabularies(collection)
    return (gr.Dropdown(choices=names, value=default),)


def wire(tab: SimpleNamespace, shell: Shell) -> None:
    @guarded
    def tag_image(
        collection_name, image, item_id, vocabulary_name, mode, top_k, threshold, session
    ):
        found = tag(
            shell.resolve(session, collection_name),
            image,
            item_id,
            vocabulary_name,
            mode,
            top_k,
            threshold if mode == "multi" else None,
        )
        if not found:
            gr.Warning("no tag reached the threshold; lower it")
        return {t["tag"]: t["score"] for t in found}, found

    gr.on(  # the button, or Enter in the item box
        [tab.button.click, tab.item.submit],
        tag_image,
        [
            shell.collection,
            tab.image,
            tab.item,
            tab.vocabulary,
            tab.mode,
            tab.top_k,
            tab.threshold,
            shell.session,
        ],
        [tab.label, tab.found],
        api_name="tag_image",
    )
