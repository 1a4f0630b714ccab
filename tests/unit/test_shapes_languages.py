"""The Shapes generator in five languages: grammar by example, agreement everywhere, English intact."""

import json
import re

import numpy as np
import pytest
import torch

from retrieval.backbone import new_model
from retrieval.cli.main import main
from retrieval.errors import BadInput
from retrieval.shapes import languages, world
from retrieval.shapes.languages import (
    LANGUAGES,
    describe,
    edit_between,
    edit_text,
    paraphrase,
    triplet_caption,
)
from retrieval.shapes.torch_data import ShapesPairs
from retrieval.shapes.world import Edit, ShapeObject, make_scene
from retrieval.train.clip import shapes_validator

RED_CIRCLE = ShapeObject("left", "circle", "red", "large")
GREEN_STAR = ShapeObject("top", "star", "green", "small")
BLUE_SQUARE = ShapeObject("right", "square", "blue", "small")

DESCRIPTIONS = {
    "en": "a large red circle on the left, a small green star at the top and a small blue square on the right",
    "it": "un grande cerchio rosso a sinistra, una piccola stella verde in alto e un piccolo quadrato blu a destra",
    "fr": "un grand cercle rouge à gauche, une petite étoile verte en haut et un petit carré bleu à droite",
    "de": "ein großer roter Kreis links, ein kleiner grüner Stern oben und ein kleines blaues Quadrat rechts",
    "es": "un círculo rojo grande a la izquierda, una estrella verde pequeña arriba y un cuadrado azul pequeño a la derecha",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_canonical_description_by_example(language):
    scene = make_scene([RED_CIRCLE, GREEN_STAR, BLUE_SQUARE])
    assert describe(scene, language) == DESCRIPTIONS[language]


def texts_of(language, edit, source, seeds=300):
    return {edit_text(edit, source, np.random.default_rng(seed), language) for seed in range(seeds)}


def test_edit_requests_agree_with_the_object_they_change():
    star = make_scene([GREEN_STAR])
    to_red = Edit("colour", GREEN_STAR, ShapeObject("top", "star", "red", "small"))
    assert "rendi la stella rossa" in texts_of("it", to_red, star)
    assert "colora la stella di rosso" in texts_of("it", to_red, star)
    assert "rends l'étoile rouge" in texts_of("fr", to_red, star)
    assert "la estrella debe ser roja" in texts_of("es", to_red, star)
    assert "mach den Stern rot" in texts_of("de", to_red, star)
    bigger = Edit("size", GREEN_STAR, ShapeObject("top", "star", "green", "large"))
    assert "rends l'étoile plus grande" in texts_of("fr", bigger, star)
    smaller = Edit("size", RED_CIRCLE, ShapeObject("left", "circle", "red", "small"))
    assert "la stella" not in " ".join(texts_of("it", smaller, make_scene([RED_CIRCLE])))
    assert "rendi il cerchio più piccolo" in texts_of("it", smaller, make_scene([RED_CIRCLE]))


def test_german_cases_follow_the_verb_and_the_gender():
    square, circle = make_scene([BLUE_SQUARE]), make_scene([RED_CIRCLE])
    add_star = Edit("add", None, GREEN_STAR)
    assert "füge einen kleinen grünen Stern oben hinzu" in texts_of("de", add_star, square)
    add_square = Edit("add", None, ShapeObject("top", "square", "blue", "large"))
    assert "füge ein großes blaues Quadrat oben hinzu" in texts_of("de", add_square, circle)
    to_star = Edit("shape", RED_CIRCLE, ShapeObject("left", "star", "red", "large"))
    circle_texts = texts_of("de", to_star, circle)
    assert {"mach aus dem Kreis einen Stern", "der Kreis soll ein Stern werden"} <= circle_texts
    remove = Edit("remove", BLUE_SQUARE, None)
    two = make_scene([RED_CIRCLE, BLUE_SQUARE])
    assert {"entferne das Quadrat", "ohne das blaue Quadrat"} <= texts_of("de", remove, two)


def test_references_name_what_tells_the_object_apart():
    twins = make_scene([RED_CIRCLE, ShapeObject("right", "circle", "blue", "small")])
    edit = Edit("remove", RED_CIRCLE, None)
    for language, bare in (("it", "rimuovi il cerchio"), ("es", "quita el círculo")):
        assert bare not in texts_of(language, edit, twins)  # two circles: "the circle" is ambiguous
    assert "quita el círculo de la izquierda" in texts_of("es", edit, twins)
    assert "togli il cerchio rosso" in texts_of("it", edit, twins)


WRONG_AGREEMENT = {  # a feminine or neuter noun with a masculine form, or the other way round
    "it": r"\b(stella (rosso|giallo)|piccolo stella|un stella|una (cerchio|quadrato|triangolo))\b",
    "fr": r"\b(étoile (vert|bleu|violet)\b|petit étoile|le étoile|une (cercle|carré|triangle))",
    "es": r"\b(estrella (rojo|amarillo|morado)|estrella \w+ pequeño|el estrella|una (círculo|cuadrado|triángulo))\b",
    "de": r"\b(ein \w*(er) \w*\s?(Quadrat|Dreieck)|ein \w+es (\w+ )?(Kreis|Stern)|einen (\w+ ){0,2}(Quadrat|Dreieck)|den (\w+ ){0,2}(Quadrat|Dreieck)|das (\w+ ){0,2}(Kreis|Stern))\b",
}


@pytest.mark.parametrize("language", sorted(WRONG_AGREEMENT))
def test_no_text_breaks_agreement(language):
    rng = np.random.default_rng(5)
    texts = []
    for _ in range(1500):
        scene = world.random_scene(rng)
        edit = world.sample_edit(scene, rng)
        texts += [describe(scene, language), paraphrase(scene, rng, language)]
        texts.append(edit_text(edit, scene, rng, language))
    broken = [text for text in texts if re.search(WRONG_AGREEMENT[language], text)]
    assert broken == []
    assert not [text for text in texts if "{" in text or "  " in text]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_scene_has_its_own_description(language):
    rng = np.random.default_rng(1)
    scenes = {world.random_scene(rng) for _ in range(3000)}
    assert len({describe(scene, language) for scene in scenes}) == len(scenes)


def test_english_is_the_shipped_generator_unchanged():
    rng, mirror = np.random.default_rng(2), np.random.default_rng(2)
    for _ in range(200):
        scene = world.random_scene(rng)
        assert world.random_scene(mirror) == scene
        assert describe(scene) == world.describe(scene)
        assert paraphrase(scene, rng, "en") == world.paraphrase(scene, mirror)
        edit = world.sample_edit(scene, rng)
        assert world.sample_edit(scene, mirror) == edit
        assert edit_text(edit, scene, rng) == world.edit_text(edit, scene, mirror)


def test_stored_triplets_are_phrased_in_every_language():
    data = world.build_split("val", 6, seed=3)
    scenes = {image.name: image.scene for image in data.images}
    for triplet in data.triplets:
        source, target = scenes[triplet.reference], scenes[triplet.target]
        edit = edit_between(source, target, triplet.kind)
        assert edit.apply(source) == target
        assert triplet_caption(triplet, scenes, "en") == triplet.caption
        italian = triplet_caption(triplet, scenes, "it")
        assert italian == triplet_caption(triplet, scenes, "it")  # seeded: the same every time
        assert italian != triplet.caption
    with pytest.raises(ValueError, match="not a single edit"):
        edit_between(make_scene([RED_CIRCLE]), make_scene([GREEN_STAR, BLUE_SQUARE]), "add")


def test_unknown_language_names_the_ones_there_are():
    with pytest.raises(BadInput, match="'pt'.*en, it, fr, de, es"):
        describe(make_scene([RED_CIRCLE]), "pt")


def test_training_pairs_mix_languages_and_leave_english_runs_as_they_were():
    def captions(dataset):
        return [text for index in range(40) for text in dataset[index][1]]

    english = captions(ShapesPairs(40, lambda image: 0, None, seed=4))
    assert english[:3] == [  # what the code before the five languages gave for seed 4
        "an image with a tiny cyan square to the right and a little cyan square in the centre",
        "a drawing of a small cyan square to the right and a tiny green square in the middle",
        "a large purple circle at the bottom and a small red square on the right",
    ]
    mixed = captions(ShapesPairs(40, lambda image: 0, None, seed=4, languages=LANGUAGES))
    marks = {"it": " un ", "fr": " une ", "de": " ein", "es": " una "}
    for language, mark in marks.items():
        assert any(mark in f" {text}" for text in mixed), language
    grammar = languages.GRAMMARS["it"]
    assert grammar.describe(make_scene([GREEN_STAR])) == "una piccola stella verde in alto"


def test_multilingual_validation_reports_each_language_and_averages_them():
    torch.manual_seed(0)
    model, transform, tokenizer = new_model("ShapesCLIP-Micro", device="cpu")
    validate = shapes_validator(transform, tokenizer, sets=2, seed=1, languages=("en", "de"))
    metrics = validate(model.eval())
    for language in ("en", "de"):
        assert {f"{language}_t2i_R@1", f"{language}_sum_R@10"} <= set(metrics)
    assert metrics["t2i_mean"] == pytest.approx(
        (metrics["en_t2i_mean"] + metrics["de_t2i_mean"]) / 2
    )
    assert metrics["en_t2i_mean"] != metrics["de_t2i_mean"]  # the German texts really differ


def test_generated_edit_requests_take_the_languages_in_turn(tmp_path, capsys):
    options = ["--val-sets", "0", "--test-sets", "0", "--languages", "en,it,de"]
    assert main(["shapes", "generate", "--out", str(tmp_path), "--train-sets", "2", *options]) == 0
    rows = json.loads((tmp_path / "captions" / "cap.rc2.train.json").read_text())
    assert [row.get("language", "en") for row in rows[:6]] == ["en", "it", "de"] * 2
    english = world.build_split("train", 2, seed=0).triplets
    assert [row["caption"] for row in rows[::3]] == [t.caption for t in english[::3]]
    assert any(word in rows[1]["caption"].split() for word in ("il", "la", "un", "una"))
    refused = ["shapes", "generate", "--out", str(tmp_path / "x"), "--languages", "en,pt"]
    assert main(refused) == 1
    assert "unknown language 'pt'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written
