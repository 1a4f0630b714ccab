import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.backbone import PadToRatio, build_transform, load_backbone
from retrieval.cli.main import main
from retrieval.errors import BadInput, ModelUnavailable


def test_local_model_round_trip(micro_model_dir, micro_backbone):
    """Weights saved as safetensors load back through the public loader with identical outputs."""
    again = load_backbone(f"local-dir:{micro_model_dir}", device="cpu")
    text = again.encode_texts(["a red circle"])
    assert text.shape == (1, 64)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    assert np.allclose(text, micro_backbone.encode_texts(["a red circle"]), atol=1e-6)
    assert (micro_model_dir / "open_clip_model.safetensors").is_file()


def test_target_pad_keeps_ratio_and_content():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    padded = PadToRatio(1.25)(wide)
    assert padded.size == (300, 240)
    assert padded.getpixel((150, 120)) == (255, 0, 0) and padded.getpixel((150, 2)) == (0, 0, 0)
    assert PadToRatio(1.0)(wide).size == (300, 300)
    nearly_square = Image.new("RGB", (110, 100))
    assert PadToRatio(1.25)(nearly_square) is nearly_square


def test_preprocessing_variants_change_the_input(micro_backbone):
    tall = Image.new("RGB", (40, 160), (0, 255, 0))
    standard = micro_backbone.transform(tall)
    padded = micro_backbone.with_preprocessing("targetpad").transform(tall)
    assert standard.shape == padded.shape == (3, 32, 32)
    assert not torch.allclose(standard, padded)
    with pytest.raises(BadInput):
        build_transform(micro_backbone.base_transform, "stretch")


def test_empty_text_and_truncation(micro_backbone):
    with pytest.raises(BadInput):
        micro_backbone.encode_texts(["   "])
    assert micro_backbone.is_truncated("word " * 100)
    assert not micro_backbone.is_truncated("a red circle")


def test_unknown_model_spec_is_a_clear_error():
    with pytest.raises(BadInput, match="unknown model"):
        load_backbone("NoSuchNet-99", device="cpu")


def test_a_model_that_cannot_be_downloaded_is_a_clear_error(capsys):
    """Offline, a pretrained tag that is not cached used to end the CLI in a traceback."""
    with pytest.raises(ModelUnavailable, match="'ViT-B-32/openai' could not be loaded"):
        load_backbone("ViT-B-32/openai", device="cpu")
    assert main(["index", "anywhere", "--out", "nowhere", "--model", "ViT-B-32/openai"]) == 1
    assert "could not be loaded" in capsys.readouterr().err


def test_openai_weights_get_the_quick_gelu_they_were_trained_with(monkeypatch):
    import open_clip

    from retrieval.backbone import needs_quick_gelu

    assert needs_quick_gelu("ViT-B-32", "openai") and needs_quick_gelu("RN50x4", "openai")
    assert not needs_quick_gelu("ViT-B-32-quickgelu", "openai")
    assert not needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    asked = []

    def offline(name, **options):  # records what the factory was asked for, as if offline
        asked.append((name, options["pretrained"], options["force_quick_gelu"]))
        raise RuntimeError("offline")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    for spec in ("ViT-B-32/openai", "ViT-B-32/laion2b_s34b_b79k"):
        with pytest.raises(ModelUnavailable):
            load_backbone(spec, device="cpu")
    assert asked == [("ViT-B-32", "openai", True), ("ViT-B-32", "laion2b_s34b_b79k", False)]
