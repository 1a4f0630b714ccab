"""Models trained on raw CLIP features get raw features wherever they are applied.

CLIP4Cir's Combiner and SEARLE's phi were trained on the encoders' outputs before normalisation;
converted, they record `input_features: "raw"`. Each test applies a converted model (fabricated
checkpoints in the released layout, `tests/unit/test_convert.py`) through the serving composer or
the evaluation code, and compares what it received and returned with the papers' equations on raw
features computed here, straight from the tiny model. Models trained here (normalised) still get
the normalised features, unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.backbone import load_backbone
from retrieval.cli.main import main
from retrieval.composed.baselines import NORMALISED, RAW, input_features, sum_composer
from retrieval.composed.combiner import (
    Combiner,
    CombinerConfig,
    combiner_composer,
    load_combiner,
    new_combiner,
    save_combiner,
)
from retrieval.composed.convert import convert_clip4cir, convert_searle
from retrieval.composed.phi import (
    Phi,
    PhiConfig,
    encode_prompts,
    fill_template,
    load_phi,
    save_phi,
    zero_shot_composer,
)
from retrieval.data.composed import read_cirr
from retrieval.data.features import split_features
from retrieval.errors import BadInput, IndexMismatch
from retrieval.eval.composed import evaluate_split
from retrieval.index import Index, build_index, update_index
from retrieval.search import Searcher
from tests.fabricated import make_cirr
from tests.helpers import draw_scene, make_collection
from tests.unit.test_convert import (
    clip4cir_combiner_state,
    combiner_equations,
    phi_equations,
    save_checkpoint,
    searle_phi_state,
)

DIM = 64  # ShapesCLIP-Micro's features and token embeddings
TEXT = "make it a blue square"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted CLIP4Cir Combiner and SEARLE phi sized for the micro model, with their weights."""
    folder = tmp_path_factory.mktemp("converted")
    combiner_state = clip4cir_combiner_state(dim=DIM, projection=4 * DIM, hidden=8 * DIM)
    phi_state = searle_phi_state(input_dim=DIM, hidden=4 * DIM, output=DIM)
    comb = save_checkpoint(folder / "cirr_comb_RN50x4_fullft.pt", "Combiner", combiner_state)
    phi = save_checkpoint(folder / "SEARLE_ViT-B32.pt", "Phi", phi_state)
    convert_clip4cir(comb, folder / "combiner")
    convert_searle(phi, folder / "phi")
    return {
        "combiner": folder / "combiner",
        "phi": folder / "phi",
        "combiner_state": combiner_state,
        "phi_state": phi_state,
    }


