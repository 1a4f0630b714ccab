"""Composed-retrieval protocols: CIRR, FashionIQ and CIRCO metrics, test submission files, `eval` commands.

Any Composer (`composer(backbone, image_features (B,d), texts) -> (B,d)`) is evaluated the same way:
the reference's feature and the modification text make one query vector, which ranks the split
gallery by cosine similarity.

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

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrieval.cli_common import add_device, add_preprocessing
from retrieval.datasets import FASHIONIQ_CATEGORIES, ComposedSplit, load_splits, split_features
from retrieval.errors import BadInput

CIRR_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)
CIRCO_KS = (5, 10, 25, 50)
SUBMISSION_K = 50
SUBSET_SUBMISSION_K = 3
METHODS = ("image", "text", "sum", "combiner", "zero-shot")
SELECT_METRIC = {"cirr": "mean", "shapes": "mean", "fashioniq": "score", "circo": "mAP@10"}

Composer = Callable[[object, torch.Tensor, list], torch.Tensor]


# --------------------------------------------------------------------------- metric functions


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


# --------------------------------------------------------------------------- running a protocol


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

    `features` = (names, (n, d) tensor) of the split's images when already computed; otherwise
    they come from the feature cache. `caption_lists` hands FashionIQ's two captions to the
    composer as a list (textual inversion averages both orders) instead of "c1 and c2".
    """
    names, image_features = features or split_features(split, backbone, cache, progress)
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


# --------------------------------------------------------------------------- composers by name


def build_composer(
    method: str, combiner: str | None = None, phi: str | None = None, device: str | None = None
) -> Composer:
    """The Composer behind a method name: image, text, sum, combiner (needs weights), zero-shot (phi)."""
    from retrieval.search import image_only_composer, sum_composer, text_only_composer

    if method == "image":
        return image_only_composer
    if method == "text":
        return text_only_composer
    if method == "sum":
        return sum_composer
    if method == "combiner":
        if not combiner:
            raise BadInput("method 'combiner' needs --combiner DIR (or hf-hub:org/repo)")
        from retrieval.combiner import combiner_composer

        return combiner_composer(combiner, device=device)
    if method == "zero-shot":
        if not phi:
            raise BadInput(
                "method 'zero-shot' needs --phi DIR (or hf-hub:org/repo) from `train-phi`"
            )
        from retrieval.inversion import zero_shot_composer

        return zero_shot_composer(phi, device=device)
    raise BadInput(f"unknown method {method!r}; choose from {METHODS}")


# --------------------------------------------------------------------------- command line


def markdown_results(dataset: str, table: dict[str, dict[str, float]]) -> str:
    """One row per method, one column per metric."""
    columns = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method, metrics in table.items():
        lines.append(
            f"| {method} | "
            + " | ".join(f"{metrics.get(c, float('nan')):.2f}" for c in columns)
            + " |"
        )
    return "\n".join(lines)


def run_eval(args) -> dict:
    """`python -m retrieval eval cirr|fashioniq|circo`: metrics per method, or test submission files."""
    from retrieval.backbone import load_backbone

    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=args.device)
    categories = getattr(args, "categories", None) or FASHIONIQ_CATEGORIES
    splits = load_splits(args.benchmark, args.root, args.split, categories)
    cache = False if args.no_cache else (args.cache_dir or True)
    features = [split_features(split, backbone, cache, progress=not args.quiet) for split in splits]
    methods = args.method or ["combiner" if args.combiner else "zero-shot" if args.phi else "sum"]
    out = Path(args.out) if args.out else None
    if not all(split.labelled for split in splits) and out is None:
        raise BadInput(
            f"{splits[0].name} has no ground truth: give --out DIR for the submission files"
        )
    table, written = {}, []
    for method in methods:
        composer = build_composer(method, args.combiner, args.phi, args.device)
        results = [
            evaluate_split(
                split,
                backbone,
                composer,
                feats,
                args.batch_size,
                caption_lists=method == "zero-shot",
                progress=not args.quiet,
            )
            for split, feats in zip(splits, features, strict=True)
        ]
        if all(split.labelled for split in splits):
            table[method] = summarise(args.benchmark, results)
            continue
        for result in results:
            for file_name, content in result.submissions.items():
                prefix = f"{method}_" if len(methods) > 1 else ""
                path = out / f"{prefix}{file_name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(content))
                written.append(str(path))
    report = {
        "benchmark": args.benchmark,
        "split": splits[0].split,
        "model": args.model,
        "preprocessing": args.preprocessing,
        "combiner": args.combiner,
        "phi": args.phi,
        "queries": sum(len(s.queries) for s in splits),
        "metrics": table,
        "submissions": written,
    }
    if table:
        markdown = markdown_results(args.benchmark, table)
        print(markdown)
        if out is not None:
            results_file = out if out.suffix == ".json" else out / "results.json"
            results_file.parent.mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps(report, indent=2))
            results_file.with_suffix(".md").write_text(markdown + "\n")
    for path in written:
        print(f"submission file: {path}")
    return report


def _add_eval_parser(
    benchmarks, name: str, description: str, default_split: str, splits: str
) -> None:
    parser = benchmarks.add_parser(name, help=description, description=description)
    parser.set_defaults(benchmark=name, func=run_eval)
    parser.add_argument(
        "--root", required=True, help="dataset folder (see the layout in the README)"
    )
    parser.add_argument(
        "--model", required=True, help="CLIP spec, folder or hf-hub: id (the backbone)"
    )
    parser.add_argument(
        "--split", default=default_split, help=f"{splits} (default {default_split})"
    )
    parser.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="composition method; repeat to compare (default: combiner when --combiner "
        "is given, zero-shot when --phi is given, else sum)",
    )
    parser.add_argument("--combiner", help="Combiner folder or hf-hub:org/repo (method combiner)")
    parser.add_argument(
        "--phi", help="textual-inversion phi folder or hf-hub:org/repo (method zero-shot)"
    )
    add_preprocessing(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="queries composed per batch")
    parser.add_argument("--out", help="folder for results.json/.md and the test submission files")
    parser.add_argument("--cache-dir", help="image feature cache (default: SR_CACHE_DIR/features)")
    parser.add_argument(
        "--no-cache", action="store_true", help="embed images again, write no cache"
    )
    add_device(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if name == "fashioniq":
        parser.add_argument(
            "--categories",
            nargs="+",
            choices=FASHIONIQ_CATEGORIES,
            default=list(FASHIONIQ_CATEGORIES),
            help="categories (default: all three)",
        )


def add_eval_commands(benchmarks) -> None:
    """`eval cirr`, `eval fashioniq` and `eval circo` under the shared `eval` command."""
    _add_eval_parser(
        benchmarks,
        "cirr",
        "CIRR (or Shapes): R@K, Recall_subset@K; test1 -> submission files",
        "val",
        "val, test1 (submission files); the Shapes world also has a labelled test",
    )
    _add_eval_parser(
        benchmarks, "fashioniq", "FashionIQ: R@10/R@50 per category and average", "val", "val"
    )
    _add_eval_parser(
        benchmarks,
        "circo",
        "CIRCO: mAP@5/10/25/50; test -> submission file",
        "val",
        "val, test (submission file)",
    )
