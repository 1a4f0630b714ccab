"""Tagging tab: zero-shot tags for an uploaded image or an item, from a shipped vocabulary.

The tagging itself is `webapp.analysis.tag`, shared with the REST API.
"""

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.tags import list_vocabularies
from webapp import analysis
from webapp.ui.common import image_or_item, item_image, listen, reference_of, updates, wire_item_box
from webapp.ui.i18n import t
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
    with gr.Tab(t("tab_tagging"), id="tagging") as page_tab:
        with image_or_item(t("image_input"), "tag-item") as (image, item):
            vocabulary = gr.Dropdown(names, value=default, label=t("vocabulary"))
            mode = gr.Radio(["single", "multi"], value="single", label=t("mode"))
            top_k = gr.Slider(1, 10, 3, step=1, label=t("tags_per_group"))
            threshold = gr.Slider(0, 1, 0.1, step=0.01, label=t("threshold"))
            button = gr.Button(t("tag"), variant="primary", elem_id="tag-button")
        label = gr.Label(label=t("tags"), num_top_classes=20, elem_id="tag-label")
        with gr.Accordion(t("tags_as_json"), open=False):
            found = gr.JSON(label=t("tags"))
    follows = [vocabulary]
    stale = {label: None, found: None, item: ""}  # cleared when the collection changes
    link_fields = {"item": item}
    shown = found  # changes after tagging: the link follows
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """The shipped vocabularies, the chosen collection's own preselected."""
    if collection is None:
        return (gr.update(),)
    names, default = vocabularies(collection)
    return (gr.Dropdown(choices=names, value=default),)


def tag_outputs(current: Collection, image, item_id, vocabulary_name, mode="single", top_k=3,
                threshold=None) -> tuple:  # fmt: skip
    """(image shown, label, tags as JSON); a warning when no tag reached the threshold."""
    found = tag(current, image, item_id, vocabulary_name, mode, top_k, threshold)
    if not found:
        gr.Warning("no tag reached the threshold; lower it")
    return (
        item_image(current, item_id),
        {found_tag["tag"]: found_tag["score"] for found_tag in found},
        found,
    )


def open_view(tab: SimpleNamespace, collection: Collection, view) -> dict:
    """A link's item, tagged with the collection's own vocabulary."""
    found = tag_outputs(collection, None, view.item, vocabularies(collection)[1])
    return {tab.item: view.item, **updates([tab.image, tab.label, tab.found], found)}


def wire(tab: SimpleNamespace, shell: Shell) -> None:
    def tag_image(
        collection_name, image, item_id, vocabulary_name, mode, top_k, threshold, session
    ):
        current = shell.resolve(session, collection_name)
        limit = threshold if mode == "multi" else None
        return tag_outputs(current, image, item_id, vocabulary_name, mode, top_k, limit)

    listen(  # the button, or Enter in the item box
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
        [tab.image, tab.label, tab.found],
        api_name="ui_tag_image",
    )
    wire_item_box(shell, tab.image, tab.item, "tagged")
