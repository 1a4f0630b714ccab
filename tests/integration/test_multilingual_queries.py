"""A visitor types in Italian, French, German or Spanish: every tab, the API and the CLI answer.

On the shipped Shapes collection as the app serves it (the five-language Shapes CLIP on ONNX
int8, its Combiner and phi). Queries are the generator's own texts for known scenes and edits, so
the right answer is known; rates are held a little under what BENCHMARKS.md measured per language.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.cli.main import main
from retrieval.config import ROOT
from retrieval.shapes.languages import LANGUAGES, describe, edit_between, edit_text
from retrieval.shapes.world import scene_of_row
from tests.helpers import shipped_description_recall, shipped_shapes_recall
from webapp.ui.composed import composed_search
from webapp.ui.text_search import text_search

SHAPES = ROOT / "precomputed" / "shapes"
TRIPLETS = json.loads((SHAPES / "captions" / "cap.rc2.test.json").read_text())[::16]
OTHER_LANGUAGES = [language for language in LANGUAGES if language != "en"]
ENGLISH_R1, ENGLISH_R10, COMBINER_R1 = (
    66.0,
    99.5,
    55.0,
)  # a little under BENCHMARKS.md (70.6, 100.0, 60.2); issue #19 asked for 60, 99 and 45


@pytest.fixture(scope="module")
def recall_by_language():
    """Text -> image recall of all 1,024 test descriptions per language, texts on ONNX int8."""
    return {language: shipped_description_recall("onnx-int8", language) for language in LANGUAGES}


def test_every_language_reads_the_test_split_as_well_as_english(recall_by_language):
    english = recall_by_language["en"]
    assert english["R@1"] >= ENGLISH_R1 and english["R@10"] >= ENGLISH_R10, english
    for language, recall in recall_by_language.items():
        for k in ("R@1", "R@10"):
            assert recall[k] >= 0.95 * english[k], (language, recall, english)  # within 5%


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_combiner_beats_the_baselines_in_every_language(language):
    recall = shipped_shapes_recall("combiner", language=language)
    combiner, image, summed = (recall[name]["R@1"] for name in ("combiner", "image", "sum"))
    assert combiner >= COMBINER_R1 and combiner >= image + 10 and combiner > summed, recall


@pytest.fixture(scope="module")
def scenes(shapes):
    """Every 16th scene of the collection (64), by item id."""
    return {item["id"]: scene_of_row(item) for item in shapes.index.items[::16]}


def found_in_top(shapes, queries: dict[str, str], k: int) -> int:
    return sum(
        item_id in [hit["id"] for hit in text_search(shapes, query, k=k)[1]]
        for item_id, query in queries.items()
    )


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_a_description_in_any_language_finds_its_scene(shapes, scenes, language):
    english = found_in_top(shapes, {i: describe(s) for i, s in scenes.items()}, k=5)
    found = found_in_top(shapes, {i: describe(s, language) for i, s in scenes.items()}, k=5)
    assert found >= 0.75 * len(scenes), (language, found)
    assert found >= english - 6, (language, found, english)  # within a few scenes of English


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_the_api_answers_like_the_ui(api, shapes, scenes, language):
    item_id, scene = next(iter(scenes.items()))
    query = describe(scene, language)
    hits = api.get("/api/collections/shapes/search/text", params={"q": query, "k": 5}).json()
    assert [hit["id"] for hit in hits["hits"]] == [
        h["id"] for h in text_search(shapes, query, k=5)[1]
    ]


def composed_hits(shapes, language: str, method: str) -> int:
    hits = 0
    by_id = {item["id"]: scene_of_row(item) for item in shapes.index.items}
    for row in TRIPLETS:
        source, target = by_id[row["reference"]], by_id[row["target_hard"]]
        edit = edit_between(source, target, row["edit"])
        text = edit_text(edit, source, np.random.default_rng(row["pairid"]), language)
        _, found, _, _ = composed_search(shapes, None, row["reference"], text, method, k=10)
        hits += row["target_hard"] in [hit["id"] for hit in found]
    return hits


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_a_change_asked_in_any_language_finds_its_target(shapes, language):
    """80 known triplets, the request rewritten in the language: the Combiner's top 10."""
    combined = composed_hits(shapes, language, "combiner")
    assert combined >= 0.8 * len(TRIPLETS), (language, combined)


def test_the_cli_searches_in_german(scenes, capsys):
    item_id, scene = next(iter(scenes.items()))
    command = ["search", "--index", str(SHAPES / "index"), describe(scene, "de"), "-k", "5"]
    assert main([*command, "--json"]) == 0
    assert item_id in [hit["id"] for hit in json.loads(capsys.readouterr().out)["hits"]]
