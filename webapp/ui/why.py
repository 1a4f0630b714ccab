""" "Why these results", under every result list: how the query's similarity falls over the whole
collection, with the top-k cut and the minimum score marked, so a person sees how far the first
results stand from the rest. For composed search, each hit's rank by the reference image alone
and by the text alone shows what the composition itself found.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from retrieval.catalog import Collection
from retrieval.layout import score_profile
from webapp.ui.common import listen, minimum_score
from webapp.ui.explain import explain_query
from webapp.ui.i18n import t
from webapp.ui.shell import Shell

PART_HEADERS = ["rank", "title", "by the reference alone", "by the text alone"]


def query_vector(collection: Collection, query: dict) -> np.ndarray:
    """The vector a tab's search ran with, from the query it remembers."""
    found = explain_query(collection, query)
    if isinstance(found, str):
        return collection.searcher.text_vector(found)[0]
    if isinstance(found, Path):
        return collection.searcher.image_vector(found)
    return np.asarray(found, np.float32)


def profile_for(collection: Collection, query: dict, k: int, min_score=None) -> dict:
    scores = collection.searcher.all_scores(query_vector(collection, query))
    return score_profile(scores, k, minimum_score(min_score))


def summary(profile: dict) -> str:
    """The profile in one sentence, for everyone (and for screen readers)."""
    gap = profile["top_k_score"] - profile["median"]
    spreads = gap / profile["spread"] if profile["spread"] > 0 else 0.0
    text = (
        f"**Why these results.** The top {profile['k']} of {profile['count']} items score "
        f"{profile['best']:.3f} to {profile['top_k_score']:.3f}; the median item scores "
        f"{profile['median']:.3f}, so even the last result stands {gap:.3f} "
        f"({spreads:.1f} standard deviations) above the typical item."
    )
    if profile["min_score"] is not None:
        text += (
            f" {profile['above_min_score']} items reach the minimum score "
            f"{profile['min_score']:.2f}."
        )
    return text


def figure(profile: dict, hit_scores: list[float]) -> Figure:
    """A histogram of all scores (log scale: most items are far), the cut, the minimum."""
    fig = Figure(figsize=(6.4, 2.3), layout="constrained")
    axes = fig.add_subplot()
    edges, counts = profile["histogram"]["edges"], profile["histogram"]["counts"]
    axes.stairs(counts, edges, fill=True, color="#9ca3af", label="all items")
    axes.set_yscale("symlog", linthresh=1)
    axes.axvline(profile["top_k_score"], color="#2563eb", lw=2, label=f"top-{profile['k']} cut")
    if profile["min_score"] is not None:
        axes.axvline(profile["min_score"], color="#dc2626", ls="--", lw=1.5, label="minimum score")
    axes.plot(hit_scores, [max(counts) or 1] * len(hit_scores), "v", color="#2563eb", ms=5)
    axes.set_xlabel("similarity to the query")
    axes.set_ylabel("items")
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def part_rows(collection: Collection, query: dict, hits: list[dict]) -> list[list]:
    """Composed search: each hit's rank by the reference alone and by the text alone."""
    parts = query.get("parts")
    if not parts or not hits:
        return []
    reference = parts["item"] or Path(parts["image"])
    searcher = collection.searcher
    found = {hit["id"]: hit for hit in hits}  # ids in rank order
    ranked = searcher.part_ranks(reference, parts["text"], list(found))
    return [
        [
            found[row["id"]]["rank"],
            found[row["id"]]["title"],
            row["reference_rank"],
            row["text_rank"],
        ]
        for row in ranked
    ]


def explained(collection: Collection, query: dict | None, hits: list[dict] | None, min_score=None):
    """(figure, sentence, composed part ranks) for a tab's latest results; nothing without any."""
    if not query or not hits:
        return None, "", gr.update(value=None, visible=False)
    profile = profile_for(collection, query, len(hits), min_score)
    hit_scores = [hit["score"] for hit in hits if "score" in hit]
    rows = part_rows(collection, query, hits)
    parts = gr.update(value=rows, visible=True) if rows else gr.update(value=None, visible=False)
    return figure(profile, hit_scores), summary(profile), parts


def build(name: str) -> SimpleNamespace:
    """The block under a tab's results (inside the tab)."""
    with gr.Accordion(t("why_results"), open=True, elem_id=f"{name}-why"):
        note = gr.Markdown(elem_id=f"{name}-why-note")
        plot = gr.Plot(show_label=False, elem_id=f"{name}-why-plot")
        parts = gr.Dataframe(
            headers=PART_HEADERS,
            label=t("part_ranks"),
            visible=False,
            interactive=False,
            elem_id=f"{name}-why-parts",
        )
    return SimpleNamespace(note=note, plot=plot, parts=parts, name=name)


def wire(why: SimpleNamespace, shell: Shell, tab: SimpleNamespace) -> None:
    """Recomputed whenever the tab's hits change (a search, a step back, a link)."""
    minimum = getattr(tab, "minimum", None)

    def explain_results(collection_name, query, hits, session, min_score=None):
        return explained(shell.resolve(session, collection_name), query, hits, min_score)

    inputs = [shell.collection, tab.query_used, tab.hits, shell.session]
    listen(
        tab.hits.change,
        explain_results,
        inputs + ([minimum] if minimum is not None else []),
        [why.plot, why.note, why.parts],
        api_name=f"why_{why.name}_results",
        api_visibility="private",
    )
