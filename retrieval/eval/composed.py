"""Composed-retrieval protocols: CIRR, FashionIQ and CIRCO metrics, test submission files.

Any Composer (`composer(backbone, image_features (B,d), texts) -> (B,d)`) is evaluated the same way:
the reference's feature and the modification text make one query vector, which ranks the split
gallery by cosine similarity. The reference feature is at the scale the composer takes: normalised,
or the encoder's raw output for a model trained on it (`input_features` "raw": the CLIP4Cir and
SEARLE weights, fed raw features as in the papers' own validation code).

Ties between gallery images are broken by gallery order (a stable sort), and the same ranking is
used for the metrics and for the submission files, so what is measured locally is what is submitted.

    CIRR       R@1/5/10/50 over the split gallery with the reference removed; Recall_subset@1/2/3
               among the query's img_set members other than the reference; "mean" = mean of the
               seven (model selection), "avg" = (R@5 + Rs@1) / 2 (the CIRR paper's headline).
    FashionIQ  R@10 and R@50 per category (reference kept in the gallery, as published) and the
               averages; "score" = (R@10 + R@50) / 2 (model selection).
    CIRCO      mAP@5/10/25/50, AP@K divided by min(#ground truths, K); reference removed.
All values are percentages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrieval.composed.baselines import (
    RAW,
    image_only_composer,
    input_features,
    sum_composer,
    text_only_composer,
)
from retrieval.composed.combiner import combiner_composer
from retrieval.composed.phi import zero_shot_composer
from retrieval.data.composed import ComposedSplit
from retrieval.data.features import split_features
from retrieval.errors import BadInput
from retrieval.eval.metrics import (
    CIRCO_KS,
    CIRR_KS,
    map_at_k,
    ranked_positions,
    recall_at_k,
    subset_order,
    subset_rank,
    target_ranks,
)
from retrieval.eval.report import markdown_table

SUBSET_KS = (1, 2, 3)


FASHIONIQ_KS = (10, 50)


SUBMISSION_K = 50


SUBSET_SUBMISSION_K = 3


METHODS = ("image", "text", "sum", "combiner", "zero-shot")


SELECT_METRIC = {"cirr": "mean", "shapes": "mean", "fashioniq": "score", "circo": "mAP@10"}


Composer = Callable[[object, torch.Tensor, list], torch.Tensor]


@dataclass
class SplitResult:
    split: ComposedSplit
    metrics: dict[str, float] = field(default_factory=dict)
    submissions: dict[str, dict] = field(default_factory=dict)  # file name -> JSON content
    # labelled splits: each query's target rank (0 = first), for paired comparisons
    ranks: torch.Tensor | None = None


@torch.no_grad()
def compose_queries(
    backbone,
    composer: Composer,
    reference_features: torch.Tensor,
    texts: list,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Query vectors (CPU float32, normalised) for every (reference feature, text) pair."""
    device = getattr(backbone, "device", torch.device("cpu"))
    chunks = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc="compose", disable=not progress, leave=False
    ):
        features = reference_features[start : start + batch_size].to(device)
        chunks.append(
            composer(backbone, features, list(texts[start : start + batch_size])).float().cpu()
        )
    return F.normalize(torch.cat(chunks), dim=-1)


def is_normalised(features: torch.Tensor, tolerance: float = 1e-3) -> bool:
    """True when every row has unit length (raw CLIP features are far from it: norms ~10)."""
    norms = torch.linalg.vector_norm(features.float(), dim=-1)
    return bool(((norms - 1).abs() <= tolerance).all())


def _query_texts(split: ComposedSplit, caption_lists: bool) -> list:
    if caption_lists and split.dataset == "fashioniq":
        return [[c.strip().strip(".?, ") for c in q.captions if c.strip()] for q in split.queries]
    return [split.query_text(q) for q in split.queries]


def evaluate_split(
    split: ComposedSplit,
    backbone,
    composer: Composer,
    features: tuple[list[str], torch.Tensor] | None = None,
    batch_size: int = 256,
    cache=True,
    caption_lists: bool = False,
    progress: bool = True,
) -> SplitResult:
    """Metrics (labelled splits) or submission files (test splits) of one Composer on one split.

    `features` = (names, (n, d) tensor) of the split's images when already computed, normalised
    or raw (`split_features(..., normalise=False)`); otherwise they come from the feature cache.
    Each composer gets its references at the scale it takes: raw features are normalised for a
    normalised composer, and a raw-input composer given normalised ones has raw ones computed.
    `caption_lists` hands FashionIQ's two captions to the composer as a list (textual inversion
    averages both orders) instead of "c1 and c2".
    """
    raw = input_features(composer) == RAW
    names, image_features = features or split_features(
        split, backbone, cache, progress, normalise=not raw
    )
    if raw and is_normalised(image_features):  # the raw scale cannot be recovered from these
        names, image_features = split_features(split, backbone, cache, progress, normalise=False)
    elif not raw and not is_normalised(image_features):
        image_features = F.normalize(image_features.float(), dim=-1)
    row = {name: i for i, name in enumerate(names)}
    gallery_rows = torch.tensor([row[name] for name in split.gallery], dtype=torch.long)
    gallery = F.normalize(image_features[gallery_rows].float(), dim=-1)
    in_gallery = {name: i for i, name in enumerate(split.gallery)}
    references = image_features[
        torch.tensor([row[q.reference] for q in split.queries], dtype=torch.long)
    ]
    queries = compose_queries(
        backbone, composer, references, _query_texts(split, caption_lists), batch_size, progress
    )
    result = SplitResult(split)
    ranks, subset_ranks, top_lists = [], [], []
    cirr_test, circo = split.dataset == "cirr" and not split.labelled, split.dataset == "circo"
    for start in range(0, len(split.queries), 256):
        block = split.queries[start : start + 256]
        scores = queries[start : start + 256] @ gallery.T
        if split.exclude_reference:
            for offset, query in enumerate(block):
                if query.reference in in_gallery:
                    scores[offset, in_gallery[query.reference]] = -torch.inf
        if split.labelled:
            targets = torch.tensor([in_gallery[q.targets[0]] for q in block])
            ranks.append(target_ranks(scores, targets))
        if circo or cirr_test:
            top = ranked_positions(scores, SUBMISSION_K + 1)
            for offset in range(len(block)):
                kept = [p for p in top[offset].tolist() if scores[offset, p] > -torch.inf]
                top_lists.append(kept[:SUBMISSION_K])
        for offset, query in enumerate(block):
            members = [
                in_gallery[m] for m in query.members if m != query.reference and m in in_gallery
            ]
            if split.dataset != "cirr" or not members:
                continue
            if split.labelled:
                subset_ranks.append(
                    subset_rank(scores[offset], members, in_gallery[query.targets[0]])
                )
            else:
                result.submissions.setdefault("subset", {})[query.id] = subset_order(
                    scores[offset], members
                )
    if split.labelled:
        result.ranks = torch.cat(ranks)
        result.metrics = _metrics(split, result.ranks, subset_ranks, top_lists)
    else:
        result.submissions = _submissions(split, top_lists, result.submissions.get("subset", {}))
    return result


