"""Ranking metrics shared by every protocol: target ranks, R@K (percent), mAP@K, top-k accuracy,
and the paired bootstrap that says whether a gain is larger than the choice of queries moves it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.errors import BadInput

CIRR_KS = (1, 5, 10, 50)
CIRCO_KS = (5, 10, 25, 50)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target; items tied with it count as ahead when earlier in the gallery."""
    targets = torch.as_tensor(targets, dtype=torch.long, device=scores.device)
    target_scores = scores.gather(1, targets[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > target_scores) | ((scores == target_scores) & (columns < targets[:, None]))
    return ahead.sum(dim=1)


def paired_bootstrap(
    method: torch.Tensor, baseline: torch.Tensor, rounds: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of mean(method - baseline) over the same queries (e.g. hit@1 as 0/1), resampled
    with replacement: whether a gain is larger than what the choice of test queries moves it by."""
    difference = (torch.as_tensor(method).float() - torch.as_tensor(baseline).float()).numpy()
    if difference.size == 0:
        raise BadInput("no queries to compare")
    rng = np.random.default_rng(seed)
    chunks = [
        min(1000, rounds - start) for start in range(0, max(rounds, 1), 1000)
    ]  # bounded memory
    means = np.concatenate(
        [
            difference[rng.integers(0, difference.size, (chunk, difference.size))].mean(axis=1)
            for chunk in chunks
        ]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def recall_gain(
    ranks: torch.Tensor, baseline_ranks: torch.Tensor, k: int
) -> tuple[float, float, float]:
    """R@k of one method minus a baseline's on the same queries, in points, with its 95% interval."""
    hits, base = (ranks < k).float(), (baseline_ranks < k).float()
    low, high = paired_bootstrap(hits, base)
    return 100 * float(hits.mean() - base.mean()), 100 * low, 100 * high


@torch.no_grad()
def feature_ranks(queries, gallery, targets, exclude=None) -> torch.Tensor:
    """Target ranks by cosine similarity of features; `exclude[i]` (>= 0) leaves query i's ranking."""
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T
    if exclude is not None:
        excluded = torch.as_tensor(exclude)
        rows = torch.arange(len(scores))[excluded >= 0]
        scores[rows, excluded[excluded >= 0]] = -torch.inf
    return target_ranks(scores, torch.as_tensor(targets))


def ranked_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k gallery positions of each row, ties in gallery order (the ranking `target_ranks` counts)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def recall_at_k(ranks: torch.Tensor, ks=CIRR_KS, prefix: str = "R") -> dict[str, float]:
    """Percentage of queries whose target ranks within the top K."""
    ranks = torch.as_tensor(ranks)
    return {f"{prefix}@{k}": 100.0 * float((ranks < k).float().mean()) for k in ks}


def subset_rank(scores: torch.Tensor, candidates: list[int], target: int) -> int:
    """Rank of `target` among `candidates` only (gallery positions; ties in gallery order)."""
    candidates = sorted(set(candidates))
    if target not in candidates:
        raise BadInput("the target is not among the subset candidates")
    return int(
        target_ranks(scores[candidates][None, :], torch.tensor([candidates.index(target)]))[0]
    )


def subset_order(scores: torch.Tensor, candidates: list[int]) -> list[int]:
    candidates = sorted(set(candidates))
    order = ranked_positions(scores[candidates][None, :], len(candidates))[0]
    return [candidates[i] for i in order.tolist()]


def average_precision_at_k(
    relevant: torch.Tensor, n_ground_truths: torch.Tensor, k: int
) -> torch.Tensor:
    """AP@K per row of a (Q, >=K) relevance matrix of ranked lists; divides by min(#ground truths, K)."""
    relevant = torch.as_tensor(relevant, dtype=torch.float32)[:, :k]
    hits = torch.cumsum(relevant, dim=1)
    precision = hits / torch.arange(1, relevant.shape[1] + 1, dtype=torch.float32)
    denominator = torch.clamp(torch.as_tensor(n_ground_truths, dtype=torch.float32), max=k).clamp(
        min=1
    )
    return (precision * relevant).sum(dim=1) / denominator


def map_at_k(
    ranked: list[list[int]], ground_truths: list[set[int]], ks=CIRCO_KS
) -> dict[str, float]:
    """mAP@K (percent) of ranked position lists against each query's set of ground-truth positions."""
    width = max(ks)
    relevant = torch.zeros(len(ranked), width)
    for row, (positions, truths) in enumerate(zip(ranked, ground_truths, strict=True)):
        for column, position in enumerate(positions[:width]):
            relevant[row, column] = float(position in truths)
    counts = torch.tensor([len(truths) for truths in ground_truths])
    return {
        f"mAP@{k}": 100.0 * float(average_precision_at_k(relevant, counts, k).mean()) for k in ks
    }


def average_precisions(
    scores: np.ndarray, relevant: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """AP of each query row over the gallery columns (ties broken by gallery order).

    `exclude` (bool, same shape) removes items from the ranking (e.g. the query image itself).
    Queries without any relevant item get NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    relevant = np.asarray(relevant, dtype=bool).copy()
    if exclude is not None:
        scores[exclude] = -np.inf
        relevant &= ~np.asarray(exclude, dtype=bool)
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    cumulative = np.cumsum(hits, axis=1)
    ranks = np.arange(1, scores.shape[1] + 1)
    precision_sum = (hits * cumulative / ranks).sum(axis=1)
    totals = hits.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, precision_sum / np.maximum(totals, 1), np.nan)


def mean_average_precision(
    query_features: np.ndarray,
    query_labels,
    gallery_features: np.ndarray,
    gallery_labels,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> float:
    """mAP of cosine-similarity rankings; relevant = same label. `exclude_self`: query i is gallery i."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    values = []
    for start in range(0, len(query_features), chunk):
        stop = min(start + chunk, len(query_features))
        scores = query_features[start:stop] @ gallery_features.T
        relevant = query_labels[start:stop, None] == gallery_labels[None, :]
        exclude = None
        if exclude_self:
            exclude = np.zeros_like(relevant)
            exclude[np.arange(stop - start), np.arange(start, stop)] = True
        values.append(average_precisions(scores, relevant, exclude))
    aps = np.concatenate(values) if values else np.array([])
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if len(aps) else float("nan")


def topk_accuracy(scores: np.ndarray, targets, ks=(1, 5)) -> dict[int, float]:
    """Share of rows whose target column ranks within the top k (ties count in the target's favour).

    A target of -1 (a class the scorer cannot predict) is always wrong.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    valid = targets >= 0
    target_scores = np.where(valid, scores[np.arange(len(scores)), np.maximum(targets, 0)], np.inf)
    ranks = (scores > target_scores[:, None]).sum(axis=1)
    return {k: float(((ranks < k) & valid).mean()) if len(scores) else float("nan") for k in ks}
