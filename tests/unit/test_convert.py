"""Converters for the published CLIP4Cir and SEARLE checkpoints.

The fabricated checkpoints have the released files' layout: `{"epoch": n, "Combiner" | "CLIP" |
"Phi": state_dict}` with the original modules' key names (CLIP4Cir src/combiner.py, SEARLE
src/phi.py, OpenAI clip/model.py) and random values. Each converted model is compared with the
paper's equations written on the raw tensors, not with our own modules.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from retrieval.backbone import load_backbone
from retrieval.cli.main import main
from retrieval.composed.combiner import load_combiner
from retrieval.composed.convert import (
    combiner_config,
    convert_clip4cir,
    convert_searle,
    openai_clip_config,
)
from retrieval.composed.phi import Phi, PhiConfig, load_phi, save_phi
from retrieval.errors import BadInput

# A tiny OpenAI-layout ModifiedResNet CLIP (RN50x4 has layers [4, 6, 10, 6], width 80, 288 px).
TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1},
}


def _linear(generator, out_features: int, in_features: int, name: str) -> dict:
    return {
        f"{name}.weight": torch.randn(out_features, in_features, generator=generator) * 0.1,
        f"{name}.bias": torch.randn(out_features, generator=generator) * 0.1,
    }


def clip4cir_combiner_state(dim=8, projection=32, hidden=64, seed=0) -> dict:
    """The keys of CLIP4Cir's Combiner(clip_feature_dim, projection_dim, hidden_dim).state_dict()."""
    g = torch.Generator().manual_seed(seed)
    return {
        **_linear(g, projection, dim, "text_projection_layer"),
        **_linear(g, projection, dim, "image_projection_layer"),
        **_linear(g, hidden, 2 * projection, "combiner_layer"),
        **_linear(g, dim, hidden, "output_layer"),
        **_linear(g, hidden, 2 * projection, "dynamic_scalar.0"),
        **_linear(g, 1, hidden, "dynamic_scalar.3"),
    }


def searle_phi_state(input_dim=512, hidden=2048, output=512, seed=0) -> dict:
    """The keys of SEARLE's Phi(input_dim, hidden_dim, output_dim, dropout).state_dict()."""
    g = torch.Generator().manual_seed(seed)
    return {
        **_linear(g, hidden, input_dim, "layers.0"),
        **_linear(g, hidden, hidden, "layers.3"),
        **_linear(g, output, hidden, "layers.6"),
    }


def openai_clip_state(seed=0) -> dict:
    """An OpenAI-layout CLIP state dict (open_clip's CLIP has the same keys as OpenAI's clip/model.py)
    with float16-exact values, so open_clip's float16 OpenAI loader reproduces it exactly."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_RN, quick_gelu=True)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = (torch.randn_like(value) * 0.05).half().float()
            if key.endswith("running_var"):
                value = value.abs() + 0.5
        state[key] = value
    return state


def save_checkpoint(path, name: str, state: dict, epoch: int = 7):
    torch.save({"epoch": epoch, name: state}, path)
    return path


def combiner_equations(s: dict, i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CLIP4Cir's combine_features on the raw tensors (dropout off)."""
    p_t = F.relu(F.linear(t, s["text_projection_layer.weight"], s["text_projection_layer.bias"]))
    p_i = F.relu(F.linear(i, s["image_projection_layer.weight"], s["image_projection_layer.bias"]))
    c = torch.cat([p_t, p_i], dim=-1)
    v = F.linear(
        F.relu(F.linear(c, s["combiner_layer.weight"], s["combiner_layer.bias"])),
        s["output_layer.weight"],
        s["output_layer.bias"],
    )
    hidden = F.relu(F.linear(c, s["dynamic_scalar.0.weight"], s["dynamic_scalar.0.bias"]))
    lam = torch.sigmoid(F.linear(hidden, s["dynamic_scalar.3.weight"], s["dynamic_scalar.3.bias"]))
    return F.normalize(v + lam * t + (1 - lam) * i, dim=-1)


def phi_equations(s: dict, x: torch.Tensor) -> torch.Tensor:
    """SEARLE's phi on the raw tensors: Linear-GELU x2, Linear (dropout off)."""
    h = F.gelu(F.linear(x, s["layers.0.weight"], s["layers.0.bias"]))
    h = F.gelu(F.linear(h, s["layers.3.weight"], s["layers.3.bias"]))
    return F.linear(h, s["layers.6.weight"], s["layers.6.bias"])