@pytest.fixture(scope="module")
def collection(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("raw-collection")
    folder = make_collection(root / "images")
    build_index(folder, root / "index", micro_backbone, progress=False)
    return folder, root / "index"


@pytest.fixture
def calls(monkeypatch):
    """Every (inputs, output) of Combiner.forward and Phi.forward, as the composers call them."""
    recorded = {"combiner": [], "phi": []}
    for name, cls in (("combiner", Combiner), ("phi", Phi)):
        original = cls.forward

        def spy(self, *inputs, _original=original, _name=name):
            output = _original(self, *inputs)
            recorded[_name].append(([x.detach().clone() for x in inputs], output.detach().clone()))
            return output

        monkeypatch.setattr(cls, "forward", spy)
    return recorded


@torch.no_grad()
def raw_image(backbone, path: Path) -> torch.Tensor:
    """The tiny model's image encoder output before normalisation, computed here."""
    return backbone.model.encode_image(backbone.preprocess(path)[None])[0].float()


@torch.no_grad()
def raw_text(backbone, text: str) -> torch.Tensor:
    return backbone.model.encode_text(backbone.tokenize([text]))[0].float()


def zero_shot_query(backbone, state: dict, image: torch.Tensor, text: str, config) -> torch.Tensor:
    """SEARLE: phi(raw image feature) as the pseudo-word of "a photo of $ that {caption}"."""
    tokens = phi_equations(state, image[None])
    prompt = fill_template(config.template, text, config.placeholder)
    with torch.no_grad():
        return encode_prompts(backbone, [prompt], tokens, config.placeholder)[0]


# --------------------------------------------------------------------------- the recorded scale


def test_converters_record_raw_inputs_and_old_configs_read_as_normalised(converted, tmp_path):
    for folder, config_file in (
        (converted["combiner"], "combiner_config.json"),
        (converted["phi"], "phi_config.json"),
    ):
        assert json.loads((folder / config_file).read_text())["input_features"] == RAW
    assert load_combiner(converted["combiner"]).config.input_features == RAW
    assert load_phi(converted["phi"]).config.input_features == RAW
    assert input_features(combiner_composer(converted["combiner"])) == RAW
    assert input_features(zero_shot_composer(str(converted["phi"]))) == RAW

    save_combiner(new_combiner(8, input_features=RAW), tmp_path / "c")
    assert load_combiner(tmp_path / "c").config.input_features == RAW
    save_phi(Phi(PhiConfig(input_dim=4, token_width=4)), tmp_path / "p")
    for path in (tmp_path / "c" / "combiner_config.json", tmp_path / "p" / "phi_config.json"):
        raw = json.loads(path.read_text())
        del raw["input_features"]  # written before the field existed
        path.write_text(json.dumps(raw))
    assert load_combiner(tmp_path / "c").config.input_features == NORMALISED
    assert load_phi(tmp_path / "p").config.input_features == NORMALISED
    assert input_features(sum_composer) == NORMALISED
    with pytest.raises(BadInput, match="input_features is 'unit'"):
        CombinerConfig(dim=8, input_features="unit")
    with pytest.raises(BadInput, match="input_features is 'unit'"):
        PhiConfig(input_dim=4, token_width=4, input_features="unit")
    config_file = tmp_path / "p" / "phi_config.json"
    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), "input_features": "l2"})
    )
    with pytest.raises(
        BadInput, match=r"phi_config.json is not a valid phi config: input_features"
    ):
        load_phi(tmp_path / "p")


def test_backbone_gives_raw_features_on_request(micro_backbone, collection):
    folder, _ = collection
    path = folder / "round" / "red_circle.png"
    image = torch.from_numpy(micro_backbone.encode_images([path], normalise=False)[0])
    assert torch.allclose(image, raw_image(micro_backbone, path), atol=1e-5)
    assert image.norm() > 2  # the micro model's raw features are far from unit length
    assert torch.allclose(
        torch.from_numpy(micro_backbone.encode_images([path])[0]), F.normalize(image, dim=0)
    )
    text = torch.from_numpy(micro_backbone.encode_texts([TEXT], normalise=False)[0])
    assert torch.allclose(text, raw_text(micro_backbone, TEXT), atol=1e-5)
    assert torch.allclose(
        torch.from_numpy(micro_backbone.encode_texts([TEXT])[0]), F.normalize(text, dim=0)
    )


def test_onnx_towers_give_raw_features_too(micro_model_dir, micro_backbone, tmp_path):
    onnx = load_backbone(str(micro_model_dir), device="cpu", runtime="onnx", cache_dir=tmp_path)
    pixels = torch.stack([micro_backbone.transform(draw_scene("red", "circle"))])
    tokens = micro_backbone.tokenize([TEXT])
    for encode, inputs in (("encode_image_tensors", pixels), ("encode_token_ids", tokens)):
        torch_raw = getattr(micro_backbone, encode)(inputs, normalise=False)
        onnx_raw = getattr(onnx, encode)(inputs, normalise=False)
        assert torch.allclose(onnx_raw, torch_raw, rtol=1e-4, atol=1e-4)
        assert torch.allclose(getattr(onnx, encode)(inputs), F.normalize(torch_raw), atol=1e-5)


# --------------------------------------------------------------------------- the index's norms


