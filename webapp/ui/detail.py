"""The detail panel on the right: the clicked item's image and card, and what to do with it.

Every tab's gallery fills it when an image is clicked (`Detail.follow_clicks`). Its buttons
lead into other tabs, so those tabs wire them: "Find similar" (image search), "Use as
reference" (composed search) and "Why this result?" (explain).
"""

import html
from dataclasses import dataclass

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.search import tag_names
from webapp.ui.common import clicked_id, guarded
from webapp.ui.shell import Shell


@dataclass
class Detail:
    shell: Shell
    image: gr.Image
    card: gr.Markdown
    selected_id: gr.Textbox
    selected_query: gr.State  # the query that found the clicked item, for "why this result?"
    similar_button: gr.Button
    reference_button: gr.Button
    why_button: gr.Button
    why_image: gr.Image
    why_note: gr.Markdown

    @property
    def outputs(self) -> list:
        return [self.image, self.card, self.why_image, self.why_note]

    def show_item(self, collection_name, item_id, session):
        image, card = item_details(self.shell.resolve(session, collection_name), item_id)
        return image, card, gr.update(visible=False), ""

    def follow_clicks(self, gallery: gr.Gallery, hits: gr.JSON, query, api_name: str) -> None:
        """A click on `gallery` shows that item here and remembers the query that found it."""

        def on_select(hits, collection_name, session, query, evt: gr.SelectData):
            item_id = clicked_id(hits, evt)
            return (*self.show_item(collection_name, item_id, session), item_id, query)

        gallery.select(
            guarded(on_select),
            [hits, self.shell.collection, self.shell.session, query or gr.State(None)],
            [*self.outputs, self.selected_id, self.selected_query],
            api_name=api_name,
            api_visibility="private",
        )


def build(shell: Shell) -> Detail:
    """The panel's components (inside its gr.Column)."""
    selected_query = gr.State(None)
    image = gr.Image(label="Selected item", interactive=False, height=360)
    card = gr.Markdown("Click an image to see its details.")
    selected_id = gr.Textbox(label="Item id", elem_id="selected-id")
    with gr.Row():
        similar_button = gr.Button("Find similar", size="sm", elem_id="find-similar")
        reference_button = gr.Button("Use as reference", size="sm", elem_id="use-as-reference")
        why_button = gr.Button("Why this result?", size="sm", elem_id="why-button")
    why_image = gr.Image(
        label="Why this result?", interactive=False, visible=False, elem_id="why-image"
    )
    why_note = gr.Markdown()
    return Detail(
        shell,
        image,
        card,
        selected_id,
        selected_query,
        similar_button,
        reference_button,
        why_button,
        why_image,
        why_note,
    )


def wire(detail: Detail) -> None:
    """Typing an id (or calling /item_details) shows that item."""
    detail.selected_id.submit(
        guarded(detail.show_item),
        [detail.shell.collection, detail.selected_id, detail.shell.session],
        detail.outputs,
        api_name="item_details",
    )


def _safe_url(url) -> str | None:
    url = str(url or "").strip()
    return url if url.lower().startswith(("http://", "https://")) else None


def item_details(collection: Collection, item_id: str) -> tuple[str, str]:
    """(large image path, markdown card) for one item."""
    item_id = (item_id or "").strip()
    if not item_id:
        raise BadInput("no item selected: click an image or give an item id")
    item = collection.index.item(item_id)
    lines = [f"### {html.escape(str(item.get('title', item_id)))}"]
    for key, label in (("artist", "Artist"), ("date", "Date"), ("license", "License")):
        if item.get(key):
            lines.append(f"**{label}:** {html.escape(str(item[key]))}")
    if item.get("description"):
        lines.append(html.escape(str(item["description"])))
    tags = item.get("tags")
    if tags:
        lines.append("**Tags:** " + html.escape(", ".join(tag_names(tags))))
    url = _safe_url(item.get("url"))
    if url:
        lines.append(f"[Source]({html.escape(url, quote=True)})")
    lines.append(f"<small>id `{html.escape(item_id)}`</small>")
    return str(collection.index.image_path(item_id)), "\n\n".join(lines)
