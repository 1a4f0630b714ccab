"""Composed search on the shipped Shapes collection (trained models, no mocks): by default no
minimum score hides any method's hits, a min_score above every hit says so in words with the
best score, and the note under the results says what the selected method's number means."""

from __future__ import annotations

import pytest

from webapp.ui import build_ui
from webapp.ui.composed import composed_methods, composed_search, score_note
from webapp.ui.i18n import LANGUAGES, text_in

REFERENCE, CHANGE = "test-0000-img0", "make the circle blue"
URL = "/api/collections/shapes/search/composed"
# What each method's English note must say: what is compared with what, the range, the order,
# and that its numbers are on a scale of their own.
MEANS = {
    "combiner": ["Combiner", "fusing the reference image with your change"],
    "zero-shot": ["made-up word", "sentence's text vector"],
    "sum": ["baseline", "added"],
}
EVERY_NOTE = ["cosine similarity", "from -1 to 1", "higher means closer", "own scale", "within one"]


def composed(api, method: str, **params):
    answer = api.post(
        URL, data={"item_id": REFERENCE, "text": CHANGE, "method": method}, params=params
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_shipped_collection_offers_every_composed_method(shapes):
    assert composed_methods(shapes) == ["combiner", "zero-shot", "sum"]


@pytest.mark.parametrize("method", ["combiner", "zero-shot", "sum"])
def test_by_default_every_method_returns_its_hits(shapes, api, method):
    """No threshold unless one is asked for: the UI tab has none, and the API's default is none."""
    _, hits, notes, _ = composed_search(shapes, None, REFERENCE, CHANGE, method)
    assert len(hits) == 12 and notes == []
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    found = composed(api, method)
    assert [hit["id"] for hit in found["hits"]] == [hit["id"] for hit in hits[:10]]
    assert found["notes"] == [] and found["profile"]["min_score"] is None


@pytest.mark.parametrize("method", ["combiner", "zero-shot", "sum"])
def test_a_min_score_above_every_hit_says_so_with_the_best_score(shapes, api, method):
    best = composed(api, method)["hits"][0]["score"]
    minimum = round(best + 0.001, 4)
    hidden = composed(api, method, min_score=minimum)
    assert hidden["hits"] == []
    searched = len(shapes.index) - 1  # the reference itself is never a result
    assert hidden["notes"] == [
        f"all {searched} items scored below min_score {minimum:g}; the best scored {best:.3f}: "
        "lower min_score or leave it out (each kind of query and each composed method scores "
        "on its own scale)"
    ]
    kept = composed(api, method, min_score=round(best - 0.001, 4))
    assert kept["hits"] and kept["hits"][0]["score"] == best and kept["notes"] == []


def test_with_filters_the_note_counts_the_items_they_let_through(shapes, api):
    best = composed(api, "combiner", tag="blue")["hits"][0]["score"]
    blue = [item for item in shapes.index.items if "blue" in item["tags"].split("; ")]
    searched = len([item for item in blue if item["id"] != REFERENCE])
    hidden = composed(api, "combiner", tag="blue", min_score=round(best + 0.001, 4))
    assert hidden["hits"] == [] and hidden["notes"][0].startswith(
        f"all {searched} items matching the filters scored below min_score"
    )
    assert f"the best scored {best:.3f}" in hidden["notes"][0]


def test_a_page_past_the_hits_above_min_score_is_not_blamed_on_min_score(api):
    scores = [hit["score"] for hit in composed(api, "combiner", k=5)["hits"]]
    past = composed(api, "combiner", k=2, offset=6, min_score=scores[3])
    assert past["hits"] == [] and past["notes"] == []


def test_text_search_reports_an_empty_page_the_same_way(api):
    found = api.get("/api/collections/shapes/search/text", params={"q": "a large red circle"})
    best = found.json()["hits"][0]["score"]
    hidden = api.get(
        "/api/collections/shapes/search/text", params={"q": "a large red circle", "min_score": 1}
    ).json()
    assert hidden["hits"] == [] and f"the best scored {best:.3f}" in hidden["notes"][0]


def test_each_methods_note_is_its_own_text_in_every_language(shapes):
    keys = {method: score_note(method).key for method in composed_methods(shapes)}
    assert keys == {
        "combiner": "score_meaning_combiner",
        "zero-shot": "score_meaning_zero_shot",
        "sum": "score_meaning_sum",
    }
    for method, words in MEANS.items():
        english = text_in("en", keys[method])
        assert all(word in english for word in words + EVERY_NOTE), (method, english)
    for language in LANGUAGES:
        texts = [text_in(language, key) for key in keys.values()]
        assert len(set(texts)) == 3 and all("-1" in text for text in texts), language
    assert score_note("a method from elsewhere").key == "score_note_composed"
    assert score_note(None).key == "score_note_composed"


def test_the_tab_shows_the_chosen_methods_note_as_it_changes_and_after_each_search(settings):
    """The wiring as the app builds it: the note follows the method dropdown and the hits."""
    from retrieval.catalog import Catalog

    demo = build_ui(Catalog.from_file(settings.collections_file, settings), settings)
    by_name = {fn.api_name: fn for fn in demo.fns.values()}
    note, search = by_name["composed_score_note"], by_name["ui_composed_search"]
    method, hits = search.inputs[4], search.outputs[2]
    assert (method.elem_id, type(hits).__name__) == ("composed-method", "JSON")
    assert note.inputs == [method]
    assert [block.elem_id for block in note.outputs] == ["composed-score-note"]
    assert set(note.targets) == {(method._id, "change"), (hits._id, "change")}
    for name in [*MEANS, "a method from elsewhere"]:
        assert str(note.fn(name)) == str(score_note(name))
    shown = note.outputs[0]  # before any search: the note of the method selected first
    assert "score_meaning_combiner" in str(shown.value)
