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
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from open_clip.transformer import text_global_pool
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from retrieval.backbone import fingerprint_matches, model_fingerprint
from retrieval.cli_common import add_device, add_preprocessing, add_seed
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.training import TrainConfig, seed_everything, train_loop

PLACEHOLDER = "$"
DEFAULT_TEMPLATE = "a photo of $ that {caption}"
TEMPERATURE = 0.25
WEIGHTS_FILE = "phi.safetensors"
CONFIG_FILE = "phi_config.json"

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

# A generic vocabulary of visual concepts; pass your own (e.g. the words of a collection) for better words.
_CONCEPT_WORDS = """
    person man woman child face portrait crowd animal dog cat horse bird fish cow lion tree
    flower plant fruit leaf landscape mountain river sea sky cloud building house church
    castle bridge street city room table chair bed vase bowl bottle cup plate jar box book
    letter map coin jewel ring necklace crown sword shield helmet armour dress shirt hat
    shoe bag car boat ship train plane bicycle clock lamp mirror window door statue
    sculpture bust relief mask painting drawing print photograph textile carpet tapestry
    pottery ceramic glass stone wood metal gold silver bronze marble instrument guitar
    piano drum tool weapon toy doll icon angel saint cross altar column arch tower garden
    field forest snow shape circle square triangle star heart line dot pattern object red
    green blue yellow black white orange purple brown pink gray
"""
DEFAULT_CONCEPTS = tuple(_CONCEPT_WORDS.split())


def default_train_prompts(placeholder: str = PLACEHOLDER) -> list[str]:
    """The contexts phi's pseudo-word is trained in: the regulariser's phrase set."""
    return [template.format(placeholder) for template in REGULARISER_TEMPLATES]


# --------------------------------------------------------------------------- phi network


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


# --------------------------------------------------------------------------- pseudo-token text encoding


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


# --------------------------------------------------------------------------- composer


class ZeroShotComposer:
    """Composer "zero-shot": phi(reference) as a pseudo-word in the prompt, encoded by CLIP's text tower.

    Called as `composer(backbone, image_features (B,d) normalised, texts)`; each text is a string or a
    sequence of captions, whose orders are averaged (FashionIQ). Returns normalised (B,d) features.
    """

    def __init__(self, phi: Phi, template: str | None = None, image_weight: float | None = None):
        self.phi = phi.eval()
        self.template = template or phi.config.template
        self.placeholder = phi.config.placeholder
        self.image_weight = phi.config.image_weight if image_weight is None else image_weight
        self._checked: set[int] = set()

    def check(self, backbone) -> None:
        """Refuse a backbone phi was not trained for (other sizes, or same sizes and other weights)."""
        if id(backbone.model) in self._checked:
            return
        config, width = self.phi.config, token_width(backbone.model)
        trained_on = config.model_spec or "another model"
        if (config.input_dim, config.token_width) != (backbone.dim, width):
            raise IndexMismatch(
                f"phi was trained for {trained_on} (features {config.input_dim}, tokens "
                f"{config.token_width}); the model in use has features {backbone.dim}, tokens {width}: "
                "train phi for this model (train-phi)"
            )
        if not fingerprint_matches(config.model_fingerprint, backbone):
            raise IndexMismatch(
                f"phi was trained for {trained_on}; the model in use ({backbone.spec}) has the same "
                "sizes but different weights: train phi for this model (train-phi)"
            )
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


# --------------------------------------------------------------------------- losses


