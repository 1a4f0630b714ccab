"""The training-free composers, and the `Composer` signature every composed method shares.

A composer turns (reference image features (B, d), modification texts) into query vectors (B, d)
in the backbone's space; the Searcher and the evaluation protocols call them the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from retrieval.backbone import Backbone

Composer = Callable[[Backbone, torch.Tensor, list[str]], torch.Tensor]


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
