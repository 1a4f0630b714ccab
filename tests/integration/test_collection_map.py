"""The collection map and "Why these results" on the shipped Shapes collection, through the REST
API and the UI's functions: a query lands among its own results, the top results are the search's
own, the score profile agrees with the hits, and a composed hit's part ranks are the ranks each
part alone gives."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from retrieval.catalog import Catalog
from retrieval.config import SHAPES_INDEX_DIR
from retrieval.errors import BadInput
from retrieval.index import Index
from webapp import overview
from webapp.ui import collection_map, why


def nearest_on_map(layout: np.ndarray, point: dict, count: int) -> set[int]:
    distances = np.linalg.norm(layout - np.array([point["x"], point["y"]]), axis=1)
    return set(np.argsort(distances)[:count].tolist())


def test_a_query_lands_among_its_own_top_results(shapes):
    """For scene descriptions, the placed point's 10 nearest map points hold one of its top 10."""
    layout, searcher = shapes.index.layout, shapes.searcher
    texts = sorted({item["title"] for item in shapes.index.items})[::8]
    inside, chance = 0, 0
    rng = np.random.default_rng(0)
    for text in texts:
        vector = searcher.text_vector(text)[0]
        top = set(shapes.index.search(vector, 10)[1][0].tolist())
        point = searcher.map_position(vector)
        inside += bool(nearest_on_map(layout, point, 10) & top)
        random_point = dict(zip("xy", rng.random(2), strict=True))
        chance += bool(nearest_on_map(layout, random_point, 10) & top)
    assert inside >= 0.95 * len(texts), f"{inside}/{len(texts)} queries landed among their results"
    assert chance <= 0.3 * len(texts)  # a random spot rarely does: the check can fail


def test_the_map_api_serves_the_stored_layout_and_places_a_text(api, shapes):
    body = api.get("/api/collections/shapes/map").json()
    assert body["count"] == 1024 and body["method"] == "umap" and body["trustworthiness"] > 0.95
    by_id = {point["id"]: point for point in body["points"]}
    assert len(by_id) == 1024
    first = shapes.index.items[0]["id"]
    assert by_id[first]["x"] == pytest.approx(float(shapes.index.layout[0, 0]), abs=1e-6)
    placed = api.get("/api/collections/shapes/map", params={"q": "a large red circle"}).json()
    search = api.get(
        "/api/collections/shapes/search/text", params={"q": "a large red circle", "k": 12}
    ).json()
    assert [item["id"] for item in placed["top"]] == [hit["id"] for hit in search["hits"]]
    assert placed["query"]["x"] == pytest.approx(search["map_position"]["x"])
    marked = {p["id"] for p in placed["points"] if p["group"] == overview.TOP}
    assert marked == {hit["id"] for hit in search["hits"]}


def test_the_map_api_samples_big_maps_and_names_a_wrong_field(api):
    sampled = api.get("/api/collections/shapes/map", params={"limit": 100, "q": "a blue star"})
    points = sampled.json()["points"]
    assert len(points) <= 100 and sum(p["group"] == overview.TOP for p in points) == 12
    coloured = api.get("/api/collections/shapes/map", params={"colour_by": "role"}).json()
    assert {"reference", "variant"} <= {p["group"] for p in coloured["points"]}
    wrong = api.get("/api/collections/shapes/map", params={"colour_by": "artist"})
    assert wrong.status_code == 400 and "cannot colour by 'artist'" in wrong.json()["message"]


def test_every_search_answers_why_with_its_score_profile(api):
    body = api.get(
        "/api/collections/shapes/search/text",
        params={"q": "a small green square", "k": 5, "min_score": 0.3},
    ).json()
    profile, scores = body["profile"], [hit["score"] for hit in body["hits"]]
    assert profile["count"] == 1024 and profile["k"] == 5
    assert profile["best"] == pytest.approx(scores[0], abs=1e-4)
    assert profile["top_k_score"] == pytest.approx(scores[-1], abs=1e-4)
    assert profile["above_min_score"] >= len(scores) and profile["min_score"] == 0.3
    assert profile["best"] > profile["median"] + 2 * profile["spread"]
    assert 0 <= body["map_position"]["x"] <= 1 and 0 <= body["map_position"]["y"] <= 1


