"""The collection map: a 2-D layout of the embeddings, and where a query lands in it.

The layout is computed when an index version is written and stored beside its vectors
(`map.npy`), so the Map tab and the API only read it. UMAP keeps each item's neighbours beside
it far better than PCA (BENCHMARKS.md, "Collection map"), but its first run in a process spends
30 s compiling (75 s more from 4,096 items, where it switches to approximate neighbours), so
"auto" uses it only from AUTO_UMAP_MIN items, where embedding the images takes far longer
anyway; smaller collections get PCA at once, and `python -m retrieval map` upgrades any index.

A query has no layout of its own: it is placed at the similarity-weighted mean of its top
results around the best one, so it lands among its own results whatever method drew the map.
"""

from __future__ import annotations

import time

import numpy as np

from retrieval.errors import BadInput

METHODS = ("auto", "umap", "pca")
AUTO_UMAP_MIN = 5_000
QUALITY_SAMPLE = 1_000  # trustworthiness is quadratic in the items it looks at
PLACE_NEIGHBOURS = 10
PLACE_TEMPERATURE = 0.02  # weights exp((s - s_best) / T): the closest items pull hardest
PLACE_RADIUS = 0.05  # of the unit-square map: the best result's neighbourhood


def chosen_method(method: str, count: int) -> str:
    if method not in METHODS:
        raise BadInput(f"unknown map method {method!r}; choose one of {METHODS}")
    if method == "auto":
        return "umap" if count >= AUTO_UMAP_MIN else "pca"
    return method


def compute_layout(
    vectors: np.ndarray, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, dict]:
    """(positions scaled into [0, 1]², what was done): the map of one index version."""
    vectors = np.asarray(vectors, dtype=np.float32)
    used = chosen_method(method, len(vectors))
    if len(vectors) < 2:  # nothing to lay out: one item sits in the middle
        return np.full((len(vectors), 2), 0.5, np.float32), {"method": "pca", "seconds": 0.0}
    started = time.perf_counter()
    if used == "umap" and len(vectors) > PLACE_NEIGHBOURS + 2:
        positions = umap_layout(vectors, seed)
    else:
        used, positions = "pca", pca_layout(vectors)
    seconds = time.perf_counter() - started
    info = {
        "method": used,
        "seconds": round(seconds, 3),
        "trustworthiness": layout_quality(vectors, positions, seed),
    }
    return _unit_square(positions), info


def pca_layout(vectors: np.ndarray) -> np.ndarray:
    """The two directions of largest variance: instant, and linear, so distances stay honest."""
    centred = vectors - vectors.mean(axis=0)
    _, directions = np.linalg.eigh(centred.T @ centred)  # d x d: cheap for any item count
    return (centred @ directions[:, ::-1][:, :2]).astype(np.float32)


def umap_layout(vectors: np.ndarray, seed: int) -> np.ndarray:
    import umap  # imported here: it compiles on first use, and serving never needs it

    reducer = umap.UMAP(
        n_neighbors=15, metric="cosine", init="pca", random_state=seed, n_jobs=1, min_dist=0.1
    )
    return reducer.fit_transform(vectors).astype(np.float32)


def layout_quality(vectors: np.ndarray, positions: np.ndarray, seed: int = 0) -> float | None:
    """Trustworthiness (k=10) on a sample: 1.0 when every map neighbour is a true neighbour."""
    if len(vectors) < 2 * PLACE_NEIGHBOURS + 2:
        return None
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(seed)
    sample = rng.permutation(len(vectors))[:QUALITY_SAMPLE]
    score = trustworthiness(
        vectors[sample], positions[sample], n_neighbors=PLACE_NEIGHBOURS, metric="cosine"
    )
    return round(float(score), 4)


def _unit_square(positions: np.ndarray) -> np.ndarray:
    low, high = positions.min(axis=0), positions.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((positions - low) / span).astype(np.float32)


def place_query(
    layout: np.ndarray, scores: np.ndarray, positions: np.ndarray
) -> tuple[float, float]:
    """The query's map position, from its top (scores, positions) in the index.

    Only top results near the best one on the map count: top results from two distant regions
    would otherwise average into the empty space between them."""
    scores, positions = (
        np.asarray(scores)[:PLACE_NEIGHBOURS],
        np.asarray(positions)[:PLACE_NEIGHBOURS],
    )
    found = positions >= 0  # an ANN index pads a short answer with -1
    scores, positions = scores[found], positions[found]
    if len(positions) == 0:
        raise BadInput("the query has no neighbours to place it among")
    best = np.argmax(scores)
    near = np.linalg.norm(layout[positions] - layout[positions[best]], axis=1) <= PLACE_RADIUS
    scores, points = scores[near], layout[positions[near]]
    weights = np.exp((scores - scores.max()) / PLACE_TEMPERATURE)
    x, y = (points * weights[:, None]).sum(axis=0) / weights.sum()
    return float(x), float(y)


def shown_points(count: int, limit: int, keep=(), seed: int = 0) -> np.ndarray:
    """At most `limit` positions for a browser to draw (a fixed sample), always with `keep`."""
    keep = np.unique(np.asarray(list(keep), dtype=np.int64))
    if count <= limit:
        return np.arange(count)
    sample = np.random.default_rng(seed).permutation(count)[: max(0, limit - len(keep))]
    return np.union1d(sample, keep)


def score_profile(
    scores: np.ndarray, k: int, min_score: float | None = None, bins: int = 30
) -> dict:
    """How a query's similarity falls over the whole collection: the histogram, the score at the
    top-k cut and at `min_score`, so a person sees how far the first results stand out."""
    scores = np.asarray(scores, np.float32)
    if len(scores) == 0:
        raise BadInput("the collection is empty: there are no scores to show")
    ranked = np.sort(scores)[::-1]
    counts, edges = np.histogram(scores, bins=bins)
    shown = int(min(k, len(ranked)))
    return {
        "count": int(len(scores)),
        "best": float(ranked[0]),
        "median": float(np.median(scores)),
        "spread": float(scores.std()),
        "k": shown,
        "top_k_score": float(ranked[shown - 1]),
        "min_score": None if min_score is None else float(min_score),
        "above_min_score": None if min_score is None else int((scores >= min_score).sum()),
        "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()},
    }
