"""Near-duplicate pairs in the Shapes world: CLIP cosine vs perceptual hash vs CLIP + pixel check.

Per split (val calibrates, test measures; scenes drawn with `random_scene(rng, split)`, so the
splits share no scene): `--originals` renderings, five copies of each (JPEG q=30; resized to 50%;
centre crop 85% resized back; rotated uniformly in +-15 degrees, expand=False, corners filled
with the median border colour; brightness, contrast and saturation each scaled by 0.8-1.2),
one re-rendering of each original's scene with another seed (the hard negative: same
description, other pixels) and `--unrelated` further random scenes. A pair is positive when both
items belong to one copy group (an original and its copies); everything else is negative.

Like the app, CLIP embeds the item image and signatures / hashes come from the item's thumbnail
(`retrieval.images.thumbnail` to 256 px, JPEG quality 85 as `retrieval.embed` writes it).
Thresholds maximise val recall subject to val precision >= 0.95 (max val F1 if none reaches it).

    python -m bench.duplicates_benchmark                    # full run, writes BENCHMARKS.md
    python -m bench.duplicates_benchmark --quick --no-write # smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import time
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageEnhance
from sklearn.linear_model import LogisticRegression

from bench.report import write_section
from retrieval.backbone import load_backbone
from retrieval.duplicates import (
    NEIGHBOURS,
    SIGNATURE_LENGTH,
    CopyModel,
    CopyScorer,
    DuplicateThresholds,
    average_linkage,
    candidate_pairs,
    copy_scores,
    pair_evidence,
    signatures_of,
)
from retrieval.eval.report import markdown_table
from retrieval.images import thumbnail
from retrieval.shapes.world import describe, random_scene, render

MODEL = "precomputed/shapes-clip-small"
COPY_KINDS = ("jpeg30", "resize50", "crop85", "rotate15", "jitter20")
THUMB_SIZE, THUMB_QUALITY = 256, 85  # retrieval.config thumb_size, retrieval.embed's JPEG quality
TARGET_PRECISION = 0.95  # the target, on test
# Calibration asks val for more: at 300 originals a split's precision moves by 2-4 points from
# val to test (seen in the first run of this benchmark), so 0.95 on val is a coin toss on test.
CALIBRATION_PRECISION = 0.975
K = 10  # neighbours for the previous methods' rows


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def border_colour(image: Image.Image) -> tuple[int, ...]:
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    if kind == "jpeg30":
        return jpeg(image, 30)
    if kind == "resize50":
        return image.resize((width // 2, height // 2), Image.Resampling.BICUBIC)
    if kind == "crop85":
        w, h = round(width * 0.85), round(height * 0.85)
        left, top = (width - w) // 2, (height - h) // 2
        crop = image.crop((left, top, left + w, top + h))
        return crop.resize((width, height), Image.Resampling.BICUBIC)
    if kind == "rotate15":
        angle = float(rng.uniform(-15, 15))
        return image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=border_colour(image))
    if kind == "jitter20":
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(float(rng.uniform(0.8, 1.2)))
        return image
    raise ValueError(kind)


@dataclass
class Items:
    images: list[Image.Image]
    group: np.ndarray  # copy group per item, -1 for items outside any group
    scene: list[str]  # canonical description
    kind: list[str]  # original / copy kind / rerender / unrelated


def build_items(split: str, originals: int, unrelated: int, seed: int) -> Items:
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    images, group, scene, kind = [], [], [], []

    def add(image, g, s, k):
        images.append(image)
        group.append(g)
        scene.append(s)
        kind.append(k)

    for index in range(originals):
        drawn = random_scene(rng, split)
        original = render(drawn, int(rng.integers(2**31)))[0]
        add(original, index, describe(drawn), "original")
        for copy_kind in COPY_KINDS:
            add(make_copy(original, copy_kind, rng), index, describe(drawn), copy_kind)
        add(render(drawn, int(rng.integers(2**31)))[0], -1, describe(drawn), "rerender")
    for _ in range(unrelated):
        drawn = random_scene(rng, split)
        add(render(drawn, int(rng.integers(2**31)))[0], -1, describe(drawn), "unrelated")
    return Items(images, np.array(group), scene, kind)


def thumbnails(images: list[Image.Image]) -> list[Image.Image]:
    """What the index keeps per item: the image shrunk to <= 256 px, JPEG at quality 85."""
    return [jpeg(thumbnail(image, THUMB_SIZE), THUMB_QUALITY) for image in images]


@dataclass
class Prepared:
    items: Items
    vectors: np.ndarray
    signatures: np.ndarray
    hashes: np.ndarray  # (N, 64) bool phash bits


def prepare(split: str, args, backbone) -> Prepared:
    items = build_items(split, args.originals, args.unrelated, args.seed)
    vectors = np.concatenate(
        [
            backbone.encode_images(items.images[s : s + 256])
            for s in range(0, len(items.images), 256)
        ]
    ).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    thumbs = thumbnails(items.images)
    hashes = np.stack([imagehash.phash(t).hash.reshape(-1) for t in thumbs])
    return Prepared(items, vectors, signatures_of(thumbs), hashes)


def all_pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(count, k=1)


def truth(items: Items, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return (items.group[i] >= 0) & (items.group[i] == items.group[j])


def positives(items: Items) -> int:
    sizes = np.bincount(items.group[items.group >= 0])
    return int((sizes * (sizes - 1) // 2).sum())


def prf(tp: int, predicted: int, total: int) -> tuple[float, float, float]:
    precision = tp / predicted if predicted else 1.0
    recall = tp / total if total else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def choose(points: list[tuple[float, float, float, object]]):
    """(P, R, F1, threshold) -> the best: max recall at P >= target, else max F1."""
    good = [p for p in points if p[0] >= CALIBRATION_PRECISION]
    if good:
        return max(good, key=lambda p: (p[1], p[0]))
    return max(points, key=lambda p: p[2])


def sweep_scores(scores: np.ndarray, labels: np.ndarray, total: int) -> list:
    """Every cut of 'score >= t' as (P, R, F1, t), from one sort."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], np.cumsum(labels[order])
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]  # end of each tie run
    return [(*prf(int(hits[e]), e + 1, total), float(sorted_scores[e])) for e in last]