def evaluate_method(
    method: str,
    composer: Composer,
    splits: list[ComposedSplit],
    features: list,
    backbone,
    batch_size: int = 256,
    progress: bool = True,
) -> list[SplitResult]:
    """One method over a benchmark's splits (FashionIQ: one per category), each with its own
    image features; zero-shot averages both caption orders, as SEARLE does."""
    return [
        evaluate_split(
            split,
            backbone,
            composer,
            feats,
            batch_size,
            caption_lists=method == "zero-shot",
            progress=progress,
        )
        for split, feats in zip(splits, features, strict=True)
    ]


def _metrics(split: ComposedSplit, ranks: torch.Tensor, subset_ranks: list[int], top_lists) -> dict:
    if split.dataset == "fashioniq":
        return recall_at_k(ranks, FASHIONIQ_KS)
    if split.dataset == "circo":
        in_gallery = {name: i for i, name in enumerate(split.gallery)}
        truths = [{in_gallery[t] for t in q.targets if t in in_gallery} for q in split.queries]
        return {**map_at_k(top_lists, truths, CIRCO_KS), **recall_at_k(ranks, CIRCO_KS)}
    metrics = recall_at_k(ranks, CIRR_KS)
    if subset_ranks:
        metrics.update(recall_at_k(torch.tensor(subset_ranks), SUBSET_KS, prefix="Rs"))
        metrics["mean"] = sum(metrics.values()) / len(metrics)
        metrics["avg"] = (metrics["R@5"] + metrics["Rs@1"]) / 2
    return metrics


def _submissions(split: ComposedSplit, top_lists, subset: dict) -> dict[str, dict]:
    """CIRR: the two rc2 files the evaluation server takes; CIRCO: query id -> top-50 image ids."""
    if split.dataset == "cirr":
        recall = {"version": "rc2", "metric": "recall"}
        recall_subset = {"version": "rc2", "metric": "recall_subset"}
        for query, positions in zip(split.queries, top_lists, strict=True):
            recall[query.id] = [split.gallery[p] for p in positions]
            if query.id in subset:
                recall_subset[query.id] = [
                    split.gallery[p] for p in subset[query.id][:SUBSET_SUBMISSION_K]
                ]
        return {"recall_submission.json": recall, "recall_subset_submission.json": recall_subset}
    if split.dataset == "circo":
        return {
            "circo_test_submission.json": {
                query.id: [int(split.gallery[p]) for p in positions]
                for query, positions in zip(split.queries, top_lists, strict=True)
            }
        }
    raise BadInput(
        f"{split.name} has no ground truth and no submission format: evaluate the val split"
    )


def summarise(dataset: str, results: list[SplitResult]) -> dict[str, float]:
    """One metrics dict per protocol; FashionIQ adds the category averages and its selection score."""
    if dataset != "fashioniq":
        return dict(results[0].metrics)
    summary = {}
    for result in results:
        summary.update({f"{result.split.category}/{k}": v for k, v in result.metrics.items()})
    for k in FASHIONIQ_KS:
        summary[f"R@{k}"] = sum(r.metrics[f"R@{k}"] for r in results) / len(results)
    summary["score"] = (summary["R@10"] + summary["R@50"]) / 2
    return summary


def build_composer(
    method: str, combiner: str | None = None, phi: str | None = None, device: str | None = None
) -> Composer:
    """The Composer behind a method name: image, text, sum, combiner (needs weights), zero-shot (phi)."""

    if method == "image":
        return image_only_composer
    if method == "text":
        return text_only_composer
    if method == "sum":
        return sum_composer
    if method == "combiner":
        if not combiner:
            raise BadInput("method 'combiner' needs --combiner DIR (or hf-hub:org/repo)")

        return combiner_composer(combiner, device=device)
    if method == "zero-shot":
        if not phi:
            raise BadInput(
                "method 'zero-shot' needs --phi DIR (or hf-hub:org/repo) from `train-phi`"
            )

        return zero_shot_composer(phi, device=device)
    raise BadInput(f"unknown method {method!r}; choose from {METHODS}")


def markdown_results(dataset: str, table: dict[str, dict[str, float]]) -> str:
    """One row per method, one column per metric."""
    columns = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    rows = [
        [method, *(metrics.get(c, float("nan")) for c in columns)]
        for method, metrics in table.items()
    ]
    return markdown_table(["method", *columns], rows, digits=2)
