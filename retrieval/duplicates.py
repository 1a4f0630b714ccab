"""Near-duplicate groups: copies of one image (re-encoded, resized, cropped, rotated, recoloured).

Two stages, because each alone fails in opposite ways:

1. Candidates from CLIP. Exact kNN over the normalised vectors, one block of queries at a time,
   keeps pairs with cosine >= `min_cosine`. Cheap, and every copy lands near its original, but so
   does every image that merely shows the same thing (in the Shapes world: the same scene
   rendered with another seed), which CLIP embeds almost identically.
2. Pixel verification. A signature is the image at SIDE x SIDE pixels in Y, Cb, Cr, the two
   colour planes blurred (JPEG stores colour coarsely; without colour a yellow shape on light
   grey all but vanishes). A pair's copy score is the best normalised cross-correlation of the
   two signatures inside a central disc, after warping one of them by each rotation in ANGLES
   and each scale in SCALES. A copy is the same pixels under one global geometric and
   photometric change, so some warp lines it up almost exactly: per-plane mean removal and one
   joint norm cancel brightness, contrast and saturation, and the disc ignores the corners a
   rotation fills. A re-rendering moves, resizes and turns each object on its own and draws a
   new background, so no single warp fits everything. Its limit: one small object on a plain
   background re-drawn almost in place is, at 32 px, nearly the same picture (measured in
   BENCHMARKS.md).

Pairs a cataloguer marked "not duplicates" are dropped before grouping; groups are the connected
components of the remaining verified pairs.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from retrieval.errors import BadInput
from retrieval.index import Index, write_atomic

SIDE = 32  # signature side in pixels: thumbnails are >= 32 px, the Shapes objects stay visible
CHROMA_BLUR = 3.0  # px at SIDE: JPEG keeps colour at half resolution or less (and q=30 smears it)
CHANNEL_WEIGHTS = (1.0, 1.5, 1.5)  # Y, Cb, Cr: colour counts, else yellow on grey would vanish
ANGLES = tuple(range(-15, 16, 5))  # degrees: copies are turned by up to 15
SCALES = (0.85, 1.0, 1 / 0.85)  # an 85% centre crop zooms by 1 / 0.85
RADIUS = 0.84  # compared disc, in half-sides: its samples stay inside the frame at every warp
VERIFY_BUDGET = 16_000_000  # float32 values held per verification block (~64 MB, x3 in temporaries)
SIGNATURE_LENGTH = 3 * SIDE * SIDE


@dataclass(frozen=True)
class DuplicateThresholds:
    min_cosine: float  # CLIP cosine for a pair to be a candidate
    min_copy_score: float  # verified copy score for a candidate to count as a duplicate


# python -m bench.duplicates_benchmark (the val split; see BENCHMARKS.md "Near-duplicate groups")
CALIBRATED = DuplicateThresholds(min_cosine=0.5, min_copy_score=0.988)


def image_signature(image: Image.Image) -> np.ndarray:
    """(3 * SIDE * SIDE,) uint8: Y, Cb, Cr planes at SIDE x SIDE, the colour planes blurred.

    Small enough (3 KiB) to keep one per item; the same from the original or a thumbnail."""
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    luma, blue, red = small.convert("YCbCr").split()
    blur = ImageFilter.GaussianBlur(CHROMA_BLUR)
    planes = [luma, blue.filter(blur), red.filter(blur)]
    return np.concatenate([np.asarray(plane, dtype=np.uint8).reshape(-1) for plane in planes])


def signatures_of(images: Iterable[Image.Image]) -> np.ndarray:
    """(N, 3 * SIDE * SIDE) uint8, one row per image."""
    rows = [image_signature(image) for image in images]
    return np.stack(rows) if rows else np.zeros((0, SIGNATURE_LENGTH), np.uint8)


def _disc_mask() -> np.ndarray:
    """(SIDE, SIDE) bool: the pixels whose centres lie in the compared disc."""
    centres = (np.arange(SIDE) + 0.5) / SIDE * 2 - 1
    return centres[None, :] ** 2 + centres[:, None] ** 2 <= RADIUS**2


def _warp_taps() -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of every warp: flat signature positions and weights, both (4, W * 3 * M),
    ordered warp, plane, disc pixel. Warp (angle, scale) reads disc pixel p at scale * R(angle) p.
    """
    y, x = np.nonzero(_disc_mask())
    disc = np.stack([x, y], axis=1) + 0.5 - SIDE / 2  # pixels from the centre
    points = []
    for angle in ANGLES:
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        rotation = np.array([[cos, -sin], [sin, cos]])
        points += [scale * disc @ rotation.T for scale in SCALES]
    where = np.clip(np.concatenate(points) + SIDE / 2 - 0.5, 0, SIDE - 1)  # pixel-centre units
    low = np.minimum(np.floor(where).astype(np.int64), SIDE - 2)
    fx, fy = (where - low).astype(np.float32).T
    x0, y0 = low.T
    indices = np.stack(
        [y0 * SIDE + x0, y0 * SIDE + x0 + 1, (y0 + 1) * SIDE + x0, (y0 + 1) * SIDE + x0 + 1]
    )
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    warps, pixels = len(points), len(disc)
    planes = np.arange(3)[None, None, :, None] * SIDE * SIDE
    indices = indices.reshape(4, warps, 1, pixels) + planes
    weights = np.broadcast_to(weights.reshape(4, warps, 1, pixels), indices.shape)
    return indices.reshape(4, -1), np.ascontiguousarray(weights).reshape(4, -1)