def evaluate_pairs(prep: Prepared, i, j) -> dict:
    """TP / FP counts and P, R, F1 of a predicted pair list, plus the re-rendering FPs."""
    items = prep.items
    labels = truth(items, i, j)
    same_scene = np.array(
        [items.scene[a] == items.scene[b] for a, b in zip(i, j, strict=True)], dtype=bool
    )
    tp = int(labels.sum())
    p, r, f = prf(tp, len(i), positives(items))
    return {
        "P": p,
        "R": r,
        "F1": f,
        "FP": len(i) - tp,
        "same-scene FP": int((same_scene & ~labels).sum()),
    }


def clip_scores(prep: Prepared):
    i, j = all_pairs(len(prep.vectors))
    return i, j, np.einsum("nd,nd->n", prep.vectors[i], prep.vectors[j])


def phash_scores(prep: Prepared):
    i, j = all_pairs(len(prep.hashes))
    packed = np.packbits(prep.hashes, axis=1)
    distance = np.unpackbits(packed[i] ^ packed[j], axis=1).sum(axis=1)
    return i, j, -distance.astype(np.float32)  # higher = more alike


def calibrate_single(prep: Prepared, scorer) -> float:
    i, j, scores = scorer(prep)
    return choose(sweep_scores(scores, truth(prep.items, i, j), positives(prep.items)))[3]


def apply_single(prep: Prepared, scorer, threshold: float) -> dict:
    i, j, scores = scorer(prep)
    keep = scores >= threshold
    return evaluate_pairs(prep, i[keep], j[keep])


def group_pairs(pairs: list[tuple[int, int]], count: int) -> list[list[int]]:
    """Single linkage (the previous grouping): connected components of size >= 2, each sorted."""
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