def test_clip4cir_combiner_gives_the_papers_outputs(tmp_path):
    state = clip4cir_combiner_state()
    src = save_checkpoint(tmp_path / "cirr_comb_RN50x4_fullft.pt", "Combiner", state)
    conversion = convert_clip4cir(src, tmp_path / "combiner", model_spec="RN50x4-quickgelu/openai")
    assert "output_layer.weight -> combiner.3.weight [8, 64]" in conversion.summary()

    combiner = load_combiner(tmp_path / "combiner")
    i, t = torch.randn(5, 8), torch.randn(5, 8)  # CLIP4Cir feeds unnormalised features
    with torch.no_grad():
        assert torch.allclose(combiner(i, t), combiner_equations(state, i, t), atol=1e-6)
    config = combiner.config
    assert (config.dim, config.projection_factor, config.hidden_factor) == (8, 4, 8)
    assert config.licence == "MIT" and "epoch 7" in config.source
    assert (config.model_spec, config.preprocessing) == ("RN50x4-quickgelu/openai", "targetpad")


def test_published_combiner_sizes_map_to_our_factors():
    """CLIP4Cir's README: RN50x4 (640-d), --projection-dim 2560 --hidden-dim 5120."""
    with torch.device("meta"):
        state = clip4cir_combiner_state(dim=640, projection=2560, hidden=5120)
    config = combiner_config(state)
    assert (config.dim, config.projection_factor, config.hidden_factor) == (640, 4, 8)


def test_searle_phi_at_the_released_vit_b32_shapes(tmp_path):
    state = searle_phi_state()
    src = save_checkpoint(tmp_path / "SEARLE_ViT-B32.pt", "Phi", state, epoch=50)
    convert_searle(src, tmp_path / "phi")

    phi = load_phi(tmp_path / "phi")
    x = torch.randn(3, 512) * 10  # SEARLE feeds unnormalised CLIP image features
    with torch.no_grad():
        assert torch.allclose(phi(x)[:, 0], phi_equations(state, x), atol=1e-5)
    config = phi.config
    assert (config.input_dim, config.token_width, config.hidden_mult) == (512, 512, 4)
    assert config.word_tokens == 1 and config.template == "a photo of $ that {caption}"
    assert config.licence == "CC BY-NC 4.0"
    assert config.model_spec == "ViT-B-32-quickgelu/openai"
    assert config.source.startswith("SEARLE_ViT-B32.pt, epoch 50")


def test_licence_and_source_round_trip_and_default_to_none(tmp_path):
    phi = Phi(PhiConfig(input_dim=4, token_width=4, licence="CC BY-NC 4.0", source="here"))
    loaded = load_phi(save_phi(phi, tmp_path / "phi"))
    assert (loaded.config.licence, loaded.config.source) == ("CC BY-NC 4.0", "here")
    config_file = tmp_path / "phi" / "phi_config.json"
    raw = json.loads(config_file.read_text())
    del raw["licence"], raw["source"]  # a config written before the fields existed
    config_file.write_text(json.dumps(raw))
    assert load_phi(tmp_path / "phi").config.licence is None


def test_clip4cir_clip_matches_open_clips_openai_loader(tmp_path):
    state = openai_clip_state()
    src = save_checkpoint(tmp_path / "cirr_clip_RN50x4_fullft.pt", "CLIP", state)
    conversion = convert_clip4cir(src, tmp_path / "clip", arch=TINY_RN)
    assert len(conversion.mapped) == len(state)

    backbone = load_backbone(str(tmp_path / "clip"), device="cpu")
    reference = open_clip.model.build_model_from_openai_state_dict(dict(state)).float().eval()
    pixels = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(1, 99, (2, 16))
    tokens[:, 9] = 99  # the end token: the highest id, where OpenAI's text tower pools
    with torch.no_grad():
        image = F.normalize(reference.encode_image(pixels), dim=-1)
        text = F.normalize(reference.encode_text(tokens), dim=-1)
    assert torch.allclose(backbone.encode_image_tensors(pixels), image, atol=1e-5)
    assert torch.allclose(backbone.encode_token_ids(tokens), text, atol=1e-5)
    assert json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())["model_cfg"][
        "quick_gelu"
    ]