def _standardise(planes: np.ndarray) -> np.ndarray:
    """(..., 3, M) -> each plane zero-mean and weighted, then flattened to unit norm over all
    planes together (brightness, contrast and saturation changes cancel; flat rows stay zero)."""
    planes -= planes.mean(axis=-1, keepdims=True)
    planes *= np.asarray(CHANNEL_WEIGHTS, np.float32)[:, None]
    planes = planes.reshape(*planes.shape[:-2], -1)
    planes /= np.maximum(np.linalg.norm(planes, axis=-1, keepdims=True), 1e-3)
    return planes


def _warped(signatures: np.ndarray, taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(N, W, 3 * M) standardised disc pixels of every warp of each signature."""
    indices, weights = taps
    flat = signatures.astype(np.float32)
    total = np.take(flat, indices[0], axis=1)
    total *= weights[0]
    for corner in range(1, 4):
        total += np.take(flat, indices[corner], axis=1) * weights[corner]
    warps = len(ANGLES) * len(SCALES)
    return _standardise(total.reshape(len(signatures), warps, 3, -1))


def _targets(signatures: np.ndarray) -> np.ndarray:
    """(N, 3 * M) standardised disc pixels, unwarped: what the warps of the other side must fit."""
    planes = signatures.reshape(len(signatures), 3, -1)[:, :, _disc_mask().reshape(-1)]
    return _standardise(planes.astype(np.float32))


def verify_pairs(
    pairs: np.ndarray, signatures: np.ndarray, budget: int = VERIFY_BUDGET
) -> np.ndarray:
    """Copy score in [-1, 1] per pair (i, j, ...): the best correlation of a warp of i with j.

    Items are taken in blocks of similar pair count; each is warped once and its warps are
    multiplied with all its partners in one batched matrix product (`budget` caps the floats
    held per block)."""
    pairs = np.asarray(pairs)
    if signatures.ndim != 2 or signatures.shape[1] != SIGNATURE_LENGTH:
        raise BadInput(f"signatures must be (N, {SIGNATURE_LENGTH}), got {signatures.shape}")
    scores = np.zeros(len(pairs), np.float32)
    if not len(pairs):
        return scores
    left, right = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    order = np.argsort(left, kind="stable")
    items, starts, counts = np.unique(left[order], return_index=True, return_counts=True)
    by_count = np.argsort(counts, kind="stable")
    taps, width = _warp_taps(), 3 * int(_disc_mask().sum())
    warps, done = len(ANGLES) * len(SCALES), 0
    while done < len(items):
        most = int(counts[by_count[done]])
        size = max(1, budget // (width * (warps + most)))
        block = by_count[done : done + size]
        done += len(block)
        most = int(counts[block].max())
        slot = np.repeat(np.arange(len(block)), counts[block])
        rank = np.arange(len(slot)) - np.repeat(
            np.cumsum(counts[block]) - counts[block], counts[block]
        )
        rows = order[starts[block][slot] + rank]
        partners = np.zeros((len(block), most, width), np.float32)
        partners[slot, rank] = _targets(signatures[right[rows]])
        products = np.matmul(_warped(signatures[items[block]], taps), partners.transpose(0, 2, 1))
        scores[rows] = products.max(axis=1)[slot, rank]
    return scores


def candidate_pairs(
    vectors: np.ndarray, min_cosine: float, k: int = 10, block: int = 4096
) -> np.ndarray:
    """(P, 3) float64 rows (i, j, cosine), i < j, each pair once: the k nearest neighbours of every
    item with cosine >= min_cosine, by exact search one block of queries at a time."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    if count < 2 or k < 1:
        return np.zeros((0, 3))
    neighbours = min(k + 1, count)  # +1: an item finds itself
    found = []
    for start in range(0, count, block):
        sims, ids = faiss.knn(
            vectors[start : start + block], vectors, neighbours, faiss.METRIC_INNER_PRODUCT
        )
        queries = np.arange(start, start + len(ids))[:, None].repeat(neighbours, axis=1)
        keep = (ids >= 0) & (ids != queries) & (sims >= min_cosine)
        found.append(np.stack([queries[keep], ids[keep], sims[keep]], axis=1))
    rows = np.concatenate(found)
    low, high = np.minimum(rows[:, 0], rows[:, 1]), np.maximum(rows[:, 0], rows[:, 1])
    _, first = np.unique(low * count + high, return_index=True)  # sorted by (i, j)
    return np.stack([low[first], high[first], rows[first, 2]], axis=1)


def group_pairs(pairs: list[tuple[int, int]], count: int) -> list[list[int]]:
    """Connected components of size >= 2 (union-find), each sorted, ordered by first member."""
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for item in range(count):
        groups.setdefault(root(item), []).append(item)
    return sorted((g for g in groups.values() if len(g) >= 2), key=lambda g: g[0])


def find_duplicates(
    vectors: np.ndarray,
    signatures: np.ndarray,
    thresholds: DuplicateThresholds = CALIBRATED,
    excluded: set[frozenset[int]] | None = None,
) -> list[dict]:
    """Groups of copies: {"members": sorted positions, "score": weakest verified pair inside}."""
    if len(vectors) != len(signatures):
        raise BadInput(f"{len(vectors)} vectors but {len(signatures)} signatures")
    candidates = candidate_pairs(vectors, thresholds.min_cosine)
    scores = verify_pairs(candidates, signatures)
    kept = [
        (int(i), int(j), float(score))
        for (i, j, _), score in zip(candidates, scores, strict=True)
        if score >= thresholds.min_copy_score
        and frozenset((int(i), int(j))) not in (excluded or ())
    ]
    groups = group_pairs([(i, j) for i, j, _ in kept], len(vectors))
    group_of = {member: index for index, group in enumerate(groups) for member in group}
    weakest = [1.0] * len(groups)
    for i, _, score in kept:
        weakest[group_of[i]] = min(weakest[group_of[i]], score)
    return [{"members": g, "score": s} for g, s in zip(groups, weakest, strict=True)]


# -- a collection's duplicates -----------------------------------------------------------------
SIGNATURES_FILE = "signatures.npy"  # in the index version: derived from its thumbnails once
DECISIONS_FILE = "duplicate_decisions.json"  # beside the versions: survives every update


def index_signatures(index: Index, progress: bool = False) -> np.ndarray:
    """Every item's signature, from its thumbnail; computed on first use, then read back."""
    cached = index.version_dir() / SIGNATURES_FILE
    if cached.is_file():
        signatures = np.load(cached)
        if signatures.shape == (len(index), SIGNATURE_LENGTH):
            return signatures
    signatures = np.zeros((len(index), SIGNATURE_LENGTH), np.uint8)
    for position, item in enumerate(tqdm(index.items, desc="signatures", disable=not progress)):
        with Image.open(index.thumb_path(item["id"])) as thumbnail:
            signatures[position] = image_signature(thumbnail)
    buffer = io.BytesIO()
    np.save(buffer, signatures)
    write_atomic(cached, buffer.getvalue())
    return signatures


def load_decisions(index_dir: Path) -> list[list[str]]:
    """Item-id groups a cataloguer marked "not duplicates"."""
    path = Path(index_dir) / DECISIONS_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("not_duplicates", [])


def mark_not_duplicates(index: Index, ids: list[str]) -> list[list[str]]:
    """Keep the decision that these items are not copies of one another; returns all decisions."""
    ids = sorted(dict.fromkeys(str(item_id).strip() for item_id in ids if str(item_id).strip()))
    if len(ids) < 2:
        raise BadInput("name at least two items that are not duplicates of one another")
    for item_id in ids:
        index.position(item_id)  # an unknown id is a clear error, not a silent no-op
    decisions = load_decisions(index.directory)
    if ids not in decisions:
        decisions.append(ids)
    body = json.dumps({"not_duplicates": decisions}, indent=1, ensure_ascii=False)
    write_atomic(index.directory / DECISIONS_FILE, body.encode())
    return decisions


def excluded_pairs(index: Index, decisions: list[list[str]]) -> set[frozenset[int]]:
    """Every pair inside a "not duplicates" decision, as positions (ids gone since are skipped)."""
    pairs = set()
    for ids in decisions:
        known = [index.position(i) for i in ids if i in index]
        pairs |= {frozenset((a, b)) for a, b in itertools.combinations(known, 2)}
    return pairs


def collection_duplicates(
    index: Index,
    thresholds: DuplicateThresholds = CALIBRATED,
    decisions: list[list[str]] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Groups of copies in a collection, by item id, strongest first, cataloguers' decisions
    applied (their own, or those saved beside the index)."""
    decisions = load_decisions(index.directory) if decisions is None else decisions
    groups = find_duplicates(
        np.asarray(index.vectors, np.float32),
        index_signatures(index, progress),
        thresholds,
        excluded_pairs(index, decisions),
    )
    named = [
        {"ids": [index.items[p]["id"] for p in group["members"]], "score": round(group["score"], 4)}
        for group in groups
    ]
    return sorted(named, key=lambda group: (-group["score"], group["ids"]))