def group_implied(pairs: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    return group_implied_members(group_pairs([(int(a), int(b)) for a, b in pairs], count))


def group_implied_members(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every pair inside a group: what a person shown the groups is told are copies."""
    i, j = [], []
    for members in groups:
        a, b = np.triu_indices(len(members), k=1)
        i.append(np.array(members)[a])
        j.append(np.array(members)[b])
    if not i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(i), np.concatenate(j)


@dataclass
class Verified:
    candidates: np.ndarray  # (P, 3) i, j, cosine at the lowest cosine tried
    copy_scores: np.ndarray
    scorer: CopyScorer | None = None  # set: groups by average linkage (`find_duplicates`)


def verified(prep: Prepared, min_cosine: float, verifier, k: int = K) -> Verified:
    candidates = candidate_pairs(prep.vectors, min_cosine, k=k)
    return Verified(candidates, verifier(candidates, prep))


def shipped_verified(prep: Prepared, min_cosine: float, model: CopyModel) -> Verified:
    """`find_duplicates`' own stages: NEIGHBOURS candidates, copy model, average linkage."""
    candidates = candidate_pairs(prep.vectors, min_cosine, k=NEIGHBOURS)
    scorer = CopyScorer(prep.vectors, prep.signatures, model)
    return Verified(candidates, scorer.add(candidates), scorer)


def alignment_verifier(candidates, prep):
    """The previous method: the best warp's pixel correlation alone."""
    return pair_evidence(candidates, prep.signatures)[:, 0]


def fit_copy_model(prep: Prepared, min_cosine: float) -> CopyModel:
    """Logistic regression on the split's candidate pairs, labelled by the ground truth."""
    candidates = candidate_pairs(prep.vectors, min_cosine, k=NEIGHBOURS)
    evidence = pair_evidence(candidates, prep.signatures).astype(np.float64)
    labels = truth(prep.items, candidates[:, 0].astype(int), candidates[:, 1].astype(int))
    mean, scale = evidence.mean(axis=0), np.maximum(evidence.std(axis=0), 1e-6)
    fitted = LogisticRegression(C=10.0, max_iter=5000).fit((evidence - mean) / scale, labels)
    return CopyModel(
        mean=tuple(np.round(mean, 6).tolist()),
        scale=tuple(np.round(scale, 6).tolist()),
        weights=tuple(np.round(fitted.coef_[0], 6).tolist()),
        bias=round(float(fitted.intercept_[0]), 6),
    )


def model_verifier(model: CopyModel):
    def verify(candidates, prep):
        return copy_scores(candidates, prep.signatures, model)

    return verify


def phash_verifier(candidates, prep):
    packed = np.packbits(prep.hashes, axis=1)
    i, j = candidates[:, 0].astype(int), candidates[:, 1].astype(int)
    return 1 - np.unpackbits(packed[i] ^ packed[j], axis=1).sum(axis=1) / 64


def method_result(prep: Prepared, found: Verified, thresholds: DuplicateThresholds) -> dict:
    keep = (found.candidates[:, 2] >= thresholds.min_cosine) & (
        found.copy_scores >= thresholds.min_copy_score
    )
    if found.scorer is None:
        i, j = group_implied(found.candidates[keep, :2].astype(int), len(prep.vectors))
        return evaluate_pairs(prep, i, j)
    links = np.concatenate([found.candidates[keep, :2], found.copy_scores[keep, None]], axis=1)
    groups = average_linkage(len(prep.vectors), links, found.scorer, thresholds.min_copy_score)
    i, j = group_implied_members([group["members"] for group in groups])
    return evaluate_pairs(prep, i, j)


COSINE_GRID = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))
PROBABILITY_GRID = (*np.round(np.arange(0.05, 0.96, 0.05), 2), 0.97, 0.98, 0.99)


def calibrate_method(prep: Prepared, found: Verified) -> DuplicateThresholds:
    """Grid over (min_cosine, min_copy_score), scored on group-implied pairs."""
    scores = np.unique(np.quantile(found.copy_scores, np.linspace(0.5, 1.0, 301)))
    cosines = COSINE_GRID
    if found.scorer is not None:  # average linkage is slower: probabilities on a fixed grid
        scores, cosines = PROBABILITY_GRID, COSINE_GRID[:1]
    points = []
    for cosine in cosines:
        for score in scores:
            thresholds = DuplicateThresholds(float(cosine), float(score))
            result = method_result(prep, found, thresholds)
            points.append((result["P"], result["R"], result["F1"], thresholds))
    return choose(points)[3]


