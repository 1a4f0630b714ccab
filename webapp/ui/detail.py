"""The detail panel on the right: the clicked item's image and card, and what to do with it.

Every tab's gallery fills it when an image is clicked (`Detail.follow_clicks`). Its buttons
lead into other tabs, so those tabs wire them: "Find similar" (image search), "Use as
reference" (composed search), "Why this result?" (explain) and "Show on map" (map).
"""

import html
from dataclasses import dataclass

import gradio as gr

from retrieval.catalog import Collection
from retrieval.errors import BadInput
from retrieval.search import tag_names
from webapp.ui.common import clicked_id, large_image, listen
from webapp.ui.i18n import t
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
    map_button: gr.Button
    why_image: gr.Image
    why_note: gr.Markdown

    @property
    def stale(self) -> dict:
        """What the panel shows for no item: an item of another collection must not linger."""
        hidden = gr.update(value=None, visible=False)  # an update: a gr.Image here would be drawn
        return {self.image: hidden, self.card: t("click_hint"), self.selected_id: "",
                self.selected_query: None, self.why_image: hidden, self.why_note: ""}  # fmt: skip

    @property
    def outputs(self) -> list:
        return [self.image, self.card, self.why_image, self.why_note]

    def show_item(self, collection_name, item_id, session):
        image, card = item_details(self.shell.resolve(session, collection_name), item_id)
        return shown_image(image, card), card, gr.Image(visible=False), ""

    def follow_clicks(self, gallery: gr.Gallery, hits: gr.JSON, query, api_name: str) -> None:
        """A click on `gallery` shows that item here and remembers the query that found it."""

        def on_select(hits, collection_name, session, query, evt: gr.SelectData):
            item_id = clicked_id(hits, evt)
            return (*self.show_item(collection_name, item_id, session), item_id, query)

        listen(
            gallery.select,
            on_select,
            [hits, self.shell.collection, self.shell.session, query or gr.State(None)],
            [*self.outputs, self.selected_id, self.selected_query],
            api_name=api_name,
            api_visibility="private",
        ).then(None, js=SCROLL_TO_PANEL_ON_PHONES)


# on a phone the panel sits below the results: bring it into view, or a click seems to do nothing
SCROLL_TO_PANEL_ON_PHONES = """() => {
  if (window.innerWidth < 768) {
    document.getElementById('detail-panel')?.scrollIntoView({behavior: 'smooth', block: 'start'});
  }
}"""


def shown_image(path: str, card: str) -> gr.Image:
    """The item's image, with its title as the alt text for screen readers."""
    title = card.splitlines()[0].removeprefix("### ") if card else ""
    return gr.Image(path, alt_text=html.unescape(title) or "selected item", visible=True)


def build(shell: Shell) -> Detail:
    """The panel's components (inside its gr.Column)."""
    selected_query = gr.State(None)
    # hidden until an item is chosen: an empty frame only pushes the rest down
    image = large_image(t("selected_item"), "detail-image", visible=False)
    card = gr.Markdown(t("click_hint"), elem_id="detail-card")
    selected_id = gr.Textbox(label=t("item_id"), elem_id="selected-id")
    with gr.Row():
        similar_button = gr.Button(t("find_similar"), size="sm", elem_id="find-similar")
        reference_button = gr.Button(t("use_as_reference"), size="sm", elem_id="use-as-reference")
        why_button = gr.Button(t("why_this_result"), size="sm", elem_id="why-button")
        map_button = gr.Button(t("show_on_map"), size="sm", elem_id="show-on-map")
    # no visible label: it would cover the top of the heatmap
    why_image = large_image(t("why_this_result"), "why-image", show_label=False, visible=False)
    why_note = gr.Markdown(elem_id="why-note")
    return Detail(
        shell,
        image,
        card,
        selected_id,
        selected_query,
        similar_button,
        reference_button,
        why_button,
        map_button,
        why_image,
        why_note,
    )


def wire(detail: Detail) -> None:
    """Typing an id (or calling /item_details) shows that item."""
    listen(
        detail.selected_id.submit,
        detail.show_item,
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
