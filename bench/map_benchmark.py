"""Collection map: UMAP vs PCA layout time and trustworthiness, and where queries land on the map.

Layouts come from the project's own `retrieval.layout.compute_layout` (the positions it returns,
scaled into the unit square, are the map the app stores and draws); trustworthiness is
`sklearn.manifold.trustworthiness` (k=10, cosine) on those positions. Two collections:

- Shapes (the shipped index, 1,024 x 128): trustworthiness on all items; UMAP timed twice, the
  first call in the process paying for the import and numba compilation. Query placement: 200
  Shapes descriptions encoded with the shipped Shapes CLIP, placed with `place_query` from the
  index's exact top-10.
- Synthetic CLIP-like vectors (default 100,000 x 512, `bench.index_benchmark.clustered_vectors`):
  layout over all items, trustworthiness on a random sample of them.

    python -m bench.map_benchmark                 # ~5 min on 2 busy cores
    python -m bench.map_benchmark --quick --no-write
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.manifold import trustworthiness
from threadpoolctl import threadpool_limits

from bench.report import write_section
from retrieval.eval.report import markdown_table
from retrieval.layout import PLACE_NEIGHBOURS, compute_layout, place_query

ROOT = Path(__file__).resolve().parent.parent
SHAPES_INDEX = ROOT / "precomputed/shapes/index"
SHAPES_METADATA = ROOT / "precomputed/shapes/metadata.csv"
SHAPES_MODEL = ROOT / "precomputed/shapes-clip-small"
K = PLACE_NEIGHBOURS  # trustworthiness neighbours and query top-k: 10
DIM = 512
WARMUP_ITEMS = 4_200  # just over umap-learn's 4,096-item switch to NN-descent


def load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def clip_like_vectors(
    count: int, concepts: int = 2000, topics: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(normalised vectors, concept of each): shared mean direction + one concept direction +
    small isotropic noise, concepts drawn with Zipf popularity (p ~ 1/rank) and grouped in topics.

    Like CLIP image embeddings, everything sits in a cone around one mean direction (unrelated
    items still have cosine ~0.4), items of one concept are close (~0.75) and concepts of one
    topic nearer each other (~0.55) than unrelated ones. (`bench.index_benchmark.clustered_vectors`
    is not reused: its clusters are 32-d subspaces whose spread dwarfs the centre, so two items of
    one cluster have cosine ~0 +- 0.18, not CLIP-like.)
    """
    rng = np.random.default_rng(seed)

    def unit(array: np.ndarray) -> np.ndarray:
        return array / np.linalg.norm(array, axis=-1, keepdims=True)

    mean = unit(rng.standard_normal(DIM, dtype=np.float32))
    topic_directions = unit(rng.standard_normal((topics, DIM), dtype=np.float32))
    concept_topic = rng.integers(0, topics, concepts)
    concept_directions = unit(
        topic_directions[concept_topic] + unit(rng.standard_normal((concepts, DIM), np.float32))
    )
    popularity = 1.0 / np.arange(1, concepts + 1)
    labels = rng.choice(concepts, size=count, p=popularity / popularity.sum())
    noise = rng.standard_normal((count, DIM), dtype=np.float32) * np.float32(0.8 / np.sqrt(DIM))
    vectors = mean + concept_directions[labels] + noise
    return unit(vectors).astype(np.float32), labels


def trust(vectors: np.ndarray, positions: np.ndarray) -> float:
    return float(trustworthiness(vectors, positions, n_neighbors=K, metric="cosine"))


