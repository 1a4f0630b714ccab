"""The CLIP4Cir Combiner for composed image retrieval, and its two-stage training.

The Combiner fuses a reference image feature `i` and a modification text feature `t` (CLIP
features of size d) into one query feature:

    projections   p_t = Dropout(ReLU(Linear(d, 4d)(t))),  p_i = same with its own weights on i
    combined      c = [p_t, p_i]                                           (8d)
    residual      v = Linear(8d, d)(Dropout(ReLU(Linear(8d, 8d)(c))))
    mixing        lambda = Sigmoid(Linear(8d, 1)(Dropout(ReLU(Linear(8d, 8d)(c)))))
    output        normalise(v + lambda * t + (1 - lambda) * i)

Combiners trained here take L2-normalised features; CLIP4Cir trained its released Combiners on the
encoders' raw outputs. `CombinerConfig.input_features` records which, and the composer encodes the
text and expects the reference at that scale.

A trained Combiner is a folder: combiner.safetensors + combiner_config.json. Training lives in
`retrieval.train.composed`; this module only builds, saves, loads and applies the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.artifacts import Layout, check_trained_for, load_artifact, save_artifact
from retrieval.composed.baselines import NORMALISED, RAW, check_input_features
from retrieval.errors import BadInput

WEIGHTS_FILE = "combiner.safetensors"


CONFIG_FILE = "combiner_config.json"
LAYOUT = Layout("Combiner", WEIGHTS_FILE, CONFIG_FILE)


@dataclass
class CombinerConfig:
    """What a saved Combiner needs to be rebuilt and checked against the backbone in use."""

    dim: int
    dropout: float = 0.5
    projection_factor: int = 4  # projections d -> 4d
    hidden_factor: int = 8  # combiner / dynamic-scalar hidden layers 8d
    model_spec: str = ""  # backbone it was trained on (informative)
    preprocessing: str = "standard"
    model_fingerprint: list[float] = field(
        default_factory=list
    )  # text features of a probe sentence
    training: dict = field(default_factory=dict)  # recipe, data, best metrics
    licence: str | None = None  # of the weights, when they come from elsewhere (e.g. "MIT")
    source: str | None = None  # where converted weights came from (file, repository)
    # the scale of the features it was trained on: "normalised" (ours), "raw" (CLIP4Cir's weights)
    input_features: str = NORMALISED

    def __post_init__(self):
        check_input_features(self.input_features)


class Combiner(nn.Module):
    """Reference image feature + text feature -> normalised composed query feature."""

    def __init__(self, config: CombinerConfig):
        super().__init__()
        self.config = config
        d, p, h = (
            config.dim,
            config.projection_factor * config.dim,
            config.hidden_factor * config.dim,
        )
        self.text_projection = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Dropout(config.dropout))
        self.image_projection = nn.Sequential(
            nn.Linear(d, p), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.combiner = nn.Sequential(
            nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(h, d)
        )
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * p, h),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, 1),
            nn.Sigmoid(),
        )

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        combined = torch.cat(
            [self.text_projection(text_features), self.image_projection(image_features)], dim=-1
        )
        mix = self.dynamic_scalar(combined)
        output = self.combiner(combined) + mix * text_features + (1 - mix) * image_features
        return F.normalize(output, dim=-1)


def new_combiner(dim: int, **config) -> Combiner:
    return Combiner(CombinerConfig(dim=dim, **config))


def save_combiner(combiner: Combiner, directory: str | Path) -> Path:
    """Write combiner.safetensors + combiner_config.json (what `load_combiner` reads)."""
    return save_artifact(combiner, combiner.config, directory, LAYOUT)


def load_combiner(spec: str | Path, device: str | torch.device | None = None) -> Combiner:
    """A Combiner from a folder ("local-dir:" optional) or the Hub ("hf-hub:org/repo[@revision]")."""
    return load_artifact(spec, LAYOUT, Combiner, CombinerConfig, device)


class CombinerComposer:
    """Composer "combiner": `composer(backbone, image_features (B,d), texts) -> (B,d)` normalised.

    The image features and the text features it encodes are at the scale the Combiner was
    trained on (`input_features`: normalised, or raw for CLIP4Cir's released weights)."""

    def __init__(self, combiner: Combiner):
        self.combiner = combiner.eval()
        self.input_features = combiner.config.input_features
        self.licence = combiner.config.licence
        self._checked: set[int] = set()

    def check(self, backbone) -> None:
        """Refuse a backbone of another dimension, or the same dimension with other weights."""
        if id(backbone.model) in self._checked:
            return
        config = self.combiner.config
        sizes = (
            f"features {config.dim}; the model in use embeds into {backbone.dim}"
            if backbone.dim != config.dim
            else ""
        )
        check_trained_for(backbone, "this Combiner", config, sizes, "train-combiner")
        self._checked.add(id(backbone.model))

    @torch.no_grad()
    def __call__(self, backbone, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        self.check(backbone)
        if len(texts) != len(image_features):
            raise BadInput(f"{len(image_features)} reference images but {len(texts)} texts")
        device = next(self.combiner.parameters()).device
        tokens = backbone.tokenize(list(texts))
        normalise = self.input_features != RAW
        text_features = backbone.encode_token_ids(tokens, normalise).to(device, torch.float32)
        query = self.combiner(image_features.to(device, torch.float32), text_features)
        return query.to(image_features.device)


def combiner_composer(
    combiner: Combiner | str | Path, device: str | None = None
) -> CombinerComposer:
    """Composer for `Searcher.composers["combiner"]`; `combiner` is a Combiner, folder or hf-hub: id."""
    if not isinstance(combiner, Combiner):
        combiner = load_combiner(combiner, device=device)
    return CombinerComposer(combiner)
