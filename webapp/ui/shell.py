"""The frame around the tabs: the title, the collection switcher, the overview of collections
and the share box.

`Shell` also tells every tab which collection is chosen (`resolve`): the session's own upload or
a shared one, whose folders Gradio may then serve. Tabs that change with the collection (the
gallery's first page, examples, artists, methods, vocabularies) add a `Follower`; `select`
computes what all of them show for a collection.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from retrieval.backbone import display_spec
from retrieval.catalog import Catalog, Collection, CollectionUnavailable
from retrieval.config import Settings
from retrieval.errors import RetrievalError
from retrieval.hub import is_hub_location
from webapp.ui.common import keeping
from webapp.ui.i18n import t
from webapp.ui.state import collection_choices, delete_session, get_collection

# (components, function): what a tab shows for a newly chosen collection; None when it failed
Follower = tuple[list, Callable[[Collection | None], tuple]]

_served: set[Path] = set()


@dataclass
class Shell:
    catalog: Catalog
    settings: Settings
    start: Collection | None  # the collection shown first, if it loads
    session: gr.State
    collection: gr.Dropdown
    status: gr.Markdown
    overview: gr.Markdown
    link: gr.Textbox  # the current view's URL (see `webapp.ui.links`)
    embed: gr.Textbox
    page_url: gr.Textbox  # the page's address as the browser sees it (behind any proxy)
    current_tab: gr.State
    tabs: gr.Tabs | None = None  # set by build_ui once the tabs exist: some buttons switch tabs
    followers: list[Follower] = field(default_factory=list)

    def resolve(self, session, collection_name) -> Collection:
        try:
            collection = get_collection(self.catalog, session, collection_name)
        except CollectionUnavailable as error:  # in a visitor's words, not the loader's
            title = self.catalog.specs[collection_name].title or collection_name
            reason = plain_reason(self.catalog, collection_name, str(error))
            raise CollectionUnavailable(f"{title} cannot be opened: {reason}") from error
        serve_files(collection)
        return collection

    @property
    def follower_outputs(self) -> list:
        return [component for components, _ in self.followers for component in components]

    def refresh_after(self, event, api_name: str, **options):
        """After `event` (a trigger or a finished event's `.then`/`.success`), show the chosen
        collection's status and what every follower shows for it."""
        return event(
            keeping(self.select, 1 + len(self.follower_outputs)),
            [self.collection, self.session],
            [self.status, *self.follower_outputs],
            api_name=api_name,
            **options,
        )

    def select(self, collection_name, session) -> tuple:
        """(status, *what every follower shows) for the chosen collection."""
        try:
            current = self.resolve(session, collection_name)
            status = collection_summary(current)
        except RetrievalError as error:
            current = None
            status = unavailable_message(self.catalog, collection_name or "?", str(error))
        return status, *(value for _, follow in self.followers for value in follow(current))


def serve_files(collection: Collection) -> None:
    """Serve thumbnails and originals straight from the collection's folders (no copies)."""
    folders = [collection.index.directory, collection.index.source_root()]
    new = [f.resolve() for f in folders if f.is_dir() and f.resolve() not in _served]
    if new:
        _served.update(new)
        gr.set_static_paths(new)


def build(catalog: Catalog, settings: Settings, start: str | None) -> Shell:
    """Title, collection switcher, overview and share box (inside a gr.Blocks)."""
    first = catalog.get(start) if start and catalog.status(start) is None else None
    session = gr.State(None, delete_callback=delete_session)
    gr.Markdown(t("intro"))
    collection = gr.Dropdown(
        collection_choices(catalog),
        value=start,
        label=t("collection"),
        allow_custom_value=True,  # unknown names get our message, not a bare validation error
        elem_id="collection",
    )
    status = gr.Markdown(elem_id="collection-status")
    with gr.Accordion(t("all_collections"), open=False):
        overview = gr.Markdown(elem_id="collections-overview")
    with gr.Accordion(t("share_title"), open=False, elem_id="share"):
        link = gr.Textbox(label=t("share_link"), buttons=["copy"], elem_id="share-link")
        embed = gr.Textbox(label=t("embed_code"), buttons=["copy"], lines=2, elem_id="embed-code")
        gr.Markdown(t("share_note"), elem_classes=["score-note"])
    page_url = gr.Textbox(visible=False)
    current_tab = gr.State("gallery")
    return Shell(
        catalog, settings, first, session, collection, status, overview, link, embed, page_url,
        current_tab,
    )  # fmt: skip


def wire(demo: gr.Blocks, shell: Shell) -> None:
    """Choosing a collection shows its status and refreshes every follower; the overview marks
    the collections that cannot be opened, in the dropdown too."""
    shell.refresh_after(shell.collection.input, "select_collection", api_visibility="undocumented")

    def overview(session):
        lines = catalog_overview(shell.catalog)  # tries to open each: then marks can be made
        return lines, gr.Dropdown(choices=collection_choices(shell.catalog, session, marked=True))

    demo.load(
        keeping(overview, 2),
        shell.session,
        [shell.overview, shell.collection],
        api_name="collections_overview",
        api_visibility="undocumented",
    )


RUNTIME_WORDS = {"onnx": " on ONNX Runtime", "onnx-int8": " on ONNX Runtime (int8)"}


def collection_summary(collection: Collection) -> str:
    spec, index = collection.spec, collection.index
    methods = ", ".join(collection.searcher.composers)
    text = f"**{html.escape(spec.title or spec.name)}**: {len(index):,} items"
    text += f" · searched with the model `{display_spec(index.model_spec())}`"
    text += RUNTIME_WORDS.get(collection.backbone.runtime, "")
    text += f" · composed search: {methods}"
    if spec.description:
        text += f"\n\n{html.escape(spec.description)}"
    return text


def plain_reason(catalog: Catalog, name: str, reason: str) -> str:
    """Why a collection cannot be opened, in words for a visitor rather than for an engineer."""
    spec = catalog.specs.get(name)
    if spec is not None and is_hub_location(spec.index):
        return (
            "its images and index are kept on the Hugging Face Hub, and this server has no copy "
            "and cannot download one now. Choose another collection, or ask whoever runs this "
            "server to download it once with network access."
        )
    return reason


def unavailable_message(catalog: Catalog, name: str, reason: str) -> str:
    title = catalog.specs[name].title if name in catalog.specs else name
    text = f"⚠️ **{html.escape(title or name)} cannot be opened**: "
    text += html.escape(plain_reason(catalog, name, reason))
    if plain_reason(catalog, name, reason) != reason:
        text += f"\n\n<details><summary>Details</summary>{html.escape(reason)}</details>"
    return text


def catalog_overview(catalog: Catalog) -> str:
    """One line per shared collection with its state; loading is attempted (and cached) here."""
    lines = []
    for name, spec in catalog.specs.items():
        reason = catalog.status(name)
        state = "✅ ready" if reason is None else "⚠️ " + plain_reason(catalog, name, reason)
        lines.append(f"- **{html.escape(spec.title or name)}** (`{name}`): {html.escape(state)}")
    return "\n".join(lines)