def timed_layout(vectors: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """(unit-square positions, wall seconds of the layout itself, as compute_layout reports it)."""
    with threadpool_limits(1, user_api="blas"):  # like UMAP's n_jobs=1: one core each
        positions, info = compute_layout(vectors, method)
    assert info["method"] == method, info
    print(f"  {method} on {len(vectors):,}: {info['seconds']:.1f} s  (load {load()})", flush=True)
    return positions, float(info["seconds"])


def nearest_map_points(layout: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    """The k map positions nearest (Euclidean) to each of `points`."""
    distances = ((points[:, None, :] - layout[None, :, :]) ** 2).sum(axis=2)
    return np.argsort(distances, axis=1)[:, :k]


def median_nn_distance(layout: np.ndarray) -> float:
    """Median distance from a map point to its nearest other map point."""
    distances = np.sqrt(((layout[:, None, :] - layout[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distances, np.inf)
    return float(np.median(distances.min(axis=1)))


def placement(layout: np.ndarray, scores: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """(share of queries whose K nearest map points include one of their own top-K results,
    median distance placed point -> top-1 result's point / median map nearest-neighbour distance)."""
    placed = np.array([place_query(layout, s, p) for s, p in zip(scores, found, strict=True)])
    near = nearest_map_points(layout, placed.astype(np.float32), K)
    hits = [bool(set(n) & set(f[:K])) for n, f in zip(near, found, strict=True)]
    to_top1 = np.linalg.norm(placed - layout[found[:, 0]], axis=1)
    return float(np.mean(hits)), float(np.median(to_top1) / median_nn_distance(layout))


def shapes_queries(index, count: int, seed: int) -> list[str]:
    """`count` descriptions of indexed Shapes images (the `description` column), a fixed sample."""
    indexed = {item["id"] for item in index.items}
    with SHAPES_METADATA.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["id"] in indexed]
    picked = np.random.default_rng(seed).permutation(len(rows))[:count]
    return [rows[i]["description"] for i in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="synthetic collection size")
    parser.add_argument("--concepts", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument(
        "--sample", type=int, default=2000, help="trustworthiness sample (synthetic)"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="5,000 synthetic items")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    items = 5_000 if args.quick else args.items
    started, load_start = time.perf_counter(), load()

    from retrieval.backbone import load_backbone
    from retrieval.index import Index

    index = Index.load(SHAPES_INDEX)
    shapes = np.asarray(index.vectors, dtype=np.float32)
    print(f"Shapes: {shapes.shape}", flush=True)
    umap_first, umap_first_s = timed_layout(shapes, "umap")
    umap_second, umap_second_s = timed_layout(shapes, "umap")
    pca_runs = [timed_layout(shapes, "pca") for _ in range(3)]
    pca_shapes, pca_shapes_s = pca_runs[0][0], float(np.median([s for _, s in pca_runs]))
    shapes_trust = {
        "umap (1st call)": trust(shapes, umap_first),
        "umap (2nd call)": trust(shapes, umap_second),
        "pca": trust(shapes, pca_shapes),
    }
    stored_trust = None if index.layout is None else trust(shapes, index.layout)

    backbone = load_backbone(str(SHAPES_MODEL), device="cpu")
    texts = shapes_queries(index, args.queries, seed=0)
    query_vectors = backbone.encode_texts(texts)
    scores, found = index.search(query_vectors, K)
    chance = 1 - np.prod([(len(shapes) - K - i) / (len(shapes) - i) for i in range(K)])
    maps = [("this run's UMAP map (2nd call)", umap_second), ("this run's PCA map", pca_shapes)]
    if index.layout is not None:
        maps.insert(0, ("shipped UMAP map (`index.layout`)", np.asarray(index.layout)))
    placements = [[name, *placement(layout, scores, found)] for name, layout in maps]
    for row in placements:
        print("  placement", row, flush=True)

    print(f"Synthetic: {items:,} x {DIM} ({args.concepts} concepts)", flush=True)
    generate_start = time.perf_counter()
    synthetic, labels = clip_like_vectors(items, args.concepts, args.topics, seed=1)
    generate_s = time.perf_counter() - generate_start
    sample = np.random.default_rng(0).permutation(items)[: args.sample]
    big_pca_runs = [timed_layout(synthetic, "pca") for _ in range(3)]
    big_pca, big_pca_s = big_pca_runs[0][0], float(np.median([s for _, s in big_pca_runs]))
    # umap-learn finds neighbours exactly below 4,096 items and with NN-descent from there: that
    # path compiles on its first use, so a smaller synthetic run pays for it outside the timing
    _, warmup_s = timed_layout(synthetic[:WARMUP_ITEMS], "umap")
    big_umap, big_umap_s = timed_layout(synthetic, "umap")
    same = labels[sample][:, None] == labels[sample][None, :]
    np.fill_diagonal(same, False)
    cosines = synthetic[sample] @ synthetic[sample].T
    same_cos = float(cosines[same].mean())
    other_cos = float(cosines[labels[sample][:, None] != labels[sample][None, :]].mean())
    big_trust = {
        "pca": trust(synthetic[sample], big_pca[sample]),
        "umap": trust(synthetic[sample], big_umap[sample]),
    }

    total_min = (time.perf_counter() - started) / 60
    rows = [
        ["Shapes", "umap (1st call in process)", f"{len(shapes):,}", f"{umap_first_s:.2f}",
         shapes_trust["umap (1st call)"]],
        ["Shapes", "umap (2nd call)", f"{len(shapes):,}", f"{umap_second_s:.2f}",
         shapes_trust["umap (2nd call)"]],
        ["Shapes", "pca (median of 3)", f"{len(shapes):,}", f"{pca_shapes_s:.4f}", shapes_trust["pca"]],
        ["synthetic", "umap (warm-up: 1st NN-descent call)", f"{WARMUP_ITEMS:,}",
         f"{warmup_s:.1f}", "-"],
        ["synthetic", "umap", f"{items:,}", f"{big_umap_s:.1f}", big_trust["umap"]],
        ["synthetic", "pca (median of 3)", f"{items:,}", f"{big_pca_s:.2f}", big_trust["pca"]],
    ]  # fmt: skip
    table = markdown_table(
        ["collection", "method", "items", "seconds", f"trustworthiness (k={K})"], rows, digits=4
    )
    placement_table = markdown_table(
        [
            "map",
            f"queries with one of their top-{K} among the {K} map points nearest them",
            "median distance to top-1 / median map NN distance",
        ],
        placements,
        digits=3,
    )

    def ratio(a: float, b: float) -> str:
        if b <= 0:
            return "n/a"
        return f"{a / b:,.1f}x" if a / b < 10 else f"{a / b:,.0f}x"

    stored = (
        f" The shipped map (`index.layout`, UMAP) scores {stored_trust:.4f} on the same measure."
        if stored_trust is not None
        else ""
    )
    body = f"""
Layouts by `retrieval.layout.compute_layout(vectors, method)` (UMAP: umap-learn, cosine,
n_neighbors=15, init="pca", n_jobs=1; PCA: two leading singular directions), both on one core:
BLAS is held to 1 thread (threadpoolctl) while a layout runs, as UMAP's n_jobs=1 is, which also
keeps OpenBLAS thread contention on the busy cores out of the PCA times; "seconds" is the
layout time `compute_layout` reports (not its own sampled trustworthiness). Trustworthiness:
`sklearn.manifold.trustworthiness(n_neighbors={K}, metric="cosine")` on the unit-square positions
`compute_layout` returns (the stored map). **Shapes**: the shipped index, {len(shapes):,} x
{shapes.shape[1]}, trustworthiness over all {len(shapes):,} items; the first UMAP call pays for
importing umap and numba's compilation (less whatever numba had cached on disk from earlier
runs), the second is what a warm process pays.{stored} **Synthetic**: {items:,} normalised
{DIM}-d "CLIP-like" vectors from this script's `clip_like_vectors`, generated in
{generate_s:.0f} s: a shared mean direction + one of {args.concepts:,} concept directions (Zipf
popularity, p ~ 1/rank; {len(np.unique(labels)):,} concepts occur; concepts grouped in
{args.topics} topics) + small isotropic noise, normalised. In the sample, items of one concept
have mean cosine {same_cos:.2f}, other pairs {other_cos:.2f} (the cone CLIP embeddings sit in).
`bench.index_benchmark.clustered_vectors` is not reused: two items of one of its clusters have
cosine ~0 +- 0.18, unlike CLIP. The layout is computed over all {items:,} items, trustworthiness on a random
sample of {len(sample):,} of them (their positions in that full layout; trustworthiness is
quadratic in the items it looks at).

{table}

In this run UMAP took {ratio(big_umap_s, big_pca_s)} PCA's time at {items:,} items
({big_umap_s:.0f} s vs {big_pca_s:.1f} s) and {ratio(umap_second_s, pca_shapes_s)} on Shapes
(warm; {ratio(umap_first_s, pca_shapes_s)} for the first call); trustworthiness went from PCA's
{big_trust["pca"]:.4f} to UMAP's {big_trust["umap"]:.4f}
({big_trust["umap"] - big_trust["pca"]:+.4f}) on the synthetic collection and from
{shapes_trust["pca"]:.4f} to {shapes_trust["umap (2nd call)"]:.4f}
({shapes_trust["umap (2nd call)"] - shapes_trust["pca"]:+.4f}) on Shapes.

**Query placement** (Shapes): {len(texts)} text queries, the `description` of {len(texts)}
indexed Shapes images (fixed random sample from `precomputed/shapes/metadata.csv`), encoded by
the shipped Shapes CLIP (`precomputed/shapes-clip-small`, CPU), placed with
`retrieval.layout.place_query` from the index's exact top-{K} (`Index.search`). Map distances are
Euclidean in the unit square. By chance, {K} map points would hold one of {K} given items
{chance:.1%} of the time.

{placement_table}

{os.cpu_count()} cores shared with other jobs, {torch.get_num_threads()} torch threads: load avg
{load_start} at start, {load()} at the end (1/5/15 min); total {total_min:.1f} min.
"""
    if not args.no_write:
        write_section("map", "Collection map", body)
    print(body)


if __name__ == "__main__":
    main()
