import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.backbone import load_backbone, new_model, save_backbone
from retrieval.errors import BadInput
from retrieval.explain import (
    AttentionRecorder,
    Heatmap,
    _attention_modules,
    _image_score,
    _registered,
    explain,
    query_vector,
    to_image_frame,
)
from tests.helpers import draw_scene


def wide_scene() -> Image.Image:
    """A 96x48 scene: a red disc on the left, a blue square on the right."""
    image = Image.new("RGB", (96, 48), (245, 245, 245))
    image.paste(draw_scene("red", "circle", size=48), (0, 0))
    image.paste(draw_scene("blue", "square", size=48), (48, 0))
    return image


@pytest.mark.parametrize("method", ["attention", "gradcam"])
def test_vit_heatmap_has_the_image_aspect_and_is_finite_and_informative(micro_backbone, method):
    heatmap = explain(micro_backbone, wide_scene(), "a red circle", method=method)
    assert isinstance(heatmap, Heatmap) and heatmap.method == method
    assert heatmap.raw.shape == (48, 96) and heatmap.raw.dtype == np.float32
    assert np.all(np.isfinite(heatmap.raw))
    assert heatmap.raw.min() >= 0 and heatmap.raw.max() == pytest.approx(1.0)
    assert heatmap.raw.std() > 0.01  # not constant on a real scene
    assert heatmap.grid.shape == (4, 4)  # ShapesCLIP-Micro: 32 px, patch 8
    expected = micro_backbone.encode_images([wide_scene().resize((48, 48))])  # sanity of the score
    assert -1 <= heatmap.score <= 1 and np.isfinite(expected).all()
    x, y = heatmap.peak()
    assert 0 <= x < 96 and 0 <= y < 48
    payload = json.loads(json.dumps(heatmap.to_dict()))
    assert payload["width"] == 96 and payload["height"] == 48 and payload["image_size"] == [96, 48]
    assert np.allclose(payload["raw"], heatmap.raw, atol=1e-3) and payload["method"] == method


def test_heatmap_score_is_the_cosine_similarity_of_the_explained_view(micro_backbone):
    image = draw_scene("red", "circle", size=48)  # square: every preprocessing sees the same view
    heatmap = explain(micro_backbone, image, "a red circle")
    expected = (
        micro_backbone.encode_images([image])[0] @ micro_backbone.encode_texts(["a red circle"])[0]
    )
    assert heatmap.score == pytest.approx(float(expected), abs=1e-4)


def test_queries_can_be_text_image_or_vector(micro_backbone):
    image = draw_scene("green", "square")
    by_image = explain(micro_backbone, image, image)
    assert by_image.score == pytest.approx(1.0, abs=1e-4)  # an image matches itself
    vector = micro_backbone.encode_texts(["a green square"])[0]
    by_vector = explain(micro_backbone, image, vector * 3.0)  # normalised on the way in
    by_text = explain(micro_backbone, image, "a green square")
    assert by_vector.score == pytest.approx(by_text.score, abs=1e-5)
    assert np.allclose(by_vector.raw, by_text.raw, atol=1e-5)
    with pytest.raises(BadInput):
        query_vector(micro_backbone, np.ones(5))
    with pytest.raises(BadInput):
        query_vector(micro_backbone, np.zeros(micro_backbone.dim))
    with pytest.raises(BadInput):
        explain(micro_backbone, image, "   ")


def test_attention_gradients_from_hooks_equal_autograd(micro_backbone):
    """dS/dA is derived from the attention output's gradient; check it against autograd itself."""
    model = micro_backbone.model
    recorder = AttentionRecorder(_attention_modules(model.visual))
    pixels = micro_backbone.transform(draw_scene("red", "circle")).unsqueeze(0).requires_grad_(True)
    target = query_vector(micro_backbone, "a red circle")
    with _registered(recorder.hooks()), torch.enable_grad():
        score = _image_score(model, pixels, target)
        softmax_outputs = [record["weights"]._base for record in recorder.records]
        reference = torch.autograd.grad(score, softmax_outputs, retain_graph=True)
        pairs = recorder.weight_gradients(score)
    assert len(pairs) == len(model.visual.transformer.resblocks)
    for (weights, grads), expected in zip(pairs, reference, strict=True):
        assert weights.shape == grads.shape == (1, 2, 17, 17)  # heads, 16 patches + CLS
        assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 17), atol=1e-5)
        assert torch.allclose(grads, expected.view_as(grads), atol=1e-6)
        assert grads.abs().max() > 0


def test_hooks_leave_other_threads_and_later_calls_untouched(micro_backbone):
    image = draw_scene("yellow", "circle")
    before = micro_backbone.encode_images([image])
    recorder = AttentionRecorder(_attention_modules(micro_backbone.model.visual))
    results = {}
    with _registered(recorder.hooks()):
        worker = threading.Thread(
            target=lambda: results.update(vec=micro_backbone.encode_images([image]))
        )
        worker.start()
        worker.join()
    assert recorder.records == [{} for _ in recorder.records]  # the other thread's pass was ignored
    assert np.allclose(results["vec"], before, atol=1e-6)
    explain(micro_backbone, image, "a yellow circle")
    blocks = micro_backbone.model.visual.transformer.resblocks
    assert all(
        not block.attn._forward_hooks and not block.attn._forward_pre_hooks for block in blocks
    )
    assert np.allclose(micro_backbone.encode_images([image]), before, atol=1e-6)