def test_the_index_records_each_items_norm_and_keeps_it(micro_backbone, collection, tmp_path):
    folder, index_dir = collection
    index = Index.load(index_dir, micro_backbone)
    assert index.norms is not None and index.norms.shape == (len(index),)
    for item_id, file in (
        ("red-circle", "round/red_circle.png"),
        ("blue-square", "angular/blue_square.png"),
    ):
        direct = raw_image(micro_backbone, folder / file).numpy()
        assert np.allclose(index.raw_vector(item_id), direct, atol=1e-5)

    copy = tmp_path / "images"
    make_collection(copy)
    built = build_index(copy, tmp_path / "index", micro_backbone, progress=False).index
    draw_scene("green", "circle", jitter=2).save(copy / "round" / "extra.png")
    (copy / "angular" / "red_square.png").unlink()
    updated = update_index(tmp_path / "index", micro_backbone, progress=False).index
    assert len(updated.norms) == len(updated) == len(built)
    kept = [item["id"] for item in updated.items if item["id"] in built]
    assert len(kept) == len(built) - 1
    for item_id in kept:
        assert np.allclose(updated.raw_vector(item_id), built.raw_vector(item_id))
    extra = raw_image(micro_backbone, copy / "round" / "extra.png").numpy()
    assert np.allclose(updated.raw_vector("round_extra"), extra, atol=1e-5)
    tagged = updated.update_metadata({"round_extra": {"tags": ["green"]}})
    assert np.array_equal(tagged.norms, updated.norms)
    assert np.array_equal(tagged.redraw_map("pca").norms, updated.norms)


def without_norms(index_dir: Path) -> Index:
    """The index as built before the norms were recorded."""
    index = Index.load(index_dir)
    (index.version_dir() / "norms.npy").unlink()
    return Index.load(index_dir)


def test_an_index_without_norms_refuses_raw_models_and_says_how_to_rebuild(
    micro_backbone, converted, tmp_path
):
    folder = make_collection(tmp_path / "images")
    index_dir = tmp_path / "index"
    build_index(folder, index_dir, micro_backbone, progress=False)
    old = without_norms(index_dir)
    assert old.norms is None
    composers = {"combiner": combiner_composer(converted["combiner"])}
    composers["zero-shot"] = zero_shot_composer(str(converted["phi"]))
    composers["ours"] = combiner_composer(new_combiner(DIM))
    searcher = Searcher(old, micro_backbone, composers)
    for method in ("combiner", "zero-shot"):
        with pytest.raises(IndexMismatch) as caught:
            searcher.composed("red-circle", TEXT, method)
        message = str(caught.value)
        assert repr(method) in message and str(index_dir) in message
        assert f"python -m retrieval index {folder.resolve()} --out {index_dir}" in message
        assert "norms" in message
    # what needs no norms still works: normalised models, and an image as the reference
    assert searcher.composed("red-circle", TEXT, "ours").hits
    assert searcher.composed("red-circle", TEXT, "sum").hits
    assert searcher.composed(folder / "round" / "red_circle.png", TEXT, "combiner").hits
    # `update` of such an index cannot add them: only a rebuild can
    draw_scene("green", "circle").save(folder / "round" / "extra.png")
    assert update_index(index_dir, micro_backbone, progress=False).index.norms is None
    rebuilt = build_index(folder, index_dir, micro_backbone, progress=False).index
    assert (
        Searcher(rebuilt, micro_backbone, composers).composed("red-circle", TEXT, "combiner").hits
    )


# --------------------------------------------------------------------------- serving composers


def test_searcher_gives_converted_models_raw_features(micro_backbone, collection, converted, calls):
    folder, index_dir = collection
    combiner = combiner_composer(converted["combiner"])
    phi = zero_shot_composer(str(converted["phi"]))
    searcher = Searcher(
        Index.load(index_dir), micro_backbone, {"combiner": combiner, "zero-shot": phi}
    )
    path = folder / "round" / "red_circle.png"
    i, t = raw_image(micro_backbone, path)[None], raw_text(micro_backbone, TEXT)[None]
    state = converted["combiner_state"]
    expected = combiner_equations(state, i, t)[0]
    assert not torch.allclose(  # the scale matters for these weights
        combiner_equations(state, F.normalize(i), F.normalize(t))[0], expected, atol=1e-2
    )
    for reference in ("red-circle", path):  # an item of the index, and an uploaded image
        vector, _, _ = searcher.composed_vector(reference, TEXT, "combiner")
        assert torch.allclose(torch.from_numpy(vector), expected, atol=1e-5)
        (image, text), _ = calls["combiner"][-1]
        assert torch.allclose(image, i, atol=1e-5) and torch.allclose(text, t, atol=1e-5)

    config = phi.phi.config
    expected = zero_shot_query(micro_backbone, converted["phi_state"], i[0], TEXT, config)
    for reference in ("red-circle", path):
        vector, _, _ = searcher.composed_vector(reference, TEXT, "zero-shot")
        assert torch.allclose(torch.from_numpy(vector), expected, atol=1e-5)
        (image,), tokens = calls["phi"][-1]
        assert torch.allclose(image, i, atol=1e-5)
        assert torch.allclose(tokens[:, 0], phi_equations(converted["phi_state"], i), atol=1e-5)


