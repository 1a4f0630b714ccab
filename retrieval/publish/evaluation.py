"""The dataset card's evaluation: the project's own protocols run on the published collection.

Composed splits (CIRR, FashionIQ) are ranked with the index's own vectors, so the table measures
exactly what visitors search; NoisyArt's protocol embeds its test images with the same model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from retrieval.backbone import Backbone, display_spec
from retrieval.data.composed import ComposedSplit
from retrieval.eval.art import ClipFeatures, EvalOptions, evaluate
from retrieval.eval.art import markdown_results as art_table
from retrieval.eval.composed import build_composer, evaluate_method, summarise
from retrieval.eval.composed import markdown_results as composed_table
from retrieval.index import Index
from retrieval.publish.sources import Source, image_id

BASELINES = ("image", "text", "sum")
PROTOCOLS = {
    "cirr": "Recall@K in percent over the split's images with the reference removed; Rs@K ranks "
    "only the other members of the query's set; mean = the mean of the seven.",
    "fashioniq": "Recall@10 and @50 in percent per category (reference kept in the gallery, as "
    "published) and their averages; score = (R@10 + R@50) / 2.",
    "noisyart": "Zero-shot classification from the artworks' titles and descriptions (top-1 / "
    "top-5), description-to-artwork and artwork-to-artwork mAP.",
}


@dataclass
class Table:
    heading: str
    protocol: str
    markdown: str
    metrics: dict


@dataclass
class Evaluation:
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is not measured, and why

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Evaluation:
        return cls([Table(**table) for table in raw.get("tables", [])], list(raw.get("notes", [])))


def evaluate_source(
    source: Source, index: Index, backbone: Backbone, composers: dict, progress: bool = False
) -> Evaluation:
    """Every labelled part of the source, each composed split with the baselines and the
    collection's own composers (`{"combiner": ..., "zero-shot": ...}`)."""
    evaluation = Evaluation(notes=list(source.unevaluated))
    by_split = defaultdict(list)
    for split in source.composed:
        by_split[split.split].append(split)
    methods = {name: build_composer(name) for name in BASELINES} | composers
    for splits in by_split.values():
        _composed(evaluation, splits, index, backbone, methods, source.facts.name)
    if source.artworks is not None:
        _artworks(evaluation, source, backbone, progress)
    return evaluation


def index_features(split: ComposedSplit, index: Index) -> tuple[list[str], torch.Tensor] | None:
    """(names, vectors) of a split's images from the index; None when some were not indexed."""
    names = list(split.images)
    ids = [image_id(name) for name in names]
    if not all(item_id in index for item_id in ids):
        return None
    rows = np.asarray(index.vectors)[[index.position(item_id) for item_id in ids]]
    return names, torch.from_numpy(np.ascontiguousarray(rows))


def _composed(evaluation, splits, index, backbone, methods, dataset_name) -> None:
    features = [index_features(split, index) for split in splits]
    first = splits[0]
    if any(feats is None for feats in features):
        evaluation.notes.append(
            f"{first.split}: not evaluated, some of its images could not be indexed (see the "
            "manifest's `skipped`)"
        )
        return
    table = {}
    for method, composer in methods.items():
        results = evaluate_method(method, composer, splits, features, backbone, progress=False)
        table[method] = summarise(first.dataset, results)
    queries = sum(len(split.queries) for split in splits)
    evaluation.tables.append(
        Table(
            f"{dataset_name} {first.split} ({queries:,} queries)",
            PROTOCOLS[first.dataset],
            composed_table(first.dataset, table),
            table,
        )
    )


def _artworks(evaluation: Evaluation, source: Source, backbone: Backbone, progress: bool) -> None:
    dataset = source.artworks
    run = evaluate(
        ClipFeatures(backbone, display_spec(backbone.spec)),
        dataset,
        None,
        EvalOptions(progress=progress),
    )
    heading = f"{source.facts.name} {dataset.split} ({run['counts']['images']:,} images)"
    evaluation.tables.append(
        Table(heading, PROTOCOLS["noisyart"], art_table([run]), run["metrics"])
    )
    evaluation.notes += run["notes"]
