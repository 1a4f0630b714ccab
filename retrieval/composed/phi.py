"""Zero-shot composed retrieval by textual inversion (SEARLE-style).

A small network phi maps a reference image feature to a pseudo-word: a vector living in the
token-embedding space of the CLIP text encoder. The pseudo-word replaces a placeholder token in
"a photo of $ that {caption}", and the unchanged text encoder turns the prompt into the query.
phi is trained on unlabeled images only, so any collection gets composed search without triplets.

Differences from the paper, on purpose:
- the regulariser that keeps pseudo-words close to real words uses a *templated* phrase set
  ("a photo of {} on a wall", ...) around the nearest concept word, instead of phrases written
  by a language model;
- phi (and OTI) is trained with the pseudo-word in a random phrase of that set on each step, not
  only in "a photo of $": a pseudo-word that has seen several contexts keeps its meaning inside
  the longer composed prompt (Shapes test, zero-shot without the image: R@1 5.9 -> 9.7);
- a pseudo-word may span several token embeddings (`word_tokens`, SEARLE uses 1): "$" then stands
  for "$ $ $" and phi fills each slot. One token cannot hold a whole multi-object scene for a
  small text encoder (Shapes test R@1: 13.2 for the best one-token query, 15.7 with five tokens);
- the placeholder id is looked up in the tokenizer in use, never hard-coded.

phi trained here maps L2-normalised image features; SEARLE's released phi maps the image encoder's
raw output. `PhiConfig.input_features` records which, and the zero-shot composer expects the
reference at that scale.

This module holds the model side (phi, pseudo-token injection, the zero-shot composer, save and
load); training phi and OTI live in `retrieval.train.phi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from open_clip.transformer import text_global_pool
from torch import nn
from torch.nn import functional as F

from retrieval.artifacts import Layout, check_trained_for, load_artifact, save_artifact
from retrieval.backbone import model_fingerprint
from retrieval.composed.baselines import NORMALISED, check_input_features
from retrieval.errors import BadInput

PLACEHOLDER = "$"


DEFAULT_TEMPLATE = "a photo of $ that {caption}"


WEIGHTS_FILE = "phi.safetensors"


CONFIG_FILE = "phi_config.json"
LAYOUT = Layout("phi", WEIGHTS_FILE, CONFIG_FILE)


# Phrases around a concept word for the regulariser ({} is the concept or the pseudo-word).
REGULARISER_TEMPLATES = (
    "a photo of {}",
    "a picture of {}",
    "an image showing {}",
    "a close-up photo of {}",
    "{} in a museum",
    "a drawing of {}",
    "a painting of {}",
    "a photo of {} on a plain background",
    "there is {} in the picture",
    "a small {} in the center",
    "a large {}",
    "a photo of the {} seen from the front",
)


def default_train_prompts(placeholder: str = PLACEHOLDER) -> list[str]:
    """The contexts phi's pseudo-word is trained in: the regulariser's phrase set."""
    return [template.format(placeholder) for template in REGULARISER_TEMPLATES]


@dataclass
class PhiConfig:
    """Everything needed to rebuild phi and use it with the right backbone and prompt."""

    input_dim: int
    token_width: int
    word_tokens: int = 1  # token embeddings per pseudo-word ("$" stands for that many slots)
    hidden_mult: int = 4
    dropout: float = 0.5
    placeholder: str = PLACEHOLDER
    template: str = DEFAULT_TEMPLATE
    # contexts of the pseudo-word during training, one drawn per image and step
    train_prompts: list[str] = field(default_factory=default_train_prompts)
    image_weight: float = 0.0  # >0: query = normalise(prompt feature + weight * reference feature)
    model_spec: str = ""
    model_fingerprint: list = field(default_factory=list)  # catches "same size, other weights"
    training: dict = field(default_factory=dict)
    licence: str | None = None  # of weights made elsewhere (SEARLE: CC BY-NC 4.0)
    source: str | None = None  # where converted weights came from (file, repository)
    # the scale of the image features it maps: "normalised" (ours), "raw" (SEARLE's weights)
    input_features: str = NORMALISED

    def __post_init__(self):
        check_input_features(self.input_features)


class Phi(nn.Module):
    """Image feature (d) -> pseudo-word of k token embeddings (k, w): Linear-GELU-Dropout x2, Linear."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_mult * config.input_dim
        self.layers = nn.Sequential(
            nn.Linear(config.input_dim, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, config.word_tokens * config.token_width),
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, k, w)."""
        tokens = self.layers(image_features)
        return tokens.view(len(tokens), self.config.word_tokens, self.config.token_width)


def new_phi(
    backbone, template: str = DEFAULT_TEMPLATE, placeholder: str = PLACEHOLDER, **kwargs
) -> Phi:
    """A fresh phi sized for this backbone's image features and token embeddings."""
    kwargs.setdefault("train_prompts", default_train_prompts(placeholder))
    config = PhiConfig(
        input_dim=backbone.dim,
        token_width=token_width(backbone.model),
        placeholder=placeholder,
        template=template,
        model_spec=str(backbone.spec),
        model_fingerprint=model_fingerprint(backbone),
        **kwargs,
    )
    return Phi(config).to(backbone.device)