def test_rn50x4_target_has_openais_keys_and_shapes():
    """The shapes OpenAI's clip/model.py gives RN50x4 (width 80, 288 px, 640-d, 12 text layers)."""
    with torch.device("meta"):
        model = open_clip.model.CLIP(**openai_clip_config("RN50x4"))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert len(shapes) == 669
    assert shapes["visual.conv1.weight"] == (40, 3, 3, 3)
    assert shapes["visual.layer1.0.downsample.0.weight"] == (320, 80, 1, 1)
    assert shapes["visual.attnpool.positional_embedding"] == (82, 2560)
    assert shapes["visual.attnpool.c_proj.weight"] == (640, 2560)
    assert shapes["token_embedding.weight"] == (49408, 640)
    assert shapes["transformer.resblocks.11.attn.in_proj_weight"] == (1920, 640)
    assert shapes["text_projection"] == (640, 640)


def _broken(state: dict, fault: str, key: str) -> dict:
    state = dict(state)
    if fault == "missing":
        del state[key]
    elif fault == "unexpected":
        state[key + "_extra"] = state[key]
    else:
        state[key] = torch.zeros(*[n + 1 for n in state[key].shape])
    return state


FAULTS = [
    ("Combiner", clip4cir_combiner_state, "dynamic_scalar.3.bias", "missing", "missing key"),
    ("Combiner", clip4cir_combiner_state, "output_layer.weight", "shape", "expected shape [8, 64]"),
    ("Combiner", clip4cir_combiner_state, "combiner_layer.bias", "unexpected", "unexpected key"),
    ("Phi", searle_phi_state, "layers.6.bias", "missing", "missing key"),
    ("Phi", searle_phi_state, "layers.3.weight", "shape", "expected shape [2048, 2048]"),
    ("CLIP", openai_clip_state, "ln_final.bias", "missing", "missing key"),
    (
        "CLIP",
        openai_clip_state,
        "visual.attnpool.c_proj.weight",
        "shape",
        "expected shape [32, 256]",
    ),
]


@pytest.mark.parametrize(("name", "make", "key", "fault", "message"), FAULTS)
def test_a_checkpoint_that_does_not_fit_is_refused_by_key(
    tmp_path, name, make, key, fault, message
):
    src = save_checkpoint(tmp_path / "model.pt", name, _broken(make(), fault, key))
    out = tmp_path / "out"
    with pytest.raises(BadInput, match="does not fit") as caught:
        if name == "Phi":
            convert_searle(src, out)
        else:
            convert_clip4cir(src, out, arch=TINY_RN)
    assert key in str(caught.value) and message in str(caught.value)
    assert not out.exists()


def test_a_checkpoint_with_code_or_another_model_is_refused(tmp_path):
    torch.save({"epoch": 1, "Phi": searle_phi_state(), "path": tmp_path}, tmp_path / "code.pt")
    with pytest.raises(BadInput, match="weights-only") as caught:
        convert_searle(tmp_path / "code.pt", tmp_path / "out")
    assert "PosixPath" in str(caught.value) and "False" not in str(caught.value)  # no unsafe advice
    save_checkpoint(tmp_path / "other.pt", "Optimizer", {"w": torch.zeros(1)})
    with pytest.raises(BadInput, match="neither a CLIP4Cir Combiner nor"):
        convert_clip4cir(tmp_path / "other.pt", tmp_path / "out")


def test_cli_converts_and_prints_the_mapping(tmp_path, capsys):
    src = save_checkpoint(tmp_path / "SEARLE_ViT-B32.pt", "Phi", searle_phi_state(8, 32, 8))
    assert main(["convert", "searle", str(src), "--out", str(tmp_path / "phi")]) == 0
    printed = capsys.readouterr().out
    assert "layers.0.weight -> layers.0.weight [32, 8]" in printed
    assert f"wrote phi (6 tensors) to {tmp_path / 'phi'}" in printed
    assert load_phi(tmp_path / "phi").config.licence == "CC BY-NC 4.0"

    combiner = save_checkpoint(tmp_path / "comb.pt", "Combiner", clip4cir_combiner_state())
    assert main(["convert", "clip4cir", str(combiner), "--out", str(tmp_path / "combiner")]) == 0
    assert "dynamic_scalar.3.weight -> dynamic_scalar.3.weight [1, 64]" in capsys.readouterr().out
    assert load_combiner(tmp_path / "combiner").config.model_spec == ""  # none given, none recorded

    broken = save_checkpoint(
        tmp_path / "comb.pt", "Combiner", {"output_layer.weight": torch.zeros(1)}
    )
    assert main(["convert", "clip4cir", str(broken), "--out", str(tmp_path / "c")]) == 1
    assert "missing key 'text_projection_layer.weight'" in capsys.readouterr().err