def test_searcher_gives_our_normalised_combiner_the_stored_vectors(
    micro_backbone, collection, calls
):
    _, index_dir = collection
    index = Index.load(index_dir)
    searcher = Searcher(index, micro_backbone, {"combiner": combiner_composer(new_combiner(DIM))})
    searcher.composed("red-circle", TEXT, "combiner")
    (image, text), _ = calls["combiner"][-1]
    stored = torch.from_numpy(np.array(index.vectors[index.position("red-circle")]))
    assert torch.equal(image[0], stored)
    assert torch.allclose(text[0], F.normalize(raw_text(micro_backbone, TEXT), dim=0), atol=1e-6)


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def cirr(tmp_path_factory):
    root = make_cirr(tmp_path_factory.mktemp("cirr"))
    return root, read_cirr(root, "val")


def raw_references(backbone, split) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([raw_image(backbone, split.images[q.reference]) for q in split.queries])
    texts = torch.stack([raw_text(backbone, split.query_text(q)) for q in split.queries])
    return images, texts


@pytest.mark.parametrize("given", ["none", "normalised", "raw"])
def test_evaluation_gives_converted_models_raw_features(
    micro_backbone, cirr, converted, calls, given
):
    _, split = cirr
    features = {
        "none": None,
        "normalised": split_features(split, micro_backbone, cache=False, progress=False),
        "raw": split_features(split, micro_backbone, False, False, normalise=False),
    }[given]
    i, t = raw_references(micro_backbone, split)
    combiner = combiner_composer(converted["combiner"])
    evaluate_split(split, micro_backbone, combiner, features, cache=False, progress=False)
    (image, text), output = calls["combiner"][-1]
    assert torch.allclose(image, i, atol=1e-5) and torch.allclose(text, t, atol=1e-5)
    assert torch.allclose(output, combiner_equations(converted["combiner_state"], i, t), atol=1e-5)

    phi = zero_shot_composer(str(converted["phi"]))
    evaluate_split(split, micro_backbone, phi, features, cache=False, progress=False)
    (image,), tokens = calls["phi"][-1]
    assert torch.allclose(image, i, atol=1e-5)
    assert torch.allclose(tokens[:, 0], phi_equations(converted["phi_state"], i), atol=1e-5)


def test_evaluation_gives_normalised_models_normalised_features(micro_backbone, cirr, calls):
    _, split = cirr
    normalised = split_features(split, micro_backbone, cache=False, progress=False)
    raw = split_features(split, micro_backbone, False, False, normalise=False)
    ours = combiner_composer(new_combiner(DIM))
    results = []
    for features in (normalised, raw, None):
        results.append(
            evaluate_split(split, micro_backbone, ours, features, cache=False, progress=False)
        )
        (image, _), _ = calls["combiner"][-1]
        references = [normalised[0].index(q.reference) for q in split.queries]
        assert torch.allclose(image, normalised[1][references], atol=1e-6)
    assert all(torch.equal(r.ranks, results[0].ranks) for r in results)


def test_eval_command_feeds_each_method_its_scale(
    tmp_path, micro_model_dir, cirr, converted, calls
):
    root, split = cirr

    def evaluate(*methods, combiner=None) -> dict:
        out = tmp_path / "-".join(methods)
        extra = ["--combiner", str(combiner)] if combiner else []
        for method in methods:
            extra += ["--method", method]
        argv = ["eval", "cirr", "--root", str(root), "--model", str(micro_model_dir), *extra]
        assert (
            main([*argv, "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
        )
        return json.loads((out / "results.json").read_text())["metrics"]

    alone = evaluate("sum", "image")
    together = evaluate("combiner", "sum", "image", combiner=converted["combiner"])
    assert together["sum"] == alone["sum"] and together["image"] == alone["image"]
    backbone = load_backbone(str(micro_model_dir), device="cpu")
    i, t = raw_references(backbone, split)
    (image, text), output = calls["combiner"][-1]
    assert torch.allclose(image, i, atol=1e-5) and torch.allclose(text, t, atol=1e-5)
    assert torch.allclose(output, combiner_equations(converted["combiner_state"], i, t), atol=1e-5)
