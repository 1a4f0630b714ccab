"""Converters for the papers' published checkpoints into this project's model folders.

Reproducing a paper's table row should not require retraining. The authors publish torch pickles:

- CLIP4Cir (github.com/ABaldrati/CLIP4Cir, MIT): `torch.save({"epoch": n, <class name>: state_dict})`,
  so a Combiner checkpoint holds its weights under "Combiner" and a fine-tuned CLIP (OpenAI RN50x4)
  under "CLIP". Released as cirr_/fiq_comb_RN50x4_fullft.pt and cirr_/fiq_clip_RN50x4_fullft.pt.
- SEARLE (github.com/miccunifi/SEARLE, CC BY-NC 4.0): phi as SEARLE_ViT-B32.pt / SEARLE_ViT-L14.pt,
  the files its hubconf.py downloads, with the weights under "Phi".

Every tensor is checked against the shape our model expects before anything is written, so a wrong
file fails with the key and both shapes instead of a model that silently computes something else.
The released weights were trained on CLIP features that were *not* L2-normalised (CLIP4Cir
combiner_train.py, SEARLE utils.py), so every converted Combiner and phi records
`input_features: "raw"` and is given the encoders' raw outputs wherever it is applied.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.model import CLIP
from torch import nn

from retrieval.backbone import model_config, save_backbone
from retrieval.composed.baselines import RAW
from retrieval.composed.combiner import Combiner, CombinerConfig, save_combiner
from retrieval.composed.phi import Phi, PhiConfig, save_phi
from retrieval.errors import BadInput, NotFound

CLIP4CIR_REPO = "https://github.com/ABaldrati/CLIP4Cir"
SEARLE_REPO = "https://github.com/miccunifi/SEARLE"
CLIP4CIR_LICENCE = "MIT"
SEARLE_LICENCE = "CC BY-NC 4.0"

# CLIP4Cir src/combiner.py layer -> ours (retrieval/composed/combiner.py); same equations.
COMBINER_LAYERS = {
    "text_projection_layer": "text_projection.0",
    "image_projection_layer": "image_projection.0",
    "combiner_layer": "combiner.0",
    "output_layer": "combiner.3",
    "dynamic_scalar.0": "dynamic_scalar.0",
    "dynamic_scalar.3": "dynamic_scalar.3",
}
# SEARLE src/phi.py uses the same nn.Sequential as ours, so its keys are ours.
PHI_LAYERS = {f"layers.{i}": f"layers.{i}" for i in (0, 3, 6)}
# The OpenAI CLIP the SEARLE phi of each input width was trained with (hubconf.py: 512 / 768).
SEARLE_BACKBONES = {512: "ViT-B-32-quickgelu/openai", 768: "ViT-L-14-quickgelu/openai"}
# Metadata entries of OpenAI's own CLIP files, dropped by clip.model.build_model and open_clip alike.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
MAX_LISTED = 8


@dataclass(frozen=True)
class Mapped:
    source: str
    target: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} {list(self.shape)}"


@dataclass(frozen=True)
class Conversion:
    """What was written where, and which source tensor became which of ours."""

    kind: str
    out: Path
    mapped: list[Mapped]

    def summary(self) -> str:
        lines = [str(m) for m in self.mapped]
        return "\n".join([*lines, f"wrote {self.kind} ({len(self.mapped)} tensors) to {self.out}"])


def read_checkpoint(path: str | Path) -> dict:
    """A torch pickle read with weights_only=True: tensors and plain containers, never code."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no checkpoint file {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise BadInput(
            f"{path} is not a weights-only torch checkpoint ({_load_problem(error)}): either not "
            "a torch file, or it holds objects besides tensors, which are never unpickled here"
        ) from error
    if not isinstance(checkpoint, dict):
        raise BadInput(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint


def _load_problem(error: Exception) -> str:
    """torch's one-line reason, without its advice to turn weights_only off."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return (found.group(1) if found else lines[0]).split(". ")[0].strip().rstrip(".")


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


def state_dict_of(checkpoint: dict, name: str) -> dict[str, torch.Tensor]:
    """The weights saved under `name` ({"epoch": n, name: state_dict}), or a bare state dict."""
    inner = checkpoint.get(name, checkpoint)
    if not _is_state_dict(inner) or not inner:
        found = ", ".join(map(repr, list(checkpoint)[:MAX_LISTED]))
        raise BadInput(f"the checkpoint has no {name!r} state dict (top-level keys: {found})")
    return inner


def _source_note(path: str | Path, checkpoint: dict, repo: str) -> str:
    epoch = checkpoint.get("epoch")
    trained = f", epoch {epoch}" if isinstance(epoch, int) else ""
    return f"{Path(path).name}{trained}, {repo}"


def _shape(state: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    """A tensor's shape, read to size our model; absence or the wrong rank is the file's fault."""
    if key not in state:
        raise BadInput(f"missing key {key!r} in the checkpoint")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise BadInput(f"{key}: expected a {ndim}-d tensor, got shape {list(shape)}")
    return shape


def _factor(size: int, dim: int, what: str) -> int:
    """Our configs size layers as multiples of the feature width."""
    if size % dim:
        raise BadInput(f"{what}: {size} is not a multiple of the feature width {dim}")
    return size // dim


def _with_parameters(layers: dict[str, str]) -> dict[str, str]:
    return {f"{s}.{p}": f"{t}.{p}" for s, t in layers.items() for p in ("weight", "bias")}


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """The target model without memory: its state dict gives the expected keys and shapes."""
    with torch.device("meta"):
        return build()


def transfer(
    state: dict[str, torch.Tensor], plan: dict[str, str], target: nn.Module
) -> list[Mapped]:
    """Load `state` into `target` through `plan` (source key -> our key), refusing any missing or
    unexpected key and any shape ours does not have; all problems are reported at once."""
    expected = target.state_dict()
    assert set(plan.values()) == set(expected), "the plan must cover the model exactly"
    problems = [f"missing key {key!r} (-> {plan[key]})" for key in plan if key not in state]
    problems += [f"unexpected key {key!r}" for key in state if key not in plan]
    problems += [
        f"{key} (-> {plan[key]}): expected shape {list(expected[plan[key]].shape)}, "
        f"got {list(value.shape)}"
        for key, value in state.items()
        if key in plan and value.shape != expected[plan[key]].shape
    ]
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise BadInput("the checkpoint does not fit: " + "; ".join(problems[:MAX_LISTED]) + more)
    weights = {
        target_key: state[key].to(expected[target_key].dtype) for key, target_key in plan.items()
    }
    target.load_state_dict(weights, assign=True)
    return [Mapped(key, target_key, tuple(state[key].shape)) for key, target_key in plan.items()]


def combiner_config(state: dict[str, torch.Tensor], **fields) -> CombinerConfig:
    """Our Combiner's sizes from CLIP4Cir's: Combiner(clip_feature_dim, projection_dim, hidden_dim)."""
    projection, dim = _shape(state, "text_projection_layer.weight", 2)
    hidden = _shape(state, "combiner_layer.weight", 2)[0]
    return CombinerConfig(
        dim=dim,
        projection_factor=_factor(projection, dim, "text_projection_layer.weight rows"),
        hidden_factor=_factor(hidden, dim, "combiner_layer.weight rows"),
        **fields,
    )


def convert_combiner(
    state: dict[str, torch.Tensor], out: str | Path, model_spec: str = "", source: str = ""
) -> Conversion:
    """A CLIP4Cir Combiner state dict -> our Combiner folder (targetpad, as CLIP4Cir trained it)."""
    config = combiner_config(
        state,
        model_spec=model_spec,
        preprocessing="targetpad",
        licence=CLIP4CIR_LICENCE,
        source=source or CLIP4CIR_REPO,
        input_features=RAW,
    )
    combiner = _on_meta(lambda: Combiner(config))
    mapped = transfer(state, _with_parameters(COMBINER_LAYERS), combiner)
    return Conversion("Combiner", save_combiner(combiner, out), mapped)


def phi_config(state: dict[str, torch.Tensor], **fields) -> PhiConfig:
    """Our phi's sizes from SEARLE's: Phi(input_dim, hidden_dim, output_dim), one token per word."""
    hidden, input_dim = _shape(state, "layers.0.weight", 2)
    token_width = _shape(state, "layers.6.weight", 2)[0]
    return PhiConfig(
        input_dim=input_dim,
        token_width=token_width,
        word_tokens=1,
        hidden_mult=_factor(hidden, input_dim, "layers.0.weight rows"),
        **fields,
    )


def convert_phi(
    state: dict[str, torch.Tensor], out: str | Path, model_spec: str = "", source: str = ""
) -> Conversion:
    """A SEARLE phi state dict -> our phi folder; the backbone defaults to SEARLE's by input width."""
    input_dim = _shape(state, "layers.0.weight", 2)[1]
    config = phi_config(
        state,
        model_spec=model_spec or SEARLE_BACKBONES.get(input_dim, ""),
        licence=SEARLE_LICENCE,
        source=source or SEARLE_REPO,
        input_features=RAW,
    )
    phi = _on_meta(lambda: Phi(config))
    mapped = transfer(state, _with_parameters(PHI_LAYERS), phi)
    return Conversion("phi", save_phi(phi, out), mapped)


def openai_clip_config(arch: str | dict) -> dict:
    """open_clip's config of an OpenAI architecture, with the QuickGELU OpenAI trained with."""
    return {**(model_config(arch) if isinstance(arch, str) else arch), "quick_gelu": True}


def convert_clip(
    state: dict[str, torch.Tensor], out: str | Path, arch: str | dict = "RN50x4"
) -> Conversion:
    """An OpenAI-layout CLIP state dict -> an open_clip model folder (`--model` anywhere).

    open_clip's CLIP has OpenAI's parameter names, which is why its own
    `build_model_from_openai_state_dict` loads them unchanged; that function also casts to float16,
    which would round fine-tuned float32 weights, so the same identity mapping is applied here.
    """
    config = openai_clip_config(arch)
    try:
        model = _on_meta(lambda: CLIP(**config))
    except TypeError as error:
        raise BadInput(f"{arch!r} is not an OpenAI-layout CLIP architecture: {error}") from error
    state = {k: v for k, v in state.items() if k not in OPENAI_METADATA_KEYS}
    mapped = transfer(state, {key: key for key in model.state_dict()}, model)
    return Conversion("open_clip model", save_backbone(model, config, out), mapped)


def convert_clip4cir(
    path: str | Path, out: str | Path, model_spec: str = "", arch: str | dict = "RN50x4"
) -> Conversion:
    """A CLIP4Cir checkpoint, Combiner or fine-tuned CLIP (told apart by what it holds)."""
    checkpoint = read_checkpoint(path)
    source = _source_note(path, checkpoint, CLIP4CIR_REPO)
    if "Combiner" in checkpoint or "text_projection_layer.weight" in checkpoint:
        return convert_combiner(state_dict_of(checkpoint, "Combiner"), out, model_spec, source)
    if "CLIP" in checkpoint or "text_projection" in checkpoint:
        return convert_clip(state_dict_of(checkpoint, "CLIP"), out, arch)
    found = ", ".join(map(repr, list(checkpoint)[:MAX_LISTED]))
    raise BadInput(
        f"{path} is neither a CLIP4Cir Combiner nor a fine-tuned CLIP checkpoint "
        f"(expected a 'Combiner' or 'CLIP' entry; top-level keys: {found})"
    )


def convert_searle(path: str | Path, out: str | Path, model_spec: str = "") -> Conversion:
    """A SEARLE phi checkpoint (SEARLE_ViT-B32.pt, SEARLE_ViT-L14.pt) -> our phi folder."""
    checkpoint = read_checkpoint(path)
    source = _source_note(path, checkpoint, SEARLE_REPO)
    return convert_phi(state_dict_of(checkpoint, "Phi"), out, model_spec, source)
