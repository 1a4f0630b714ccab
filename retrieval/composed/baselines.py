"""The training-free composers, and the `Composer` signature every composed method shares.

A composer turns (reference image features (B, d), modification texts) into query vectors (B, d)
in the backbone's space; the Searcher and the evaluation protocols call them the same way.

The reference features come L2-normalised, except for a composer whose `input_features` attribute
is "raw": it gets the image encoder's output before normalisation (what CLIP4Cir's Combiner and
SEARLE's phi were trained on) and encodes its texts the same way. Callers read the attribute with
`input_features(composer)`; composers without it take normalised features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from retrieval.backbone import Backbone
from retrieval.errors import BadInput

Composer = Callable[[Backbone, torch.Tensor, list[str]], torch.Tensor]

NORMALISED = "normalised"  # unit-length CLIP features (what this project trains on)
RAW = "raw"  # the encoders' outputs before normalisation (the papers' released weights)
INPUT_FEATURES = (NORMALISED, RAW)


def check_input_features(value: str) -> str:
    """A model's recorded `input_features`, refused when it is neither scale."""
    if value not in INPUT_FEATURES:
        raise BadInput(
            f"input_features is {value!r}; expected {NORMALISED!r} (features of unit length) or "
            f"{RAW!r} (the encoders' outputs before normalisation)"
        )
    return value


def input_features(composer) -> str:
    """The scale of the features a composer takes: "normalised" (default) or "raw"."""
    return getattr(composer, "input_features", NORMALISED)


def weights_licence(composer) -> str | None:
    """The licence of weights made elsewhere (converted SEARLE phi: CC BY-NC 4.0), shown
    wherever the method is offered; None for our own weights and the training-free baselines."""
    return getattr(composer, "licence", None)


def sum_composer(
    backbone: Backbone, image_features: torch.Tensor, texts: list[str]
) -> torch.Tensor:
    """Training-free baseline: normalise(image + text)."""
    text_features = backbone.encode_token_ids(backbone.tokenize(texts)).to(image_features.device)
    return torch.nn.functional.normalize(image_features + text_features, dim=-1)


def image_only_composer(
    backbone: Backbone, image_features: torch.Tensor, texts: list[str]
) -> torch.Tensor:
    return image_features


def text_only_composer(
    backbone: Backbone, image_features: torch.Tensor, texts: list[str]
) -> torch.Tensor:
    return backbone.encode_token_ids(backbone.tokenize(texts)).to(image_features.device)
