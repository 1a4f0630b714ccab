"""Shareable views: the collection, tab and query live in the page's URL.

`?collection=shapes&tab=text&q=a+red+circle` opens the Shapes collection's text search and
runs it; a reload, a bookmark or a link in a lesson plan shows the same results. After every
search the browser's address is rewritten to the view's link, and "Share or embed this view"
offers it with an `<iframe>` snippet. Uploaded images and session collections stay private:
they never go into a link.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import ModuleType, SimpleNamespace
from urllib.parse import urlencode

import gradio as gr

from webapp.ui.common import keeping
from webapp.ui.shell import Shell
from webapp.ui.state import SESSION_PREFIX

# tab id -> (the tab's module, its components); a module with `open_view` can run a link's search
Pages = dict[str, tuple[ModuleType, SimpleNamespace]]

# the query parameters each tab reads (besides `collection` and `tab`); the first is the one the
# others need (a change without a reference is no composed query). Never `page`: Gradio's own.
TAB_FIELDS = {
    "gallery": ("gallery_page",),
    "text": ("q",),
    "image": ("item",),
    "composed": ("ref", "text", "method"),
    "tagging": ("item",),
    "explain": ("item", "text"),
    "upload": (),
    "map": ("q",),
    "duplicates": (),
}
MAX_FIELD_CHARS = 500


@dataclass(frozen=True)
class View:
    """What a link opens; empty fields are left out of the URL."""

    collection: str = ""
    tab: str = "gallery"
    q: str = ""
    item: str = ""
    ref: str = ""
    text: str = ""
    method: str = ""
    gallery_page: str = ""

    def wants_search(self) -> bool:
        return any(getattr(self, name) for name in TAB_FIELDS[self.tab])


def parse_view(params: Mapping[str, str]) -> View:
    """A View from query parameters; unknown tabs fall back to the gallery, long values are cut.

    Without a tab, the first tab whose own fields the link holds (`?q=...` is a text search)."""
    values = {
        spec.name: str(params.get(spec.name, "") or "").strip()[:MAX_FIELD_CHARS]
        for spec in fields(View)
    }
    if not values["gallery_page"].isdigit():
        values["gallery_page"] = ""
    if values["tab"] not in TAB_FIELDS:
        wanted = (tab for tab, names in TAB_FIELDS.items() if names and values[names[0]])
        values["tab"] = next(wanted, "gallery")
    return View(**values)


def view_url(page_url: str, view: View) -> str:
    """The page's address with the view's own fields as query parameters.

    A tab's fields go in only with the first one: an uploaded reference image cannot go into a
    link, so neither does the change that was asked of it."""
    base = (page_url or "/").split("?")[0].split("#")[0]
    own = TAB_FIELDS[view.tab]
    wanted = {"collection", "tab", *(own if own and getattr(view, own[0]) else ())}
    query = {name: value for name, value in asdict(view).items() if name in wanted and value}
    return f"{base}?{urlencode(query)}" if query else base


def embed_snippet(url: str) -> str:
    """An iframe for a museum page or a course site (works without any script from a CDN)."""
    return (
        f'<iframe src="{html.escape(url, quote=True)}" title="Smart Retrieval" '
        'width="100%" height="900" style="border:0" loading="lazy"></iframe>'
    )


# -- in the app ------------------------------------------------------------------------------
REWRITE_ADDRESS = """(url) => {
  if (url && url !== window.location.href) window.history.replaceState(null, '', url);
}"""


def wire(demo: gr.Blocks, shell: Shell, pages: Pages) -> None:
    """Open the view a link asks for on load; keep the link (and the address bar) current."""
    wire_opening(demo, shell, pages)
    wire_sharing(demo, shell, pages)


def wire_opening(demo: gr.Blocks, shell: Shell, pages: Pages) -> None:
    view_state = gr.State(None)

    def open_collection(collection_name, session, request: gr.Request):
        params = dict(request.query_params) if request else {}
        view = parse_view(params)
        name = collection_name
        if view.collection in shell.catalog.specs:
            name = view.collection
        elif view.collection:
            gr.Warning(f"no collection {view.collection!r} here; showing {name}")
        # a link without a tab or query leaves it alone: the visitor may have clicked one already
        chosen = "tab" in params or view.wants_search()
        tab = (gr.Tabs(selected=view.tab), view.tab) if chosen else (gr.skip(),) * 2
        return gr.Dropdown(value=name), *tab, view, *shell.select(name, session)

    outputs = [shell.collection, shell.tabs, shell.current_tab, view_state, shell.status]
    outputs += shell.follower_outputs
    view_outputs = [
        value
        for _, tab in pages.values()
        for value in vars(tab).values()
        if isinstance(value, gr.components.Component)
    ]

    def run_view(view: View | None, collection_name, session):
        if view is None or not view.wants_search() or view.collection.startswith(SESSION_PREFIX):
            # one entry is all Gradio needs: a skip for each output would rebuild every one
            return {view_outputs[0]: gr.skip()}
        module, tab = pages[view.tab]
        return module.open_view(tab, shell.resolve(session, collection_name), view)

    demo.load(
        keeping(open_collection, len(outputs)),
        [shell.collection, shell.session],
        outputs,
        api_name="initial_collection",
        api_visibility="private",
    ).then(
        keeping(run_view, len(view_outputs)),
        [view_state, shell.collection, shell.session],
        view_outputs,
        api_name="open_linked_view",
        api_visibility="private",
        show_progress="hidden",
    )
    demo.load(None, None, shell.page_url, js="() => window.location.href")


def wire_sharing(demo: gr.Blocks, shell: Shell, pages: Pages) -> None:
    fields_shown = [(tab_id, name, box) for tab_id, (_, tab) in pages.items()
                    for name, box in getattr(tab, "link_fields", {}).items()]  # fmt: skip

    def make_link(page_url, tab_id, collection_name, *values):
        if str(collection_name or "").startswith(SESSION_PREFIX):
            collection_name = ""  # an upload is this session's only: a link opens the default
        chosen = {name: value for (owner, name, _), value in zip(fields_shown, values, strict=True)
                  if owner == tab_id}  # fmt: skip
        chosen = {name: str(value or "").strip() for name, value in chosen.items()}
        view = View(collection=collection_name or "", tab=tab_id or "gallery", **chosen)
        url = view_url(page_url or "/", view)
        return url, embed_snippet(url)

    link_inputs = [shell.page_url, shell.current_tab, shell.collection]
    link_inputs += [box for *_, box in fields_shown]
    outputs = [shell.current_tab, shell.link, shell.embed]

    def link_for(tab_id: str | None):
        """make_link for a tab just chosen (`tab_id`), or for the current one (None)."""

        def update(page_url, current_tab, *values):
            return tab_id or current_tab, *make_link(page_url, tab_id or current_tab, *values)

        return update

    shown = [tab.shown for _, tab in pages.values() if getattr(tab, "shown", None) is not None]
    updates = [(None, [component.change for component in shown])]
    updates += [(tab_id, [tab.page_tab.select]) for tab_id, (_, tab) in pages.items()]
    for tab_id, triggers in updates:
        gr.on(
            triggers,
            link_for(tab_id),
            link_inputs,
            outputs,
            api_name=f"link_{tab_id or 'current'}",
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        ).then(None, shell.link, None, js=REWRITE_ADDRESS)
