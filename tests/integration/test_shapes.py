"""The Shapes world: seeded generation, ground truth, CIRR format, and that training on it learns."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from retrieval.backbone import load_backbone, new_model
from retrieval.catalog import Catalog
from retrieval.collection import scan_folder
from retrieval.config import ROOT, SHAPES_MODEL_DIR
from retrieval.data.composed import read_cirr
from retrieval.eval.metrics import feature_ranks, recall_at_k
from retrieval.shapes import torch_data as shapes_data
from retrieval.shapes import world as shapes
from retrieval.shapes.world import Edit, ShapeObject, make_scene
from retrieval.train import clip as clip_training
from retrieval.train import loop as loop
from tests.helpers import shipped_description_recall, shipped_shapes_recall


@pytest.fixture(scope="module")
def test_split():
    return shapes.build_split("test", sets=12, seed=3)


def test_rendering_is_seeded_and_jittered():
    scene = make_scene(
        [ShapeObject("left", "circle", "red", "large"), ShapeObject("top", "star", "blue", "small")]
    )
    first, boxes = shapes.render(scene, 5)
    again, boxes_again = shapes.render(scene, 5)
    other, _ = shapes.render(scene, 6)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and boxes == boxes_again
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert first.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_hold_their_objects_colour(seed):
    scene = shapes.random_scene(np.random.default_rng(seed))
    image, boxes = shapes.render(scene, seed)
    pixels = np.asarray(image).astype(int)
    for obj, (x0, y0, x1, y1) in zip(scene, boxes, strict=True):
        assert 0 <= x0 < x1 <= shapes.IMAGE_SIZE and 0 <= y0 < y1 <= shapes.IMAGE_SIZE
        inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
        distance = np.abs(inside - np.array(shapes.COLOURS[obj.colour])).sum(axis=1)
        assert (distance < 60).mean() > 0.2, obj  # the object fills a good part of its own box
        cx, cy = shapes.CENTRES[obj.position]
        assert x0 <= cx * shapes.IMAGE_SIZE <= x1 and y0 <= cy * shapes.IMAGE_SIZE <= y1


def test_descriptions_and_captions_name_every_object():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = shapes.random_scene(rng)
        caption = shapes.paraphrase(scene, rng)
        for obj in scene:
            assert obj.colour in caption and obj.shape in caption
            assert any(phrase in caption for phrase in shapes.POSITION_PHRASES[obj.position])
        assert shapes.describe(scene) == shapes.describe(make_scene(reversed(scene)))


def test_world_has_the_required_variety():
    assert len(shapes.SHAPES) >= 3 and len(shapes.COLOURS) >= 6 and len(shapes.SIZES) == 2
    assert set(shapes.POSITIONS) == {"left", "right", "top", "bottom", "centre"}
    with pytest.raises(ValueError):
        make_scene(
            [
                ShapeObject("left", "circle", "red", "small"),
                ShapeObject("left", "star", "red", "small"),
            ]
        )


def test_edits_change_exactly_what_they_say_and_invert():
    scene = make_scene(
        [
            ShapeObject("left", "circle", "red", "large"),
            ShapeObject("right", "square", "blue", "small"),
        ]
    )
    rng = np.random.default_rng(1)
    for edit in shapes.possible_edits(scene):
        target = edit.apply(scene)
        assert edit.inverse().apply(target) == scene
        changed = set(scene) ^ set(target)
        if edit.kind in ("colour", "shape", "size", "move"):
            old, new = edit.old, edit.new
            differing = [
                f
                for f in ("colour", "shape", "size", "position")
                if getattr(old, f) != getattr(new, f)
            ]
            assert differing == [{"move": "position"}.get(edit.kind, edit.kind)] and changed == {
                old,
                new,
            }
        text = shapes.edit_text(edit, scene, rng)
        assert text and "{" not in text
    assert Edit("remove", scene[0], None).apply(scene) == (scene[1],)


def test_split_galleries_are_disjoint_unique_and_ground_truthed(test_split):
    val = shapes.build_split("val", sets=6, seed=3)
    test_names = {shapes.describe(image.scene) for image in test_split.images}
    val_names = {shapes.describe(image.scene) for image in val.images}
    assert len(test_names) == len(test_split.images) == 12 * 8
    assert not test_names & val_names
    assert {shapes.split_of(image.scene) for image in test_split.images} == {"test"}
    scenes = {image.name: image.scene for image in test_split.images}
    for triplet in test_split.triplets:
        source, target = scenes[triplet.reference], scenes[triplet.target]
        assert len(set(source) ^ set(target)) in (1, 2)  # one object changed, added or removed
        assert [n for n, s in scenes.items() if shapes.describe(s) == shapes.describe(target)] == [
            triplet.target
        ]
    kinds = Counter(triplet.kind for triplet in test_split.triplets)
    assert len(kinds) >= 4 and min(kinds.values()) >= 5
    assert len({triplet.caption for triplet in test_split.triplets}) > 0.8 * len(
        test_split.triplets
    )


def test_text_distractors_share_the_edited_object(test_split):
    by_name = test_split.by_name()
    for triplet in test_split.triplets[:: shapes.SET_VARIANTS * 2]:
        distractor = by_name[f"{triplet.set_id}-dis0"]
        assert distractor.role == "text-distractor"
        assert set(distractor.scene) & (
            set(by_name[triplet.reference].scene) ^ set(by_name[triplet.target].scene)
        )


def test_written_dataset_follows_the_cirr_format(tmp_path):
    shapes.write_dataset(tmp_path, {"val": 2, "test": 3}, seed=1)
    rows = json.loads((tmp_path / "captions" / "cap.rc2.test.json").read_text())
    paths = read_cirr(tmp_path, "test").images
    assert len(paths) == 3 * 8 and all(path.is_file() for path in paths.values())
    split_file = json.loads((tmp_path / "image_splits" / "split.rc2.test.json").read_text())
    assert all(rel.startswith("./test/") for rel in split_file.values())
    for row in rows:
        assert {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"} <= set(
            row
        )
        members = row["img_set"]["members"]
        assert len(members) == 6 and row["target_soft"] == {row["target_hard"]: 1.0}
        assert members[row["img_set"]["reference_rank"]] == row["reference"]
        assert members[row["img_set"]["target_rank"]] == row["target_hard"]
    items, skipped = scan_folder(tmp_path)
    assert not skipped and len(items) == 5 * 8
    item = next(i for i in items if i.meta["split"] == "test")
    objects = json.loads(item.meta["objects"])
    assert len(objects) == int(item.meta["count"]) and len(objects[0]["box"]) == 4
    assert item.meta["description"] == shapes.describe(
        make_scene(ShapeObject(o["position"], o["shape"], o["colour"], o["size"]) for o in objects)
    )
    assert objects[0]["colour"] in item.meta["tags"].split("; ")


def test_training_pairs_come_in_near_duplicate_groups():
    _, transform, tokenizer = new_model("ShapesCLIP-Micro", device="cpu")
    loader = shapes_data.shapes_loader(
        transform, tokenizer, batch_size=8, epoch_size=16, seed=0, group=2
    )
    pixels, tokens, triplets, positives = next(iter(loader))
    assert pixels.shape == (8, 3, 32, 32) and tokens.shape == (8, 32)
    assert triplets is None and positives is None  # neither edits nor partial captions asked for
    texts = loader.dataset[0].captions
    assert texts[0] != texts[1]


@pytest.mark.slow
def test_training_from_scratch_learns_the_shapes_world():
    """Guards the training code: a few dozen steps from scratch already beat chance by far.

    Uses the ShapesCLIP-Tiny architecture (the one that is shipped) for 150 steps of 64 pairs,
    one to two minutes on two idle cores; ShapesCLIP-Micro's 32 px input stays at chance this early.
    """

    torch.manual_seed(0)
    model, transform, tokenizer = new_model("ShapesCLIP-Tiny", device="cpu")
    validate = clip_training.shapes_validator(transform, tokenizer, sets=8, seed=1)  # 64 val images
    before = validate(model.eval())
    loader = shapes_data.shapes_loader(
        transform, tokenizer, batch_size=64, epoch_size=64 * 150, seed=0, group=2
    )
    cfg = loop.TrainConfig(steps=150, lr=1e-3, warmup_steps=10, device="cpu")
    result = clip_training.train_clip(model, loader, cfg, validate=validate, progress=False)
    after = result.best_metrics
    chance_r5 = 100 * 5 / 64  # recall is in percent
    assert after["t2i_R@5"] >= 3 * chance_r5, (before, after)
    assert after["t2i_mean"] > before["t2i_mean"] + 10


def test_shipped_model_reads_fresh_test_scenes():
    """The shipped ShapesCLIP-Tiny finds unseen test-split scenes from their descriptions."""

    backbone = load_backbone(str(SHAPES_MODEL_DIR), device="cpu")
    data = shapes.build_split("test", sets=16, seed=99)  # 128 images, new renderings
    pixels, tokens, _ = shapes_data.split_tensors(data, backbone.transform, backbone.tokenize)
    images = backbone.encode_image_tensors(pixels)
    texts = backbone.encode_token_ids(tokens)
    ranks = feature_ranks(texts, images, torch.arange(len(images)))
    recall = recall_at_k(ranks, ks=(1, 10))
    assert recall["R@10"] > 50 and recall["R@1"] > 100 * 10 / len(images)


def test_the_served_int8_runtime_keeps_the_shipped_models_recall():
    """The app serves the Shapes collection on ONNX Runtime int8 because it keeps quality: text ->
    image and the Combiner's composed R@1 within 1 point of PyTorch (BENCHMARKS.md, Runtimes)."""
    served = Catalog.from_file(ROOT / "collections.json").specs["shapes"].runtime
    assert served == "onnx-int8"
    reference, int8 = shipped_description_recall("torch"), shipped_description_recall(served)
    assert reference["R@1"] > 30 and reference["R@10"] > 90, reference
    for k in ("R@1", "R@10"):
        assert abs(int8[k] - reference[k]) <= 1.0, (k, reference, int8)
    combiner = shipped_shapes_recall("combiner", "torch")["combiner"]["R@1"]
    assert abs(shipped_shapes_recall("combiner")["combiner"]["R@1"] - combiner) <= 1.0