def text_tower(model: nn.Module) -> nn.Module:
    """The module holding token_embedding/positional_embedding/transformer/ln_final/text_projection.

    open_clip's CLIP keeps them on the model itself, CustomTextCLIP on `model.text`. Towers that
    are Hugging Face encoders, or that add a class token or padding masks (CoCa), are refused:
    their forward pass differs from the one reproduced here.
    """
    tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    if tower is None or not hasattr(tower, "token_embedding") or not hasattr(tower, "transformer"):
        raise BadInput(
            "textual inversion needs an open_clip text transformer (not a Hugging Face text tower)"
        )
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        raise BadInput(
            "textual inversion does not support text towers with a class token or padding mask"
        )
    return tower


def token_width(model: nn.Module) -> int:
    return int(text_tower(model).token_embedding.weight.shape[1])


def _special_ids(tokenizer) -> set[int]:
    return set(tokenizer([""])[0].tolist())


def placeholder_token_id(tokenizer, placeholder: str = PLACEHOLDER) -> int:
    """The id the tokenizer in use gives the placeholder; it must be exactly one token."""
    ids = [i for i in tokenizer([placeholder])[0].tolist() if i not in _special_ids(tokenizer)]
    if len(ids) != 1:
        raise BadInput(
            f"placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer; pick one that is a single token"
        )
    return ids[0]


def word_embedding(backbone, word: str) -> torch.Tensor:
    """The token embedding of a real word (mean over its tokens when it has several)."""
    tokenizer = backbone.tokenizer
    ids = [i for i in tokenizer([word])[0].tolist() if i not in _special_ids(tokenizer)]
    if not ids:
        raise BadInput(f"{word!r} has no tokens")
    table = text_tower(backbone.model).token_embedding.weight
    return table[torch.tensor(ids, device=table.device)].mean(0).detach()


def _used_length(tower, token_ids: torch.Tensor, pool_type: str, eos_id) -> int:
    """Under a causal mask nothing after the pooled (end) token changes it: run only up to there."""
    if getattr(tower, "attn_mask", None) is None or pool_type not in ("argmax", "eos"):
        return token_ids.shape[1]
    ends = (
        token_ids.argmax(dim=1)
        if pool_type == "argmax"
        else (token_ids == eos_id).int().argmax(dim=1)
    )
    return int(ends.max()) + 1


def encode_with_pseudo_tokens(
    model: nn.Module, token_ids: torch.Tensor, pseudo_tokens: torch.Tensor, placeholder_id: int
) -> torch.Tensor:
    """Encode tokenised prompts with the first k placeholders of each row replaced by the row's
    pseudo-word of k tokens.

    Same computation as open_clip's `encode_text`, with substitutions before the transformer;
    differentiable with respect to `pseudo_tokens` (B, w) or (B, k, w). Returns normalised (B, d).
    """
    if pseudo_tokens.ndim == 2:
        pseudo_tokens = pseudo_tokens.unsqueeze(1)
    tower = text_tower(model)
    device = tower.token_embedding.weight.device
    pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
    eos_id = (
        getattr(tower, "text_eos_id", None) if tower is model else getattr(tower, "eos_id", None)
    )
    token_ids = token_ids.to(device)
    token_ids = token_ids[:, : _used_length(tower, token_ids, pool_type, eos_id)]
    is_placeholder = token_ids == placeholder_id
    count = pseudo_tokens.shape[1]
    if not bool((is_placeholder.sum(dim=1) >= count).all()):
        raise BadInput(
            f"a prompt lost its placeholder (needs {count} placeholder token(s); prompt too long, "
            "or the placeholder touches punctuation)"
        )
    length = token_ids.shape[1]
    slots = is_placeholder & (is_placeholder.cumsum(dim=1) <= count)  # the first k of each row
    cast_dtype = tower.transformer.get_cast_dtype()
    embeddings = tower.token_embedding(token_ids).to(cast_dtype)
    source = pseudo_tokens.to(device, cast_dtype).reshape(-1, embeddings.shape[-1])
    embeddings = embeddings.masked_scatter(slots.unsqueeze(-1), source)  # row by row, in order
    x = embeddings + tower.positional_embedding[:length].to(cast_dtype)
    attn_mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    x = text_global_pool(x, token_ids, pool_type, eos_token_id=eos_id)
    projection = tower.text_projection
    if isinstance(projection, nn.Linear):
        x = projection(x)
    elif projection is not None:
        x = x @ projection
    return F.normalize(x.float(), dim=-1)


def fill_template(template: str, caption: str = "", placeholder: str = PLACEHOLDER) -> str:
    """Put the caption in the prompt; a placeholder character inside the caption is blanked out."""
    if placeholder not in template:
        raise BadInput(f"the prompt template {template!r} has no placeholder {placeholder!r}")
    return template.replace("{caption}", caption.replace(placeholder, " ").strip()).strip()