def contrastive_loss(
    queries: torch.Tensor, targets: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; the i-th query's positive is the i-th target."""
    logits = queries @ targets.T / temperature
    labels = torch.arange(len(queries), device=queries.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class WordRegulariser:
    """Keeps pseudo-words usable as words: a phrase with the pseudo-word should mean the same as the
    phrase with the image's nearest concept word (templated phrases stand in for SEARLE's
    language-model phrases)."""

    def __init__(
        self,
        backbone,
        concepts: Sequence[str] = DEFAULT_CONCEPTS,
        templates: Sequence[str] = REGULARISER_TEMPLATES,
        placeholder: str = PLACEHOLDER,
    ):
        concepts = [c.strip() for c in concepts if c and c.strip()]
        if not concepts:
            raise BadInput("the regulariser needs at least one concept word")
        self.backbone, self.concepts, self.placeholder = backbone, concepts, placeholder
        self.templates = list(templates)
        self.concept_features = self._encode([f"a photo of {c}" for c in concepts])
        # every (template, concept) phrase encoded once: (templates, concepts, d)
        phrases = [t.format(c) for t in self.templates for c in concepts]
        self.phrase_features = self._encode(phrases).view(len(self.templates), len(concepts), -1)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        chunks = [
            self.backbone.encode_token_ids(self.backbone.tokenizer(texts[i : i + 256])).clone()
            for i in range(0, len(texts), 256)
        ]
        return torch.cat(chunks).float()

    def nearest_concepts(self, image_features: torch.Tensor) -> torch.Tensor:
        """Index of the concept word closest to each image (CLIP zero-shot classification)."""
        similarities = image_features.to(self.concept_features.device) @ self.concept_features.T
        return similarities.argmax(dim=1)

    def loss(
        self, pseudo_tokens: torch.Tensor, concept_ids: torch.Tensor, rng: random.Random
    ) -> torch.Tensor:
        """1 - cos(phrase with the pseudo-word, same phrase with the concept), random phrases."""
        template_ids = [rng.randrange(len(self.templates)) for _ in range(len(pseudo_tokens))]
        rows = torch.tensor(template_ids, device=self.phrase_features.device)
        targets = self.phrase_features[rows, concept_ids.to(rows.device)]
        prompts = [self.templates[i].format(self.placeholder) for i in template_ids]
        pseudo = encode_prompts(self.backbone, prompts, pseudo_tokens, self.placeholder)
        return (1 - (pseudo * targets.to(pseudo.device)).sum(-1)).mean()


# --------------------------------------------------------------------------- training


def phi_train_config(**overrides) -> TrainConfig:
    """SEARLE-like phi recipe on the project's training loop: AdamW lr 1e-4, weight decay 0.01, batch 256."""
    base = dict(
        steps=1000,
        batch_size=256,
        lr=1e-4,
        weight_decay=0.01,
        betas=(0.9, 0.999),
        eps=1e-8,
        warmup_steps=0,
        schedule="cosine",
        train_logit_scale=False,
        log_every=10,
    )
    return TrainConfig(**{**base, **overrides})


@dataclass
class OTIOptions:
    steps: int = 350
    lr: float = 2e-2
    weight_decay: float = 0.01
    reg_weight: float = 0.5
    batch_size: int = 256
    seed: int = 0
    word_tokens: int = 1  # tokens per pseudo-word, as phi's (every slot starts at the concept word)
    progress: bool = True


class _FrozenModel:
    """Freeze the (shared, cached) CLIP during phi training and give its flags back afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for parameter, _ in self.flags:
            parameter.requires_grad_(False)
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        for parameter, flag in self.flags:
            parameter.requires_grad_(flag)
        self.model.train(self.was_training)


def _as_features(backbone, image_features) -> torch.Tensor:
    if isinstance(image_features, torch.Tensor):
        features = image_features.detach().float().clone()
    else:
        features = torch.as_tensor(np.array(image_features, dtype=np.float32))
    if features.ndim != 2 or len(features) < 2:
        raise BadInput("training needs at least two image feature vectors (n, d)")
    if features.shape[1] != backbone.dim:
        raise IndexMismatch(
            f"image features have {features.shape[1]} dims but the model gives {backbone.dim}"
        )
    return F.normalize(features, dim=-1).to(backbone.device)


def _loader(*tensors: torch.Tensor, batch_size: int) -> DataLoader:
    dataset = TensorDataset(*[t.detach().cpu() for t in tensors])
    return DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True
    )


def _with_loss_log(cfg: TrainConfig, backbone) -> TrainConfig:
    """Run on the backbone's device and record the running loss about 20 times (the loss curve)."""
    return replace(
        cfg,
        device=str(backbone.device),
        validate_every=cfg.validate_every or max(1, cfg.steps // 20),
    )


def _regulariser_and_concepts(backbone, features, concepts, reg_weight, placeholder):
    if reg_weight <= 0:
        return None, torch.zeros(len(features), dtype=torch.long)
    regulariser = WordRegulariser(backbone, concepts, placeholder=placeholder)
    return regulariser, regulariser.nearest_concepts(features)


def _phi_for_training(
    phi: Phi | None,
    backbone,
    template: str,
    train_prompts: Sequence[str] | None,
    seed: int,
    word_tokens: int,
) -> Phi:
    if phi is None:
        if word_tokens < 1:
            raise BadInput("a pseudo-word needs at least one token")
        seed_everything(seed)  # phi's initial weights are part of the run: same seed, same phi
        phi = new_phi(backbone, template=template, word_tokens=word_tokens)
    if train_prompts:
        for prompt in train_prompts:
            fill_template(prompt, placeholder=phi.config.placeholder)  # refuse one without "$"
        phi.config.train_prompts = list(train_prompts)
    return phi


def sample_prompts(prompts: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """One train prompt per pseudo-word, drawn afresh every step."""
    return [rng.choice(prompts) for _ in range(count)]


def _fit(
    phi: Phi, backbone, loader, cfg: TrainConfig, step_loss, progress: bool, method: str
) -> tuple[Phi, list[float]]:
    with _FrozenModel(backbone.model):
        result = train_loop(phi, loader, cfg, step_loss, progress=progress)
    losses = [row["loss"] for row in result.history]
    phi.config.training = {
        "method": method,
        **asdict(cfg),
        "images": len(loader.dataset),
        "final_loss": losses[-1],
        "seconds": round(result.seconds, 1),
    }
    return phi.eval(), losses


def train_phi(
    backbone,
    image_features,
    cfg: TrainConfig | None = None,
    reg_weight: float = 0.1,
    temperature: float = TEMPERATURE,
    phi: Phi | None = None,
    concepts: Sequence[str] = DEFAULT_CONCEPTS,
    template: str = DEFAULT_TEMPLATE,
    train_prompts: Sequence[str] | None = None,
    word_tokens: int = 1,
    progress: bool = True,
) -> tuple[Phi, list[float]]:
    """Train phi on unlabeled image features: a train prompt ("a photo of $", ...) built from phi(i)
    must find its own image among the batch (contrastive, temperature 0.25), plus the word regulariser.
    Returns phi (eval mode) and the running loss logged along the run."""
    cfg = _with_loss_log(cfg or phi_train_config(), backbone)
    features = _as_features(backbone, image_features)
    phi = _phi_for_training(phi, backbone, template, train_prompts, cfg.seed, word_tokens)
    placeholder = phi.config.placeholder
    regulariser, concept_ids = _regulariser_and_concepts(
        backbone, features, concepts, reg_weight, placeholder
    )
    rng = random.Random(cfg.seed)

    def step_loss(model: Phi, batch) -> torch.Tensor:
        batch_features, batch_concepts = batch
        tokens = model(batch_features)
        prompts = sample_prompts(phi.config.train_prompts, len(tokens), rng)
        text_features = encode_prompts(backbone, prompts, tokens, placeholder)
        loss = contrastive_loss(text_features, batch_features, temperature)
        if regulariser is not None:
            loss = loss + reg_weight * regulariser.loss(tokens, batch_concepts, rng)
        return loss

    loader = _loader(features, concept_ids, batch_size=cfg.batch_size)
    return _fit(phi, backbone, loader, cfg, step_loss, progress, "contrastive")


def invert_images(
    backbone,
    image_features,
    options: OTIOptions | None = None,
    concepts: Sequence[str] = DEFAULT_CONCEPTS,
    placeholder: str = PLACEHOLDER,
    prompts: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Optimisation-based textual inversion (OTI): one pseudo-token per image, optimised so that
    train prompts ("a photo of $", ...) match the image (cosine) while staying word-like; starts
    from the nearest concept word. Returns tokens (n, k, w) and the mean loss at each step."""
    options = options or OTIOptions()
    prompts = list(prompts or default_train_prompts(placeholder))
    seed_everything(options.seed)
    rng = random.Random(options.seed)
    features = _as_features(backbone, image_features)
    regulariser = WordRegulariser(backbone, concepts, placeholder=placeholder)
    concept_ids = regulariser.nearest_concepts(features)
    tokens_out, curves = [], []
    chunks = range(0, len(features), options.batch_size)
    with _FrozenModel(backbone.model):
        for start in tqdm(chunks, desc="OTI", disable=not options.progress, dynamic_ncols=True):
            chunk = features[start : start + options.batch_size]
            ids = concept_ids[start : start + options.batch_size]
            initial = torch.stack(
                [word_embedding(backbone, regulariser.concepts[int(i)]) for i in ids]
            )
            initial = initial.unsqueeze(1).repeat(1, options.word_tokens, 1)
            tokens = nn.Parameter(initial.float().clone())
            optimizer = torch.optim.AdamW(
                [tokens], lr=options.lr, weight_decay=options.weight_decay
            )
            curve = []
            for _ in range(options.steps):
                drawn = sample_prompts(prompts, len(chunk), rng)
                text_features = encode_prompts(backbone, drawn, tokens, placeholder)
                loss = (1 - (text_features * chunk).sum(-1)).mean()
                if options.reg_weight > 0:
                    loss = loss + options.reg_weight * regulariser.loss(tokens, ids, rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                curve.append(float(loss.detach()) * len(chunk))
            tokens_out.append(tokens.detach())
            curves.append(curve)
    history = (np.sum(curves, axis=0) / len(features)).tolist()
    return torch.cat(tokens_out), history


def distill_phi(
    backbone,
    image_features,
    oti_tokens: torch.Tensor,
    cfg: TrainConfig | None = None,
    reg_weight: float = 0.1,
    temperature: float = TEMPERATURE,
    phi: Phi | None = None,
    concepts: Sequence[str] = DEFAULT_CONCEPTS,
    template: str = DEFAULT_TEMPLATE,
    train_prompts: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[Phi, list[float]]:
    """Distil phi from OTI pseudo-tokens: match them (MSE), and make a train prompt with phi's token
    find the same prompt with the OTI token among the batch (contrastive, temperature 0.25)."""
    cfg = _with_loss_log(cfg or phi_train_config(), backbone)
    features = _as_features(backbone, image_features)
    targets = oti_tokens.detach().float().to(backbone.device)
    if len(targets) != len(features):
        raise BadInput(f"{len(features)} images but {len(targets)} OTI tokens")
    if targets.ndim == 2:
        targets = targets.unsqueeze(1)
    phi = _phi_for_training(phi, backbone, template, train_prompts, cfg.seed, targets.shape[1])
    placeholder = phi.config.placeholder
    regulariser, concept_ids = _regulariser_and_concepts(
        backbone, features, concepts, reg_weight, placeholder
    )
    rng = random.Random(cfg.seed)

    def step_loss(model: Phi, batch) -> torch.Tensor:
        batch_features, batch_targets, batch_concepts = batch
        tokens = model(batch_features)
        prompts = sample_prompts(phi.config.train_prompts, len(tokens), rng)
        text_features = encode_prompts(backbone, prompts, tokens, placeholder)
        with torch.no_grad():
            oti_text = encode_prompts(backbone, prompts, batch_targets, placeholder)
        loss = F.mse_loss(tokens.float(), batch_targets) + contrastive_loss(
            text_features, oti_text, temperature
        )
        if regulariser is not None:
            loss = loss + reg_weight * regulariser.loss(tokens, batch_concepts, rng)
        return loss

    loader = _loader(features, targets, concept_ids, batch_size=cfg.batch_size)
    return _fit(phi, backbone, loader, cfg, step_loss, progress, "oti-distillation")


# --------------------------------------------------------------------------- persistence


def save_phi(phi: Phi, directory: str | Path) -> Path:
    """Write phi.safetensors + phi_config.json (readable by `load_phi`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in phi.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = asdict(phi.config)
    spec_path = Path(config["model_spec"].removeprefix("local-dir:"))
    if config["model_spec"] and spec_path.is_dir():  # keep the folder movable: a relative path
        config["model_spec"] = os.path.relpath(spec_path.resolve(), directory.resolve())
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def _resolve_dir(spec: str) -> Path:
    from retrieval.hub import fetch, is_hub_location

    if is_hub_location(spec):
        path = fetch(spec, repo_type="model")  # cached: works offline once downloaded
    else:
        path = Path(spec.removeprefix("local-dir:")).expanduser()
    if path.is_file():
        path = path.parent
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise NotFound(f"{spec} is not a phi folder: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    return path


def load_phi(spec: str | Path, device: str | torch.device | None = None) -> Phi:
    """Load phi from a folder (or "local-dir:PATH") or from the Hub ("hf-hub:org/repo")."""
    directory = _resolve_dir(str(spec))
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
        if "train_prompt" in raw:  # written before phi trained on several prompts
            raw["train_prompts"] = [raw.pop("train_prompt")]
        config = PhiConfig(**raw)
    except (TypeError, json.JSONDecodeError) as error:
        raise BadInput(f"{directory / CONFIG_FILE} is not a valid phi config: {error}") from error
    phi = Phi(config)
    phi.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return phi.to(device or "cpu").eval()


# --------------------------------------------------------------------------- data and command line


def features_from_images(backbone, folder: str | Path, progress: bool = True) -> np.ndarray:
    """Embed every readable image of a folder (unlabeled: file names and metadata are not used)."""
    from retrieval.collection import scan_folder
    from retrieval.embed import embed_files

    items, _ = scan_folder(folder)
    if not items:
        raise NotFound(f"no images found in {folder}")
    return embed_files(backbone, [item.path for item in items], progress=progress).vectors


def features_from_index(backbone, index_dir: str | Path) -> np.ndarray:
    """The stored vectors of an index built with this backbone (no image is decoded again)."""
    from retrieval.index import Index

    return np.asarray(Index.load(index_dir, backbone=backbone).vectors, dtype=np.float32)


def read_concepts(name_or_path: str | Path | None) -> list[str]:
    """Concept words for the regulariser: a shipped tagging vocabulary name ("heritage", "shapes"),
    a vocabulary .json, or a .txt with one term per line; None gives DEFAULT_CONCEPTS."""
    if name_or_path is None:
        return list(DEFAULT_CONCEPTS)
    from retrieval.tags import load_vocabulary

    return load_vocabulary(name_or_path).terms


def add_train_phi_arguments(parser) -> None:
    """Options of `python -m retrieval train-phi`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of unlabeled images to train on")
    source.add_argument("--index", help="index folder whose stored vectors are used (same --model)")
    parser.add_argument(
        "--model", required=True, help="open_clip model spec (arch/tag, folder or hf-hub:)"
    )
    parser.add_argument(
        "--out", required=True, help="output folder for phi.safetensors + phi_config.json"
    )
    parser.add_argument(
        "--method",
        choices=("contrastive", "oti"),
        default="contrastive",
        help="contrastive: train phi directly; oti: invert every image (OTI) then distil phi",
    )
    defaults = phi_train_config()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps for phi")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="images per step (default %(default)s)",
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="phi learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--reg-weight",
        type=float,
        default=0.1,
        help="weight of the word regulariser for phi (0 disables it)",
    )
    parser.add_argument(
        "--oti-steps", type=int, default=OTIOptions.steps, help="OTI steps per image (method oti)"
    )
    parser.add_argument(
        "--oti-lr", type=float, default=OTIOptions.lr, help="OTI learning rate (method oti)"
    )
    parser.add_argument(
        "--oti-reg-weight",
        type=float,
        default=OTIOptions.reg_weight,
        help="weight of the word regulariser during OTI",
    )
    parser.add_argument(
        "--concepts",
        help="concept words for the regulariser: a tagging vocabulary name (heritage, shapes), "
        "a vocabulary .json or a .txt with one term per line (default: a built-in generic list)",
    )
    parser.add_argument(
        "--train-prompts",
        "--train-prompt",
        nargs="+",
        metavar="PROMPT",
        help="prompts phi (and OTI) is trained with, one drawn per image and step; $ is the "
        "pseudo-word (default: the regulariser's phrase set, 'a photo of $', ...)",
    )
    parser.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="composed-query prompt; $ is the pseudo-word"
    )
    parser.add_argument(
        "--word-tokens",
        type=int,
        default=1,
        help="token embeddings per pseudo-word (SEARLE: 1; more help small text encoders)",
    )
    add_preprocessing(parser)
    add_device(parser)
    add_seed(parser)


def run_train_phi(args) -> Path:
    """Entry point of `train-phi`: features -> (OTI ->) phi -> saved folder."""
    from retrieval.backbone import load_backbone

    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=args.device)
    if args.images:
        features = features_from_images(backbone, args.images)
    else:
        features = features_from_index(backbone, args.index)
    concepts = read_concepts(args.concepts)
    for prompt in [args.template, *(args.train_prompts or [])]:
        fill_template(prompt, "x")  # fail early on prompts without the placeholder
    cfg = phi_train_config(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        extra={"source": args.images or args.index},
    )
    common = dict(
        reg_weight=args.reg_weight,
        concepts=concepts,
        template=args.template,
        train_prompts=args.train_prompts,
    )
    if args.method == "oti":
        oti = OTIOptions(
            steps=args.oti_steps,
            lr=args.oti_lr,
            reg_weight=args.oti_reg_weight,
            batch_size=args.batch_size,
            seed=args.seed,
            word_tokens=args.word_tokens,
        )
        tokens, _ = invert_images(backbone, features, oti, concepts, prompts=args.train_prompts)
        phi, history = distill_phi(backbone, features, tokens, cfg, **common)
        phi.config.training["oti"] = asdict(oti)
    else:
        phi, history = train_phi(backbone, features, cfg, word_tokens=args.word_tokens, **common)
    out = save_phi(phi, args.out)
    print(f"phi trained on {len(features)} images, final loss {history[-1]:.4f} -> {out}")
    return out
