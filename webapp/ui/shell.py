"""The frame around the tabs: the title, the collection switcher and the overview of collections.

`Shell` also tells every tab which collection is chosen (`resolve`): the session's own upload or
a shared one, whose folders Gradio may then serve. Tabs that change with the collection (the
gallery's first page, examples, artists, methods, vocabularies) give `wire` a `follow` function.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from retrieval.backbone import display_spec
from retrieval.catalog import Catalog, Collection
from retrieval.config import Settings
from retrieval.errors import RetrievalError
from webapp.ui.common import guarded
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
    tabs: gr.Tabs | None = None  # set by build_ui once the tabs exist: some buttons switch tabs

    def resolve(self, session, collection_name) -> Collection:
        collection = get_collection(self.catalog, session, collection_name)
        serve_files(collection)
        return collection


def serve_files(collection: Collection) -> None:
    """Serve thumbnails and originals straight from the collection's folders (no copies)."""
    folders = [collection.index.directory, collection.index.source_root()]
    new = [f.resolve() for f in folders if f.is_dir() and f.resolve() not in _served]
    if new:
        _served.update(new)
        gr.set_static_paths(new)


def build(catalog: Catalog, settings: Settings, start: str | None) -> Shell:
    """Title, collection switcher and the overview (inside a gr.Blocks)."""
    first = catalog.get(start) if start and catalog.status(start) is None else None
    session = gr.State(None, delete_callback=delete_session)
    gr.Markdown(
        "# Smart Retrieval\nSearch image collections by text, by image, or by an image plus "
        "a change in words. Click any image for details."
    )
    with gr.Row(equal_height=True):
        collection = gr.Dropdown(
            collection_choices(catalog),
            value=start,
            label="Collection",
            scale=1,
            allow_custom_value=True,  # unknown names get our message, not a bare validation error
        )
        status = gr.Markdown(elem_id="collection-status")
    with gr.Accordion("All collections", open=False):
        overview = gr.Markdown()
    return Shell(catalog, settings, first, session, collection, status, overview)


def wire(demo: gr.Blocks, shell: Shell, followers: list[Follower]) -> None:
    """Choosing a collection shows its status and refreshes every follower."""

    @guarded
    def select_collection(collection_name, session):
        """Status, first gallery page and per-collection choices for the chosen collection."""
        try:
            current = shell.resolve(session, collection_name)
            status = collection_summary(current)
        except RetrievalError as error:
            gr.Warning(str(error))
            current, status = None, unavailable_message(collection_name or "?", str(error))
        return status, *(value for _, follow in followers for value in follow(current))

    inputs = [shell.collection, shell.session]
    outputs = [
        shell.status,
        *(component for components, _ in followers for component in components),
    ]
    shell.collection.change(select_collection, inputs, outputs, api_name="select_collection")
    demo.load(
        select_collection,
        inputs,
        outputs,
        api_name="initial_collection",
        api_visibility="private",
    )
    demo.load(
        guarded(lambda: catalog_overview(shell.catalog)),
        None,
        shell.overview,
        api_name="collections_overview",
    )


def collection_summary(collection: Collection) -> str:
    spec, index = collection.spec, collection.index
    methods = ", ".join(collection.searcher.composers)
    text = f"**{html.escape(spec.title or spec.name)}**: {len(index):,} items"
    text += f" · model `{display_spec(index.model_spec())}` · composed search: {methods}"
    if spec.description:
        text += f"\n\n{html.escape(spec.description)}"
    return text


def unavailable_message(name: str, reason: str) -> str:
    return f"⚠️ **{html.escape(name)} is not available**: {html.escape(reason)}"


def catalog_overview(catalog: Catalog) -> str:
    """One line per shared collection with its state; loading is attempted (and cached) here."""
    lines = []
    for name, spec in catalog.specs.items():
        reason = catalog.status(name)
        state = "✅ ready" if reason is None else f"⚠️ unavailable: {html.escape(reason)}"
        lines.append(f"- **{html.escape(spec.title or name)}** (`{name}`): {state}")
    return "\n".join(lines)
