"""Near-duplicate groups: copies of one image (re-encoded, resized, cropped, rotated, recoloured).

Two stages, because each alone fails in opposite ways:

1. Candidates from CLIP. Exact kNN over the normalised vectors, one block of queries at a time,
   keeps pairs with cosine >= `min_cosine`. Cheap, and every copy lands near its original, but so
   does every image that merely shows the same thing (in the Shapes world: the same scene
   rendered with another seed), which CLIP embeds almost identically.
2. Copy verification. A signature is the image at SIDE x SIDE pixels in Y, Cb, Cr, the two
   colour planes blurred (JPEG stores colour coarsely; without colour a yellow shape on light
   grey all but vanishes). For each candidate pair:
   - geometry: the best normalised cross-correlation of the two signatures inside a central
     disc, after warping one of them by each rotation in ANGLES and each scale in SCALES (the
     disc ignores the corners a rotation fills);
   - colour: at that warp, the least-squares global colour change (brightness and contrast on
     luma, saturation on chroma) and what it leaves unexplained.
   A copy is the same pixels under one geometric and one photometric change, so both fit almost
   exactly. A re-rendering moves, resizes and turns each object on its own and shifts each
   object's colour on its own, so no single change fits everything. Correlation alone could not
   tell a small object re-drawn almost in place from a copy; the colour residual can.
   A logistic model over this evidence (COPY_MODEL, fitted on the Shapes val split) turns it
   into the probability that the pair is a copy.

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
NEIGHBOURS = 30  # kNN candidates per item: with 10, copies inside a dense cluster of look-alikes
# found no link at all (Shapes val: 0.89 of copy pairs reachable; 30: 0.96)


@dataclass(frozen=True)
class DuplicateThresholds:
    min_cosine: float  # CLIP cosine for a pair to be a candidate
    min_copy_score: float  # copy probability for a candidate to count as a duplicate


# python -m bench.duplicates_benchmark (the val split; see BENCHMARKS.md "Near-duplicate groups")
CALIBRATED = DuplicateThresholds(min_cosine=0.5, min_copy_score=0.35)


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


def align_pairs(
    pairs: np.ndarray, signatures: np.ndarray, budget: int = VERIFY_BUDGET
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (i, j, ...): the best correlation in [-1, 1] of a warp of i with j, and that warp.

    Items are taken in blocks of similar pair count; each is warped once and its warps are
    multiplied with all its partners in one batched matrix product (`budget` caps the floats
    held per block)."""
    pairs = np.asarray(pairs)
    _check_signatures(signatures)
    scores, best = np.zeros(len(pairs), np.float32), np.zeros(len(pairs), np.int64)
    if not len(pairs):
        return scores, best
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
        best[rows] = products.argmax(axis=1)[slot, rank]
    return scores, best


def _check_signatures(signatures: np.ndarray) -> None:
    if signatures.ndim != 2 or signatures.shape[1] != SIGNATURE_LENGTH:
        raise BadInput(f"signatures must be (N, {SIGNATURE_LENGTH}), got {signatures.shape}")


# -- copy evidence -------------------------------------------------------------------------------
EVIDENCE = (
    "alignment",  # best warp's correlation: how well one geometric change lines the pixels up
    "unexplained",  # energy share left after the best photometric change (see _photometric_fit)
    "luma_gain",  # |log| of the brightness-contrast gain that change needs
    "chroma_gain",  # |log| of its saturation gain
    "luma_residual",  # what the change leaves, in grey levels (RMS)
    "chroma_residual",
    "cosine",  # CLIP similarity of the two items
)
GAIN_LIMIT = 5.0  # |log gain| cap: a flat image has no gain to measure
FIT_BLOCK = 4096  # pairs per photometric fit block (~30 MB of warped pixels)


