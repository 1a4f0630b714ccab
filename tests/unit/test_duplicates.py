"""Near-duplicate groups: copies of a rendering are grouped, a re-rendering of its scene is not."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from retrieval.duplicates import (
    CALIBRATED,
    EVIDENCE,
    DuplicateThresholds,
    _photometric_fit,
    average_linkage,
    candidate_pairs,
    copy_scores,
    find_duplicates,
    pair_evidence,
    signatures_of,
)
from retrieval.images import thumbnail
from retrieval.shapes.world import ShapeObject, make_scene, render
from tests.helpers import centre_crop, jpeg, recoloured

SCENE = make_scene(
    [
        ShapeObject("left", "triangle", "blue", "large"),
        ShapeObject("top", "star", "red", "small"),
        ShapeObject("right", "square", "green", "large"),
    ]
)
OTHER = make_scene([ShapeObject("centre", "circle", "yellow", "large")])


def _stored_thumbnail(image: Image.Image) -> Image.Image:
    """As the index keeps it: <= 256 px, JPEG."""
    return jpeg(thumbnail(image, 256), 85)


@pytest.fixture(scope="module")
def collection():
    """0: original, 1-4: copies (JPEG q30, rotated 10 deg, cropped 85%, recoloured),
    5: the same scene rendered with another seed, 6: another scene."""
    from retrieval.backbone import load_backbone

    original = render(SCENE, 11)[0]
    images = [
        original,
        jpeg(original, 30),
        original.rotate(10, Image.Resampling.BICUBIC, fillcolor=original.getpixel((0, 0))),
        centre_crop(original, 0.85),
        recoloured(original),
        render(SCENE, 12)[0],
        render(OTHER, 13)[0],
    ]
    backbone = load_backbone("precomputed/shapes-clip-small", device="cpu")
    vectors = backbone.encode_images(images).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, signatures_of(_stored_thumbnail(image) for image in images)


def test_copies_are_grouped_with_their_original_but_a_rerendering_is_not(collection):
    vectors, signatures = collection
    assert np.dot(vectors[0], vectors[5]) > CALIBRATED.min_cosine  # CLIP alone would pair them
    groups = find_duplicates(vectors, signatures)
    assert [group["members"] for group in groups] == [[0, 1, 2, 3, 4]]
    assert CALIBRATED.min_copy_score <= groups[0]["score"] <= 1.0 + 1e-6


def _with_cosines(vectors: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([(i, j, float(vectors[i] @ vectors[j])) for i, j in pairs])


def test_copy_scores_rank_copies_above_the_rerendering(collection):
    vectors, signatures = collection
    scores = copy_scores(
        _with_cosines(vectors, [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]), signatures
    )
    assert scores[:4].min() >= CALIBRATED.min_copy_score
    assert scores[4] < CALIBRATED.min_copy_score
    assert scores[:4].min() > scores[4]


def test_a_rerendering_leaves_colour_that_no_global_change_explains(collection):
    vectors, signatures = collection
    evidence = pair_evidence(_with_cosines(vectors, [(0, 4), (0, 5)]), signatures)
    unexplained = evidence[:, EVIDENCE.index("unexplained")]
    assert unexplained[0] < 0.5 * unexplained[1]  # the recoloured copy vs the re-rendering


def test_photometric_fit_recovers_a_global_colour_change():
    rng = np.random.default_rng(0)
    moved = rng.uniform(40, 220, size=(1, 3, 200)).astype(np.float32)
    target = moved.copy()
    target[:, 0] = 1.2 * moved[:, 0] + 9.0  # brightness and contrast: luma gain and offset
    target[:, 1:] = 0.8 * (moved[:, 1:] - 128.0) + 128.0  # saturation: chroma gain around grey
    unexplained, luma_gain, chroma_gain, luma_left, chroma_left = _photometric_fit(moved, target)[0]
    assert unexplained < 1e-6 and luma_left < 1e-3 and chroma_left < 1e-3
    assert luma_gain == pytest.approx(np.log(1.2), abs=1e-4)
    assert chroma_gain == pytest.approx(abs(np.log(0.8)), abs=1e-4)
    shifted = target.copy()
    shifted[:, 1, :100] += 12.0  # one region's colour moved on its own, as a re-rendering does
    assert _photometric_fit(moved, shifted)[0, 0] > 0.005


def test_excluded_pairs_are_dropped_before_grouping(collection):
    vectors, signatures = collection
    apart = {frozenset((1, other)) for other in (0, 2, 3, 4)}
    groups = find_duplicates(vectors, signatures, excluded=apart)
    assert [group["members"] for group in groups] == [[0, 2, 3, 4]]
    one_link = find_duplicates(vectors, signatures, excluded={frozenset((0, 1))})
    assert [group["members"] for group in one_link] == [[0, 1, 2, 3, 4]]  # still linked via 2-4


def test_calibrated_thresholds_are_the_default(collection):
    vectors, signatures = collection
    default = inspect.signature(find_duplicates).parameters["thresholds"].default
    assert default is CALIBRATED
    assert find_duplicates(vectors, signatures) == find_duplicates(vectors, signatures, CALIBRATED)
    stricter = DuplicateThresholds(CALIBRATED.min_cosine, min_copy_score=1.0 + 1e-6)
    assert find_duplicates(vectors, signatures, stricter) == []


class _TableScorer:
    """Copy probabilities from a table: the grouping rule on its own, without images."""

    def __init__(self, table: dict[tuple[int, int], float]):
        self.table = table

    def between(self, first, second):
        return np.array(
            [self.table.get((min(x, y), max(x, y)), 0.1) for x in first for y in second]
        )


def test_one_stray_link_does_not_merge_two_groups_of_copies():
    table = {(0, 1): 0.9, (0, 2): 0.9, (1, 2): 0.9, (3, 4): 0.9, (2, 3): 0.8}
    links = np.array([(i, j, score) for (i, j), score in table.items()])
    groups = average_linkage(6, links, _TableScorer(table), min_copy_score=0.5)
    assert [group["members"] for group in groups] == [[0, 1, 2], [3, 4]]
    assert [group["score"] for group in groups] == pytest.approx([0.9, 0.9])
    table[(1, 3)] = table[(0, 3)] = table[(0, 4)] = table[(1, 4)] = table[(2, 4)] = 0.8
    merged = average_linkage(6, links, _TableScorer(table), min_copy_score=0.5)
    assert [group["members"] for group in merged] == [[0, 1, 2, 3, 4]]
    assert merged[0]["score"] == pytest.approx(0.8)


def _brute_force(vectors: np.ndarray, min_cosine: float, k: int) -> dict:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    found = {}
    for i, row in enumerate(sims):
        for j in np.argsort(-row)[:k]:
            if row[j] >= min_cosine:
                found[(min(i, int(j)), max(i, int(j)))] = float(row[j])
    return found


@pytest.mark.parametrize("block", [7, 40, 4096])
def test_candidate_pairs_match_brute_force_across_blocks(block):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = candidate_pairs(vectors, min_cosine=0.1, k=4, block=block)
    expected = _brute_force(vectors, 0.1, 4)
    assert [(int(i), int(j)) for i, j, _ in rows] == sorted(expected)
    assert np.allclose(rows[:, 2], [expected[key] for key in sorted(expected)], atol=1e-5)
    assert (rows[:, 0] < rows[:, 1]).all()