def clip_like_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """A shared mean direction + one of count/20 cluster centres + noise, normalised: CLIP-like
    (all cosines positive, tight neighbourhoods)."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(dim).astype(np.float32)
    centres = rng.standard_normal((max(1, count // 20), dim)).astype(np.float32)
    labels = rng.integers(0, len(centres), count)
    vectors = 3 * mean / np.linalg.norm(mean) + centres[labels] / np.sqrt(dim) * 1.5
    vectors += rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim) * 0.7
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def time_scale(count: int, min_cosine: float) -> dict:
    """Seconds for kNN candidates and for verifying every kNN pair (the worst case: no pair
    below the cosine threshold), and how many pairs the calibrated threshold keeps."""
    vectors = clip_like_vectors(count, 512, seed=5)
    signatures = np.random.default_rng(6).integers(0, 256, (count, SIGNATURE_LENGTH), np.uint8)
    start = time.perf_counter()
    candidates = candidate_pairs(vectors, -1.0, k=NEIGHBOURS)
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    copy_scores(candidates, signatures)
    verify_s = time.perf_counter() - start
    kept = int((candidates[:, 2] >= min_cosine).sum())
    return {
        "count": count,
        "pairs": len(candidates),
        "kept": kept,
        "knn_s": knn_s,
        "verify_s": verify_s,
    }


def load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--unrelated", type=int, default=300)
    parser.add_argument("--scale", type=int, default=100_000, help="vectors for the timing run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 originals, 10k timing vectors")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.originals, args.unrelated, args.scale = 60, 60, 10_000
    started, load_start = time.perf_counter(), load()
    backbone = load_backbone(MODEL, device="cpu")
    val, test = prepare("val", args, backbone), prepare("test", args, backbone)
    print(f"prepared {len(val.vectors)} + {len(test.vectors)} items", flush=True)

    rows, chosen = [], {}
    for name, scorer, unit in (
        ("CLIP cosine alone", clip_scores, "cosine >= {:.3f}"),
        ("phash alone", phash_scores, "Hamming <= {:.0f}"),
    ):
        threshold = calibrate_single(val, scorer)
        shown = unit.format(-threshold if "Hamming" in unit else threshold)
        rows.append([name, shown, *apply_single(test, scorer, threshold).values()])
        print(rows[-1], flush=True)
    lowest = float(min(COSINE_GRID))
    model = fit_copy_model(val, lowest)
    print(f"COPY_MODEL = {model!r}", flush=True)
    shipped = "CLIP kNN (k=30) + copy model, average linkage (shipped)"
    for name, verify in (
        ("CLIP kNN (k=10) + phash check", lambda p: verified(p, lowest, phash_verifier)),
        ("CLIP kNN (k=10) + pixel alignment (previous)", lambda p: verified(p, lowest, alignment_verifier)),
        ("CLIP kNN (k=30) + copy model, single linkage", lambda p: verified(p, lowest, model_verifier(model), NEIGHBOURS)),
        (shipped, lambda p: shipped_verified(p, lowest, model)),
    ):  # fmt: skip
        thresholds = calibrate_method(val, verify(val))
        chosen[name] = thresholds
        result = method_result(test, verify(test), thresholds)
        shown = f"cosine >= {thresholds.min_cosine:.2f}, copy >= {thresholds.min_copy_score:.3f}"
        rows.append([name, shown, *result.values()])
        print(rows[-1], flush=True)
    final = chosen[shipped]
    print(f"CALIBRATED = {final!r}", flush=True)
    timing = time_scale(args.scale, final.min_cosine)
    print(timing, flush=True)

    test_items = test.items
    table = markdown_table(
        ["method", "threshold (val)", "P", "R", "F1", "FP pairs", "of which same-scene"], rows
    )
    body = f"""
Per split: {args.originals} originals x {len(COPY_KINDS)} copies ({", ".join(COPY_KINDS)}),
{args.originals} same-scene re-renderings, {args.unrelated} unrelated scenes:
{len(test_items.images)} test items, {positives(test_items)} positive pairs among
{len(test_items.images) * (len(test_items.images) - 1) // 2:,}. Thresholds calibrated on val
(max val recall at val precision >= {CALIBRATION_PRECISION}, a margin over the
target {TARGET_PRECISION}), measured on test. Single-score methods are
scored on all pairs; the CLIP kNN methods on every pair inside a returned group (what a
cataloguer is told are copies). Single linkage joins two groups on any verified pair; average
linkage (`find_duplicates`) only when the mean copy probability over all pairs between them
reaches the threshold. The copy model is a logistic regression over `EVIDENCE` (alignment,
colour residual and gains, CLIP cosine), fitted on the val candidates. Rotation copies fill
their corners with the median border colour; signatures and hashes come from the 256 px JPEG
q{THUMB_QUALITY} thumbnail.

{table}

`candidate_pairs` + `copy_scores` on {timing["count"]:,} CLIP-like 512-d vectors (shared mean
direction + {timing["count"] // 20:,} cluster centres + noise) with random signatures: exact kNN
(k={NEIGHBOURS}, blocks of 4096 queries) {timing["knn_s"]:.1f} s for {timing["pairs"]:,} distinct pairs;
verifying all of them {timing["verify_s"]:.1f} s (the worst case: {timing["kept"]:,} of them reach
the calibrated cosine {final.min_cosine:.2f} on these synthetic vectors). 2 cores shared with
other jobs: load {load_start} at start, {load()} at the end; total {(time.perf_counter() - started) / 60:.1f} min.
"""
    print(body)
    if not args.no_write:
        write_section("duplicates", "Near-duplicate groups", body)


if __name__ == "__main__":
    main()