def encode_prompts(
    backbone, prompts: list[str], pseudo_tokens: torch.Tensor, placeholder: str = PLACEHOLDER
):
    """Tokenise with the backbone's tokenizer and encode with one pseudo-word per prompt: (B, w),
    or (B, k, w) for pseudo-words of k tokens, where the prompt's "$" is widened to k slots."""
    count = pseudo_tokens.shape[1] if pseudo_tokens.ndim == 3 else 1
    if count > 1:
        slots = " ".join([placeholder] * count)
        prompts = [prompt.replace(placeholder, slots, 1) for prompt in prompts]
    token_ids = backbone.tokenizer(prompts)
    placeholder_id = placeholder_token_id(backbone.tokenizer, placeholder)
    return encode_with_pseudo_tokens(backbone.model, token_ids, pseudo_tokens, placeholder_id)


def caption_orders(captions: Sequence[str]) -> list[str]:
    """FashionIQ-style: both orders of two captions joined by "and" (one caption stays as it is)."""
    captions = [c.strip().strip(".") for c in captions if c and c.strip()]
    if not captions:
        raise BadInput("the modification text is empty")
    if len(captions) == 1:
        return captions
    return [" and ".join(captions), " and ".join(reversed(captions))]


class ZeroShotComposer:
    """Composer "zero-shot": phi(reference) as a pseudo-word in the prompt, encoded by CLIP's text tower.

    Called as `composer(backbone, image_features (B,d), texts)`, the features at the scale phi was
    trained on (`input_features`: normalised, or raw for SEARLE's released weights); each text is a
    string or a sequence of captions, whose orders are averaged (FashionIQ). Returns normalised
    (B,d) features.
    """

    def __init__(self, phi: Phi, template: str | None = None, image_weight: float | None = None):
        self.phi = phi.eval()
        self.input_features = phi.config.input_features
        self.licence = phi.config.licence
        self.template = template or phi.config.template
        self.placeholder = phi.config.placeholder
        self.image_weight = phi.config.image_weight if image_weight is None else image_weight
        self._checked: set[int] = set()

    def check(self, backbone) -> None:
        """Refuse a backbone phi was not trained for (other sizes, or same sizes and other weights)."""
        if id(backbone.model) in self._checked:
            return
        config, width = self.phi.config, token_width(backbone.model)
        sizes = (
            f"features {config.input_dim}, tokens {config.token_width}; the model in use has "
            f"features {backbone.dim}, tokens {width}"
            if (config.input_dim, config.token_width) != (backbone.dim, width)
            else ""
        )
        check_trained_for(backbone, "phi", config, sizes, "train-phi")
        self._checked.add(id(backbone.model))

    @torch.no_grad()
    def __call__(self, backbone, image_features: torch.Tensor, texts: Sequence) -> torch.Tensor:
        self.check(backbone)
        if len(texts) != len(image_features):
            raise BadInput(f"{len(image_features)} reference images but {len(texts)} texts")
        device = next(self.phi.parameters()).device
        tokens = self.phi(image_features.to(device, torch.float32))
        prompts, owners = [], []
        for row, text in enumerate(texts):
            variants = caption_orders([text] if isinstance(text, str) else list(text))
            prompts += [fill_template(self.template, v, self.placeholder) for v in variants]
            owners += [row] * len(variants)
        owners_t = torch.tensor(owners, device=tokens.device)
        features = encode_prompts(backbone, prompts, tokens[owners_t], self.placeholder)
        summed = torch.zeros(len(texts), features.shape[1], device=features.device)
        summed.index_add_(0, owners_t.to(features.device), features)
        query = F.normalize(summed, dim=-1)
        if self.image_weight:
            reference = F.normalize(image_features.to(query.device, torch.float32), dim=-1)
            query = F.normalize(query + self.image_weight * reference, dim=-1)
        return query.to(image_features.device)


def zero_shot_composer(
    phi: Phi | str,
    template: str | None = None,
    device: str | None = None,
    image_weight: float | None = None,
) -> ZeroShotComposer:
    """Composer for `Searcher.composers["zero-shot"]`; `phi` is a Phi or a local dir / hf-hub: id."""
    if not isinstance(phi, Phi):
        phi = load_phi(phi, device=device)
    return ZeroShotComposer(phi, template, image_weight)


def save_phi(phi: Phi, directory: str | Path) -> Path:
    """Write phi.safetensors + phi_config.json (readable by `load_phi`)."""
    return save_artifact(phi, phi.config, directory, LAYOUT)


def load_phi(spec: str | Path, device: str | torch.device | None = None) -> Phi:
    """Load phi from a folder (or "local-dir:PATH") or from the Hub ("hf-hub:org/repo")."""
    return load_artifact(spec, LAYOUT, Phi, PhiConfig, device, upgrade=_single_prompt_upgrade)


def _single_prompt_upgrade(raw: dict) -> dict:
    """Configs written before phi trained on several prompts name one `train_prompt`."""
    if "train_prompt" in raw:
        raw["train_prompts"] = [raw.pop("train_prompt")]
    return raw
