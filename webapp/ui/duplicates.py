"""Duplicates tab: groups of copies of one image (re-encoded, resized, cropped, turned,
recoloured), kept apart from items that merely look alike, for cataloguers cleaning a collection.

A group that is not one object twice can be marked "not duplicates". In a collection this
session uploaded the decision is saved beside its index; in a shared collection it holds for
this session only (curators save it for everyone with the API key or the `duplicates` command).
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Collection
from retrieval.duplicates import (
    CALIBRATED,
    DuplicateThresholds,
    collection_duplicates,
    load_decisions,
    mark_not_duplicates,
)
from retrieval.errors import BadInput
from webapp.ui.common import listen, results_gallery
from webapp.ui.detail import Detail
from webapp.ui.i18n import t
from webapp.ui.shell import Shell
from webapp.ui.state import SESSION_PREFIX

SHARED_NOTE = (
    "Kept for this session only: this collection is shared. To keep it for everyone, send it to "
    "the API with the key (POST .../duplicates/not-duplicates) or run `python -m retrieval "
    "duplicates INDEX --not-duplicates ID,ID`."
)


def find_groups(
    collection: Collection, strictness: float, session_decisions: list[list[str]] | None = None
) -> list[dict]:
    """The collection's groups of copies at this strictness, every decision applied."""
    thresholds = DuplicateThresholds(CALIBRATED.min_cosine, float(strictness))
    decisions = load_decisions(collection.index.directory) + (session_decisions or [])
    return collection_duplicates(collection.index, thresholds, decisions)


def shown_groups(collection: Collection, groups: list[dict], strictness: float) -> tuple:
    """(gallery, hits, summary, group choices) for the groups found."""
    gallery, hits = [], []
    for number, group in enumerate(groups, start=1):
        for item_id in group["ids"]:
            title = str(collection.index.item(item_id).get("title", item_id))
            caption = f"Group {number} · {title}"
            gallery.append((str(collection.index.thumb_path(item_id)), caption))
            hits.append({"id": item_id, "rank": len(hits) + 1, "title": caption})
    count = len(collection.index)
    if groups:
        copies = sum(len(group["ids"]) for group in groups)
        summary = (
            f"**{len(groups)} groups of copies** ({copies} items) among {count:,} items at "
            f"strictness {strictness:.3f}. Items that only look alike are not grouped."
        )
    else:
        summary = f"No copies found among {count:,} items at strictness {strictness:.3f}."
    choices = [(f"Group {n}: {len(g['ids'])} items", n - 1) for n, g in enumerate(groups, 1)]
    return gallery, hits, summary, gr.Dropdown(choices=choices, value=0 if choices else None)


def build() -> SimpleNamespace:
    with gr.Tab(t("tab_duplicates"), id="duplicates") as page_tab:
        with gr.Row(equal_height=True):
            strictness = gr.Slider(
                0.05, 0.999, CALIBRATED.min_copy_score, step=0.001,
                label=t("duplicate_strictness"), scale=3, elem_id="duplicate-strictness",
            )  # fmt: skip
            button = gr.Button(
                t("find_duplicates"),
                variant="primary",
                scale=1,
                min_width=120,
                elem_id="find-duplicates",
            )
        summary = gr.Markdown(elem_id="duplicate-summary")
        gallery, hits = results_gallery(t("tab_duplicates"), "duplicate-results")
        with gr.Row(equal_height=True):
            group = gr.Dropdown([], label=t("duplicate_group"), scale=2, elem_id="duplicate-group")
            reject = gr.Button(
                t("not_duplicates"), scale=1, min_width=120, elem_id="not-duplicates"
            )
        groups = gr.State([])
        decisions = gr.State({})  # collection name -> this session's decisions
    stale = {
        gallery: [],
        hits: None,
        groups: [],
        summary: "",
        group: gr.update(choices=[], value=None),
    }
    return SimpleNamespace(**locals())


def wire(tab: SimpleNamespace, shell: Shell, detail: Detail) -> None:
    def search(collection_name, strictness, decided, session):
        collection = shell.resolve(session, collection_name)
        found = find_groups(collection, strictness, decided.get(collection_name))
        return *shown_groups(collection, found, strictness), found

    def not_duplicates(collection_name, strictness, chosen, found, decided, session):
        if chosen is None or not found or int(chosen) >= len(found):
            raise BadInput("find duplicates first, then choose the group that is not one")
        collection = shell.resolve(session, collection_name)
        ids = found[int(chosen)]["ids"]
        if collection_name.startswith(SESSION_PREFIX):
            mark_not_duplicates(collection.index, ids)
            gr.Info(f"Saved: {', '.join(ids)} are not duplicates.")
        else:
            decided = {**decided, collection_name: [*decided.get(collection_name, []), ids]}
            gr.Info(SHARED_NOTE)
        return *search(collection_name, strictness, decided, session), decided

    inputs = [shell.collection, tab.strictness, tab.decisions, shell.session]
    outputs = [tab.gallery, tab.hits, tab.summary, tab.group, tab.groups]
    listen(tab.button.click, search, inputs, outputs, api_name="find_duplicates_ui")
    listen(
        tab.reject.click,
        not_duplicates,
        [shell.collection, tab.strictness, tab.group, tab.groups, tab.decisions, shell.session],
        outputs + [tab.decisions],
        api_name="mark_not_duplicates_ui",
        api_visibility="private",
    )
    detail.follow_clicks(tab.gallery, tab.hits, None, "select_duplicate")