def test_concurrent_explanations_equal_sequential_ones(micro_backbone):
    images = [
        draw_scene(c, s) for c, s in [("red", "circle"), ("blue", "square"), ("green", "circle")]
    ]
    sequential = [explain(micro_backbone, image, "a blue square").raw for image in images]
    results = [None] * len(images)

    def run(position):
        results[position] = explain(micro_backbone, images[position], "a blue square").raw

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(results, sequential, strict=True))


def test_frame_geometry_follows_preprocessing():
    grid = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    padded = to_image_frame(grid, (200, 100), "squarepad")
    assert padded.shape == (100, 200) and padded.min() == 0 and padded.max() == pytest.approx(1)
    assert (padded.max(axis=0) > 0).all() and (padded.max(axis=1) > 0).all()  # all of it was seen
    cropped = to_image_frame(grid, (200, 100), "standard")
    assert cropped.shape == (100, 200)
    assert cropped[:, :50].max() == 0 and cropped[:, 150:].max() == 0  # centre crop only
    assert (cropped[:, 50:150].max(axis=0) > 0).all()
    assert np.all(np.diff(cropped[:, 100]) >= 0)  # grid rows increase downwards, so does the map
    big = to_image_frame(grid, (3000, 1000), "squarepad")
    assert big.shape == (85, 256)  # long side capped, aspect kept


def test_explain_with_the_backbone_view_leaves_cropped_parts_at_zero(micro_backbone):
    heatmap = explain(micro_backbone, wide_scene(), "a red circle", whole_image=False)
    assert heatmap.raw.shape == (48, 96)
    assert heatmap.raw[:, :20].max() == 0 and heatmap.raw[:, 76:].max() == 0
    assert heatmap.raw[:, 24:72].max() == pytest.approx(1.0)


def test_overlay_blends_at_the_requested_opacity(micro_backbone):
    image = wide_scene()
    heatmap = explain(micro_backbone, image, "a red circle")
    plain = heatmap.overlay(opacity=0.0)
    assert plain.size == image.size and np.array_equal(np.asarray(plain), np.asarray(image))
    full = np.asarray(heatmap.overlay(opacity=1.0, colormap="gray"), dtype=float)
    expected = np.asarray(
        Image.fromarray(heatmap.raw).resize(image.size, Image.Resampling.BILINEAR)
    )
    assert np.allclose(full[..., 0] / 255, expected, atol=0.01)
    half = np.asarray(heatmap.overlay(opacity=0.5), dtype=float)
    assert (
        0
        < np.abs(half - np.asarray(image, dtype=float)).mean()
        < np.abs(
            np.asarray(heatmap.overlay(opacity=1.0), dtype=float) - np.asarray(image, dtype=float)
        ).mean()
    )
    with pytest.raises(BadInput):
        heatmap.overlay(opacity=1.5)
    with pytest.raises(BadInput):
        heatmap.overlay(colormap="no-such-map")


def test_resnet_backbones_get_grad_cam(tmp_path):
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    torch.manual_seed(0)
    import open_clip

    model = open_clip.CLIP(**config)
    backbone = load_backbone(str(save_backbone(model, config, tmp_path / "rn")), device="cpu")
    heatmap = explain(backbone, wide_scene(), "a red circle")
    assert heatmap.method == "gradcam" and heatmap.grid.shape == (2, 2)
    assert heatmap.raw.shape == (48, 96) and np.all(np.isfinite(heatmap.raw))
    with pytest.raises(BadInput):
        explain(backbone, wide_scene(), "a red circle", method="attention")


def test_unknown_method_and_bad_layer_are_refused(micro_backbone):
    with pytest.raises(BadInput):
        explain(micro_backbone, wide_scene(), "x", method="score-cam")
    with pytest.raises(BadInput):
        explain(micro_backbone, wide_scene(), "x", start_layer=2)  # the micro model has 2 blocks
    last_only = explain(micro_backbone, wide_scene(), "a red circle", start_layer=-1)
    assert last_only.raw.shape == (48, 96) and np.isfinite(last_only.raw).all()


def test_frozen_weights_still_explain(tmp_path):
    torch.manual_seed(1)
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    model.requires_grad_(False)
    backbone = load_backbone(
        str(save_backbone(model, "ShapesCLIP-Micro", tmp_path / "m")), device="cpu"
    )
    backbone.model.requires_grad_(False)
    heatmap = explain(backbone, wide_scene(), "a red circle")
    assert heatmap.raw.std() > 0.01
    assert all(p.grad is None for p in backbone.model.parameters())


# -- proven on the Shapes world with the shipped model ---------------------------------------------
def pointing_check(model_dir, trials: int = 40) -> dict:
    from bench.explain_benchmark import baseline_accuracies, pointing_accuracy, pointing_trials

    backbone = load_backbone(str(model_dir), device="cpu")
    sample = pointing_trials(trials, seed=7)
    return {"heatmap": pointing_accuracy(backbone, sample), **baseline_accuracies(sample)}


def test_pointing_game_on_shapes_beats_centre_and_random_baselines():
    """The shipped Shapes model must exist: this check is part of CI, never skipped."""
    from retrieval.config import SHAPES_MODEL_DIR

    assert SHAPES_MODEL_DIR.is_dir(), f"{SHAPES_MODEL_DIR} is missing: the Shapes model must ship"
    result = pointing_check(SHAPES_MODEL_DIR)
    assert result["heatmap"] >= 0.5, result
    assert result["heatmap"] >= result["centre"] + 0.25, result
    assert result["heatmap"] >= result["random point"] + 0.25, result
