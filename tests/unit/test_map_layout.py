"""The collection map: drawn once per index version, stored, reused; queries placed on it; the
score profile behind "Why these results"."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import index as index_module
from retrieval.config import SHAPES_INDEX_DIR
from retrieval.errors import BadInput
from retrieval.index import Index, build_index, update_index
from retrieval.layout import (
    AUTO_UMAP_MIN,
    chosen_method,
    compute_layout,
    layout_quality,
    place_query,
    score_profile,
    shown_points,
)
from tests.helpers import draw_scene, make_collection


def clusters(count: int, per: int, dim: int = 48, noise: float = 0.15, seed: int = 0):
    """`count` tight groups around random directions, normalised like CLIP vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, dim))
    labels = np.repeat(np.arange(count), per)
    vectors = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_pca_layout_fills_the_unit_square_and_keeps_far_groups_apart():
    vectors, labels = clusters(3, 40)
    layout, drawn = compute_layout(vectors, "pca")
    assert layout.shape == (120, 2) and layout.dtype == np.float32
    assert layout.min() == pytest.approx(0) and layout.max() == pytest.approx(1)
    assert drawn["method"] == "pca" and 0 < drawn["trustworthiness"] <= 1
    centres = np.stack([layout[labels == g].mean(axis=0) for g in range(3)])
    spread = max(np.linalg.norm(layout[labels == g] - centres[g], axis=1).mean() for g in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_umap_keeps_neighbours_together_where_pca_cannot():
    """Shapes scenes vary along many attributes at once: no 2-D projection keeps them apart."""
    vectors = np.asarray(Index.load(SHAPES_INDEX_DIR).vectors[:300])
    umap_layout, drawn = compute_layout(vectors, "umap")
    pca_layout, _ = compute_layout(vectors, "pca")
    assert drawn["method"] == "umap"
    assert layout_quality(vectors, umap_layout) > layout_quality(vectors, pca_layout) + 0.1


def test_auto_draws_umap_only_for_large_collections_and_names_unknown_methods():
    assert chosen_method("auto", AUTO_UMAP_MIN - 1) == "pca"
    assert chosen_method("auto", AUTO_UMAP_MIN) == "umap"
    assert chosen_method("umap", 10) == "umap"
    with pytest.raises(BadInput, match="unknown map method 'tsne'"):
        chosen_method("tsne", 10)


def test_tiny_collections_get_a_layout_too():
    one, _ = compute_layout(np.ones((1, 8), np.float32), "umap")
    assert one.tolist() == [[0.5, 0.5]]
    few, drawn = compute_layout(clusters(2, 3)[0], "umap")  # too few neighbours for UMAP
    assert few.shape == (6, 2) and drawn["method"] == "pca"


def test_a_query_lands_beside_its_closest_items_and_ignores_padding():
    layout = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.98, 1.0]], np.float32)
    x, y = place_query(layout, np.array([0.9, 0.5, 0.4, -1]), np.array([1, 0, 2, -1]))
    assert (x, y) == pytest.approx((1, 1))
    x, y = place_query(layout, np.array([0.5, 0.5]), np.array([1, 3]))  # a tie: halfway
    assert (x, y) == pytest.approx((0.99, 1))
    x, y = place_query(layout, np.array([0.5, 0.5]), np.array([0, 1]))  # far apart: not between
    assert (x, y) == pytest.approx((0, 0))
    with pytest.raises(BadInput):
        place_query(layout, np.array([-1.0]), np.array([-1]))


def test_score_profile_marks_the_cut_and_the_minimum():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.0, -0.1, -0.2, 0.05], np.float32)
    profile = score_profile(scores, k=3, min_score=0.05)
    assert profile["count"] == 8 and profile["k"] == 3
    assert profile["best"] == pytest.approx(0.9) and profile["top_k_score"] == pytest.approx(0.7)
    assert profile["above_min_score"] == 5 and profile["min_score"] == pytest.approx(0.05)
    assert sum(profile["histogram"]["counts"]) == 8
    assert len(profile["histogram"]["edges"]) == len(profile["histogram"]["counts"]) + 1
    assert score_profile(scores, k=50)["top_k_score"] == pytest.approx(-0.2)  # k past the end
    with pytest.raises(BadInput, match="empty"):
        score_profile(np.zeros(0), k=3)


def test_shown_points_are_capped_fixed_and_keep_the_marked_ones():
    assert shown_points(10, 20).tolist() == list(range(10))
    shown = shown_points(100_000, 3_000, keep=[99_999, 5])
    assert len(shown) <= 3_000 and {99_999, 5} <= set(shown.tolist())
    assert np.array_equal(shown, shown_points(100_000, 3_000, keep=[99_999, 5]))


@pytest.fixture
def built(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images")
    build_index(folder, tmp_path / "index", micro_backbone, progress=False)
    return folder, tmp_path / "index"


def test_the_map_is_stored_with_the_index_version_and_reused(built, monkeypatch):
    _, index_dir = built
    index = Index.load(index_dir)
    version = index_dir / "versions" / (index_dir / "CURRENT").read_text()
    assert np.array_equal(np.load(version / "map.npy"), index.layout)
    assert index.layout.shape == (8, 2) and index.manifest["map"]["method"] == "pca"

    def must_not_draw(*args, **kwargs):
        raise AssertionError("the map was drawn again for unchanged vectors")

    monkeypatch.setattr(index_module, "compute_layout", must_not_draw)
    tagged = index.update_metadata({"red-circle": {"tags": ["red"]}})
    assert np.array_equal(Index.load(index_dir).layout, index.layout)
    assert tagged.manifest["map"] == index.manifest["map"]


def test_new_vectors_get_a_new_map_and_redraw_changes_the_method(built, micro_backbone):
    folder, index_dir = built
    draw_scene("red", "circle", jitter=4).save(folder / "round" / "extra.png")
    report = update_index(index_dir, micro_backbone, progress=False)
    assert report.index.layout.shape == (9, 2)
    redrawn = report.index.redraw_map("umap")
    assert redrawn.manifest["map"]["requested"] == "umap"
    assert redrawn.manifest["map"]["method"] == "pca"  # 9 items: too few for UMAP, said so
    assert Index.load(index_dir).manifest["map"] == redrawn.manifest["map"]


def test_an_index_from_before_maps_loads_without_one(built):
    _, index_dir = built
    version = index_dir / "versions" / (index_dir / "CURRENT").read_text()
    (version / "map.npy").unlink()
    assert Index.load(index_dir).layout is None
