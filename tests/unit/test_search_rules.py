"""The Searcher's rules, each pinned down: filters, paging bounds, exclusions, thresholds and the
query record every caller shows. Found by mutation testing (bench/mutation_test.py): each test
fails for a one-line change that the broader search tests let through."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import BadInput
from retrieval.index import build_index, write_version
from retrieval.search import Filters, Searcher, item_year, tag_names
from tests.helpers import draw_scene, make_collection
from tests.unit.test_index_rules import manifest, unit_vectors


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("search-rules")
    make_collection(root / "images")
    index = build_index(root / "images", root / "index", micro_backbone, progress=False).index
    return Searcher(index, micro_backbone, max_k=20)


# -- filters --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "date,year",
    [("c. 1650", 1650), ("1503-1519", 1503), ("AD 800", 800), ("12345", None), ("", None),
     ("99", None), ("born 1890s", 1890)],
)  # fmt: skip
def test_the_year_is_the_first_three_or_four_digit_number(date, year):
    assert item_year({"date": date}) == year


def test_tags_are_read_in_every_stored_form():
    assert tag_names(None) == [] and tag_names("") == [] and tag_names([]) == []
    assert tag_names(" red ;blue;; ") == ["red", "blue"]
    assert tag_names([{"tag": "red", "score": 0.9}, "blue", 3]) == ["red", "blue", "3"]


def test_a_date_range_may_be_one_year_but_not_reversed():
    Filters(date_from=1700, date_to=1700)
    with pytest.raises(BadInput, match="the date range is empty: from 1701 is after to 1700"):
        Filters(date_from=1701, date_to=1700)
    Filters(date_from=1701)  # one bound alone is fine
    Filters(date_to=1700)


def test_empty_filters_are_no_filters():
    assert Filters().is_empty() and Filters(artist="", keyword=None, tags=[]).is_empty()
    for given in (
        {"artist": "x"},
        {"date_from": 0},
        {"date_to": 1900},
        {"keyword": "x"},
        {"tags": ["x"]},
    ):
        assert not Filters(**given).is_empty(), given


ITEM = {"artist": " Anna Maria ", "date": "c. 1650", "title": "Red Vase", "description": "on a Shelf", "tags": "Red; Vase"}  # fmt: skip


@pytest.mark.parametrize(
    "given,matches",
    [
        ({"artist": "anna maria"}, True), ({"artist": "  ANNA MARIA"}, True), ({"artist": "anna"}, False),
        ({"date_from": 1650}, True), ({"date_from": 1651}, False), ({"date_to": 1650}, True),
        ({"date_to": 1649}, False), ({"date_from": 1600, "date_to": 1700}, True),
        ({"keyword": "vase shelf"}, True), ({"keyword": "RED"}, True), ({"keyword": "vase bowl"}, False),
        ({"tags": ["red"]}, True), ({"tags": ["RED", "vase"]}, True), ({"tags": ["red", "bowl"]}, False),
        ({"artist": "anna maria", "keyword": "bowl"}, False),
    ],
)  # fmt: skip
def test_every_given_condition_must_hold(given, matches):
    assert Filters(**given).matches(ITEM) is matches


def test_an_item_without_the_field_never_matches_a_condition_on_it():
    """A missing field is no field, not the text "None" (or any other stand-in)."""
    for word in ("none", "xxxx", "", " "):
        if word.strip():
            assert Filters(artist=word).matches({"title": "x"}) is False
            assert Filters(keyword=word).matches({"date": "1650"}) is False
        assert Filters(tags=[word or "none"]).matches({"title": "x"}) is False


def test_an_undated_item_fails_any_date_condition():
    for given in ({"date_from": 1}, {"date_to": 3000}):
        assert Filters(**given).matches({"title": "x"}) is False
        assert Filters(**given).matches({"date": "unknown"}) is False


# -- paging and ranking ---------------------------------------------------------------------------
def test_paging_bounds_follow_the_servers_max_k(searcher):
    assert len(searcher.text("red", k=20).hits) == 8
    for k in (0, 21, 2.0, "3", None):
        with pytest.raises(BadInput, match=f"k must be between 1 and 20, got {k!r}"):
            searcher.text("red", k=k)
    assert searcher.text("red", k=1, offset=10_000).hits == []
    for offset in (-1, 10_001, 1.5):
        with pytest.raises(BadInput, match=f"offset must be between 0 and 10000, got {offset!r}"):
            searcher.text("red", offset=offset)


def test_ranks_count_from_the_start_of_the_ranking(searcher):
    full = searcher.text("blue", k=8).hits
    page = searcher.text("blue", k=2, offset=5).hits
    assert [(h.id, h.rank) for h in page] == [(h.id, h.rank) for h in full[5:7]]
    assert [h.rank for h in full] == list(range(1, 9))
    assert all(isinstance(h.score, float) and isinstance(h.rank, int) for h in full)


def test_a_minimum_score_keeps_scores_equal_to_it(searcher):
    scores = [hit.score for hit in searcher.text("green", k=8).hits]
    kept = searcher.text("green", k=8, min_score=scores[2]).hits
    assert [h.score for h in kept] == scores[:3]
    assert searcher.text("green", k=8, min_score=1.01).hits == []


def test_exclusions_do_not_shorten_the_page(searcher):
    ranking = [hit.id for hit in searcher.text("yellow", k=8).hits]
    excluded = {searcher.index.position(item_id) for item_id in ranking[:3]}
    hits = searcher.text("yellow", k=5, exclude=excluded).hits
    assert [hit.id for hit in hits] == ranking[3:8]
    neighbours = [hit.id for hit in searcher.similar("red-circle", k=7).hits]
    skip = searcher.index.position(neighbours[0])
    fewer = searcher.similar("red-circle", k=6, exclude={skip}).hits
    assert [hit.id for hit in fewer] == neighbours[1:7]  # the item itself stays excluded too


def test_filters_and_exclusions_together(searcher):
    anna = Filters(artist="Anna")
    hits = searcher.text("a shape", k=8, filters=anna).hits
    assert hits and all(hit.item["artist"] == "Anna" for hit in hits)
    first = searcher.index.position(hits[0].id)
    rest = searcher.text("a shape", k=8, filters=anna, exclude={first}).hits
    assert [hit.id for hit in rest] == [hit.id for hit in hits[1:]]
    assert searcher.text("a shape", filters=Filters(tags=["nothing"])).hits == []


# -- what a query records -------------------------------------------------------------------------
def test_each_query_records_what_was_asked(searcher):
    assert searcher.text("  a red circle ", k=1).query == {"type": "text", "text": "a red circle"}
    image = searcher.image(draw_scene("red", "circle"), k=2)
    assert image.query == {"type": "image"} and len(image.hits) == 2
    similar = searcher.similar("red-circle", k=2)
    assert similar.query == {"type": "item", "id": "red-circle"} and len(similar.hits) == 2
    composed = searcher.composed("red-circle", " make it blue ", k=1)
    assert composed.query == {"type": "composed", "text": "make it blue", "method": "sum"}
    assert composed.notes == []
    first = searcher.composed("red-circle", "make it blue", k=2).hits
    skipping = searcher.composed(
        "red-circle", "make it blue", k=1, exclude={searcher.index.position(first[0].id)}
    )
    assert [hit.id for hit in skipping.hits] == [first[1].id]


def test_a_text_the_model_cuts_is_noted_and_a_non_text_is_refused(searcher):
    long = "red " * 100
    note = f"the text is longer than the model's {searcher.backbone.context_length} tokens and was truncated"
    assert searcher.text(long, k=1).notes == [note]
    assert searcher.composed("red-circle", long, k=1).notes == [note]
    assert searcher.text("red", k=1).notes == []
    for text in (None, 3, "", " \n"):
        with pytest.raises(BadInput, match="^the text query is empty$"):
            searcher.text_notes(text)


def test_references_item_ids_are_excluded_images_are_not(searcher):
    vector, excluded, _ = searcher.composed_vector("red-circle", "blue")
    assert excluded == {searcher.index.position("red-circle")}
    assert vector.dtype == np.float32 and vector.shape == (searcher.backbone.dim,)
    path = searcher.index.image_path("red-circle")
    _, none, _ = searcher.composed_vector(path, "blue")
    assert none == set()
    item = searcher.item_vector("red-circle")
    assert item.dtype == np.float32 and np.array_equal(
        item, searcher.index.vectors[searcher.index.position("red-circle")]
    )
    with pytest.raises(
        BadInput, match=r"composed method 'magic' is not available here; choose one of \['sum'\]"
    ):
        searcher.composed_vector("red-circle", "blue", method="magic")
    assert searcher.item("red-circle") is searcher.index.item("red-circle")


def test_a_page_holds_ten_results_unless_asked(micro_backbone, tmp_path):
    vectors = unit_vectors(30, dim=micro_backbone.dim)
    items = [{"id": f"i{n}"} for n in range(30)]
    index = write_version(tmp_path / "index", manifest(dim=micro_backbone.dim), items, vectors)
    searcher = Searcher(index, micro_backbone)
    assert len(searcher.by_vector(vectors[0]).hits) == 10
    assert len(searcher.text("red").hits) == 10
