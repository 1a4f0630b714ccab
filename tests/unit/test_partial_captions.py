"""Partial captions ("a red circle"): which scenes they are true of, their words, and the
multi-positive loss that lets them pick any image holding the object."""

import numpy as np
import pytest
import torch

from retrieval.backbone import new_model
from retrieval.shapes.languages import LANGUAGES, partial_caption
from retrieval.shapes.torch_data import ShapesPairs, caption_positives
from retrieval.shapes.world import Mention, ShapeObject, make_scene, mentioned_in
from retrieval.train.clip import clip_loss

RED_CIRCLE = ShapeObject("left", "circle", "red", "large")
BLUE_CIRCLE = ShapeObject("right", "circle", "blue", "small")
RED_STAR = ShapeObject("top", "star", "red", "small")


def test_a_mention_is_true_of_any_scene_with_a_fitting_object():
    red_circle = Mention(RED_CIRCLE, colour=True, size=False, position=False)
    assert mentioned_in((red_circle,), make_scene([RED_STAR, RED_CIRCLE]))
    moved = ShapeObject("bottom", "circle", "red", "small")  # position and size are not named
    assert mentioned_in((red_circle,), make_scene([moved]))
    assert not mentioned_in((red_circle,), make_scene([BLUE_CIRCLE, RED_STAR]))
    on_the_left = Mention(RED_CIRCLE, colour=False, size=False, position=True)
    assert not mentioned_in((on_the_left,), make_scene([BLUE_CIRCLE]))


def test_two_mentions_need_two_distinct_objects():
    circle = Mention(RED_CIRCLE, colour=False, size=False, position=False)
    assert mentioned_in((circle, circle), make_scene([RED_CIRCLE, BLUE_CIRCLE]))
    assert not mentioned_in((circle, circle), make_scene([RED_CIRCLE, RED_STAR]))


def test_partial_captions_name_what_the_mention_names_in_every_language():
    mention = Mention(RED_CIRCLE, colour=True, size=False, position=False)
    texts = {
        code: partial_caption((mention,), np.random.default_rng(0), code) for code in LANGUAGES
    }
    words = {"en": "red circle", "it": "cerchio rosso", "fr": "cercle rouge", "es": "círculo rojo"}
    for code, phrase in words.items():
        assert texts[code].endswith(phrase), texts[code]
    assert texts["de"].endswith(("ein roter Kreis", "einem roten Kreis")), texts["de"]
    with_place = Mention(RED_STAR, colour=False, size=False, position=True)
    italian = partial_caption((with_place,), np.random.default_rng(1), "it")
    assert (
        "stella" in italian and ("alto" in italian or "cima" in italian) and "ross" not in italian
    )


def test_batches_mark_every_image_a_partial_caption_is_true_of():
    _, transform, tokenizer = new_model("ShapesCLIP-Micro", device="cpu")
    dataset = ShapesPairs(16, transform, tokenizer, seed=3, group=4, partial=0.5)
    samples = [dataset[index] for index in range(8)]
    positives = caption_positives(samples)
    scenes = [scene for sample in samples for scene in sample.scenes]
    claims = [claim for sample in samples for claim in sample.mentions]
    assert positives.diagonal().all()  # every caption is true of its own image
    assert any(claim is not None for claim in claims) and any(c is None for c in claims)
    for row, (own, claim) in enumerate(zip(scenes, claims, strict=True)):
        for column, scene in enumerate(scenes):
            expected = scene == own if claim is None else mentioned_in(claim, scene)
            assert bool(positives[row, column]) == expected
    assert positives.sum() > len(scenes)  # some partial caption fits another image too
    assert dataset.collate(samples)[3].equal(positives)


def test_multi_positive_loss_is_the_plain_loss_for_one_positive_and_credits_every_positive():
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8), torch.randn(4, 8)
    plain = clip_loss(images, texts, 5.0)
    assert clip_loss(images, texts, 5.0, torch.eye(4, dtype=torch.bool)) == pytest.approx(
        float(plain)
    )
    # text 0 is true of images 0 and 1, and matches image 1 best: crediting it lowers the loss
    texts[0] = images[1]
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = True
    assert clip_loss(images, texts, 5.0, positives) < clip_loss(images, texts, 5.0)