def _best_warp_pixels(signatures: np.ndarray, items: np.ndarray, warps: np.ndarray):
    """(P, 3, M) disc pixels of each item under its own warp, in signature units (0..255)."""
    indices, weights = _warp_taps()
    per_warp = len(indices[0]) // (len(ANGLES) * len(SCALES))
    columns = warps[:, None] * per_warp + np.arange(per_warp)[None, :]
    flat = signatures[items].astype(np.float32)
    total = np.zeros(columns.shape, np.float32)
    for corner in range(4):
        taken = np.take_along_axis(flat, indices[corner][columns], axis=1)
        total += taken * weights[corner][columns]
    return total.reshape(len(items), 3, -1)


def _photometric_fit(moved: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(P, 5): unexplained share, |log| luma and chroma gains, luma and chroma RMS residuals.

    A copy's colours are one global change of the original's: brightness and contrast scale the
    luma around its mean (Y' = a Y + b) and, with saturation, the chroma around neutral grey
    (C' - 128 = g (C - 128), one g for both planes). Fit both by least squares and measure what
    is left: a re-rendering moves each object's and the background's colour on its own."""
    luma, luma_target = moved[:, 0], target[:, 0]
    luma = luma - luma.mean(axis=1, keepdims=True)
    luma_target = luma_target - luma_target.mean(axis=1, keepdims=True)
    luma_gain = _gain(luma, luma_target)
    chroma = moved[:, 1:].reshape(len(moved), -1) - 128.0
    chroma_target = target[:, 1:].reshape(len(target), -1) - 128.0
    chroma_gain = _gain(chroma, chroma_target)
    luma_left = luma_target - luma_gain[:, None] * luma
    chroma_left = chroma_target - chroma_gain[:, None] * chroma
    left = (luma_left**2).sum(axis=1) + (chroma_left**2).sum(axis=1)
    energy = (luma_target**2).sum(axis=1) + (chroma_target**2).sum(axis=1)
    return np.stack(
        [
            left / np.maximum(energy, 1e-6),
            _log_size(luma_gain),
            _log_size(chroma_gain),
            np.sqrt((luma_left**2).mean(axis=1)),
            np.sqrt((chroma_left**2).mean(axis=1)),
        ],
        axis=1,
    )


def _gain(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    return (source * target).sum(axis=1) / np.maximum((source * source).sum(axis=1), 1e-6)


def _log_size(gain: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(np.log(np.clip(gain, 1e-3, None))), GAIN_LIMIT)


def pair_evidence(pairs: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """(P, len(EVIDENCE)) float32 for candidate rows (i, j, cosine): what a copy decision rests on."""
    pairs = np.asarray(pairs, dtype=np.float64).reshape(-1, 3)
    alignment, warps = align_pairs(pairs, signatures)
    evidence = np.zeros((len(pairs), len(EVIDENCE)), np.float32)
    evidence[:, 0], evidence[:, -1] = alignment, pairs[:, 2]
    disc = _disc_mask().reshape(-1)
    for start in range(0, len(pairs), FIT_BLOCK):
        rows = slice(start, start + FIT_BLOCK)
        left, right = pairs[rows, 0].astype(np.int64), pairs[rows, 1].astype(np.int64)
        moved = _best_warp_pixels(signatures, left, warps[rows])
        target = signatures[right].reshape(len(right), 3, -1)[:, :, disc].astype(np.float32)
        evidence[rows, 1:-1] = _photometric_fit(moved, target)
    return evidence


@dataclass(frozen=True)
class CopyModel:
    """Logistic regression over standardised EVIDENCE: the probability that a pair is a copy.

    Fitted on the Shapes val split's candidate pairs by `python -m bench.duplicates_benchmark`,
    which prints a new COPY_MODEL; kept as numbers here so nothing is unpickled."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def probability(self, evidence: np.ndarray) -> np.ndarray:
        standard = (evidence - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = standard @ np.asarray(self.weights) + self.bias
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))).astype(np.float32)


COPY_MODEL = CopyModel(  # python -m bench.duplicates_benchmark (val split), see BENCHMARKS.md
    mean=(0.281641, 0.701235, 2.654313, 2.19408, 15.682978, 6.609041, 0.8664),
    scale=(0.41163, 0.338507, 2.042938, 2.014296, 10.914049, 3.678993, 0.099441),
    weights=(16.024953, -7.185329, -3.449559, -1.209797, -7.317128, -5.832036, -1.385072),
    bias=-58.840693,
)


def copy_scores(
    pairs: np.ndarray, signatures: np.ndarray, model: CopyModel = COPY_MODEL
) -> np.ndarray:
    """Probability in [0, 1] that each candidate row (i, j, cosine) is a pair of copies."""
    return model.probability(pair_evidence(pairs, signatures))


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


class CopyScorer:
    """Copy probabilities of item pairs, each computed once: grouping asks for pairs that the
    kNN candidates never offered. A cataloguer's "not duplicates" pair counts as 0."""

    def __init__(self, vectors, signatures, model: CopyModel = COPY_MODEL, excluded=None):
        self.vectors, self.signatures, self.model = vectors, signatures, model
        self.known = {tuple(sorted(pair)): 0.0 for pair in (excluded or ())}

    def add(self, candidates: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """Score candidate rows (i, j, cosine) (or take their given scores); returns them."""
        if scores is None:
            scores = copy_scores(candidates, self.signatures, self.model)
        pairs = [(int(i), int(j)) for i, j in candidates[:, :2]]
        for pair, score in zip(pairs, scores, strict=True):
            self.known.setdefault(pair, float(score))
        return np.array([self.known[pair] for pair in pairs], np.float32)

    def between(self, first: list[int], second: list[int]) -> np.ndarray:
        pairs = [(min(x, y), max(x, y)) for x in first for y in second]
        missing = sorted({pair for pair in pairs if pair not in self.known})
        if missing:
            rows = np.array([(i, j, float(self.vectors[i] @ self.vectors[j])) for i, j in missing])
            self.add(rows)
        return np.array([self.known[pair] for pair in pairs], np.float32)


def average_linkage(
    count: int, links: np.ndarray, scorer: CopyScorer, min_copy_score: float
) -> list[dict]:
    """Groups grown from the strongest link down: two groups join only when the average copy
    probability over all pairs between them reaches `min_copy_score`, so one stray link cannot
    merge two sets of copies of look-alike images (single linkage would)."""
    members = {item: [item] for item in range(count)}
    group_of, weakest = list(range(count)), {}
    for i, j, score in sorted(links, key=lambda link: -link[2]):
        first, second = group_of[int(i)], group_of[int(j)]
        if score < min_copy_score or first == second:
            continue
        average = float(scorer.between(members[first], members[second]).mean())
        if average < min_copy_score:
            continue
        for item in members[second]:
            group_of[item] = first
        members[first] += members.pop(second)
        weakest[first] = min(average, weakest.get(first, 1.0), weakest.pop(second, 1.0))
    groups = [(sorted(m), weakest[root]) for root, m in members.items() if len(m) >= 2]
    return [{"members": m, "score": score} for m, score in sorted(groups)]


def find_duplicates(
    vectors: np.ndarray,
    signatures: np.ndarray,
    thresholds: DuplicateThresholds = CALIBRATED,
    excluded: set[frozenset[int]] | None = None,
) -> list[dict]:
    """Groups of copies: {"members": sorted positions, "score": the weakest join inside}."""
    if len(vectors) != len(signatures):
        raise BadInput(f"{len(vectors)} vectors but {len(signatures)} signatures")
    candidates = candidate_pairs(vectors, thresholds.min_cosine, k=NEIGHBOURS)
    scorer = CopyScorer(vectors, signatures, excluded=excluded)
    scores = scorer.add(candidates)
    links = np.concatenate([candidates[:, :2], scores[:, None]], axis=1)
    return average_linkage(len(vectors), links, scorer, thresholds.min_copy_score)


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
