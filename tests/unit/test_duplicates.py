"""Near-duplicate groups: copies of a rendering are grouped, a re-rendering of its scene is not."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from retrieval.duplicates import (
    CALIBRATED,
    DuplicateThresholds,
    candidate_pairs,
    find_duplicates,
    group_pairs,
    signatures_of,
    verify_pairs,
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
    backbone = load_backbone("precomputed/shapes-clip-tiny", device="cpu")
    vectors = backbone.encode_images(images).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, signatures_of(_stored_thumbnail(image) for image in images)


def test_copies_are_grouped_with_their_original_but_a_rerendering_is_not(collection):
    vectors, signatures = collection
    assert np.dot(vectors[0], vectors[5]) > CALIBRATED.min_cosine  # CLIP alone would pair them
    groups = find_duplicates(vectors, signatures)
    assert [group["members"] for group in groups] == [[0, 1, 2, 3, 4]]
    assert CALIBRATED.min_copy_score <= groups[0]["score"] <= 1.0 + 1e-6


def test_copy_scores_rank_copies_above_the_rerendering(collection):
    _, signatures = collection
    pairs = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]])
    scores = verify_pairs(pairs, signatures)
    assert scores[:4].min() > scores[4]
    assert scores[4] < CALIBRATED.min_copy_score


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
    stricter = DuplicateThresholds(CALIBRATED.min_cosine, min_copy_score=1.01)
    assert find_duplicates(vectors, signatures, stricter) == []


def test_group_pairs_is_transitive_and_ordered():
    groups = group_pairs([(5, 6), (2, 1), (3, 2), (8, 5)], count=10)
    assert groups == [[1, 2, 3], [5, 6, 8]]
    assert group_pairs([], count=3) == []
    assert group_pairs([(0, 1), (1, 0)], count=2) == [[0, 1]]


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