def test_composed_hits_carry_each_parts_own_rank(api, shapes):
    reference = shapes.index.items[3]["id"]
    body = api.post(
        "/api/collections/shapes/search/composed",
        data={"item_id": reference, "text": "make it blue", "method": "combiner", "k": 8},
    ).json()
    ranks = {row["id"]: row for row in body["part_ranks"]}
    assert list(ranks) == [hit["id"] for hit in body["hits"]]
    by_text = shapes.searcher.text("make it blue", k=200).hits
    text_rank = {hit.id: hit.rank for hit in by_text}
    by_image = shapes.searcher.similar(reference, k=200).hits
    image_rank = {hit.id: hit.rank + 1 for hit in by_image}  # the reference itself ranks first
    for item_id, row in ranks.items():
        if item_id in text_rank:
            assert row["text_rank"] == text_rank[item_id]
        if item_id in image_rank:
            assert row["reference_rank"] == image_rank[item_id]
    assert any(item_id in text_rank or item_id in image_rank for item_id in ranks)


def test_the_ui_explains_results_in_words_a_plot_and_part_ranks(shapes):
    hits = [{"id": h.id, "rank": h.rank, "title": "t", "score": h.score}
            for h in shapes.searcher.text("a red circle", k=12).hits]  # fmt: skip
    plot, sentence, parts = why.explained(shapes, {"type": "text", "text": "a red circle"}, hits)
    assert "The top 12 of 1024 items score" in sentence and parts["visible"] is False
    assert plot.axes[0].get_xlabel() == "similarity to the query"
    reference = shapes.index.items[3]["id"]
    query = {"type": "vector", "vector": shapes.searcher.composed_vector(reference, "make it blue")[0],
             "parts": {"item": reference, "image": None, "text": "make it blue"}}  # fmt: skip
    _, _, parts = why.explained(shapes, query, hits[:4])
    assert parts["visible"] is True and [row[0] for row in parts["value"]] == [1, 2, 3, 4]
    assert why.explained(shapes, None, None)[1] == ""  # no search yet: nothing to explain


def test_the_map_tab_highlights_zooms_and_colours(shapes):
    plot, note, gallery, hits, caption = collection_map.show_map(
        shapes, "role", {"type": "text", "text": "a yellow triangle"}
    )
    frame = plot.value
    assert "UMAP" in note and "top 12 results" in caption and len(gallery) == 12
    groups = {row[2] for row in frame["data"]}
    assert {overview.TOP, overview.QUERY, "reference"} <= groups
    band = [0.4, 0.45]
    positions, total = overview.region_items(shapes, band)
    xs = shapes.index.layout[positions, 0]
    assert total >= len(positions) > 0 and ((xs >= 0.4) & (xs <= 0.45)).all()
    zoomed, gallery, hits, caption = collection_map.zoom(shapes, band)
    assert zoomed.x_lim == [0.4, 0.45] and f"{total} items in this band" in caption


def test_a_collection_without_a_map_says_how_to_draw_one(tmp_path, settings):
    copy = tmp_path / "index"
    shutil.copytree(SHAPES_INDEX_DIR, copy)
    version = copy / "versions" / (copy / "CURRENT").read_text()
    (version / "map.npy").unlink()
    assert Index.load(copy).layout is None
    catalog = Catalog.from_file(settings.collections_file, settings)
    shapes = catalog.get("shapes")
    shapes.index.layout, kept = None, shapes.index.layout
    try:
        with pytest.raises(BadInput, match="has no map yet.*python -m retrieval map"):
            overview.map_rows(shapes)
        assert "no map yet" in collection_map.map_note(shapes)
    finally:
        shapes.index.layout = kept
