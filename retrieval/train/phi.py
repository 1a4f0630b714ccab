"""Training phi for zero-shot composed retrieval: the contrastive objective with the word regulariser,
OTI (optimising one pseudo-word per image) and distilling phi from OTI tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from retrieval.collection import scan_folder
from retrieval.composed.phi import (
    DEFAULT_TEMPLATE,
    PLACEHOLDER,
    REGULARISER_TEMPLATES,
    Phi,
    default_train_prompts,
    encode_prompts,
    fill_template,
    new_phi,
    word_embedding,
)
from retrieval.embed import embed_files
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.index import Index
from retrieval.tags import load_vocabulary
from retrieval.train.loop import TrainConfig, seed_everything, train_loop

TEMPERATURE = 0.25


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


def features_from_images(backbone, folder: str | Path, progress: bool = True) -> np.ndarray:
    """Embed every readable image of a folder (unlabeled: file names and metadata are not used)."""

    items, _ = scan_folder(folder)
    if not items:
        raise NotFound(f"no images found in {folder}")
    return embed_files(backbone, [item.path for item in items], progress=progress).vectors


def features_from_index(backbone, index_dir: str | Path) -> np.ndarray:
    """The stored vectors of an index built with this backbone (no image is decoded again)."""

    return np.asarray(Index.load(index_dir, backbone=backbone).vectors, dtype=np.float32)


def read_concepts(name_or_path: str | Path | None) -> list[str]:
    """Concept words for the regulariser: a shipped tagging vocabulary name ("heritage", "shapes"),
    a vocabulary .json, or a .txt with one term per line; None gives DEFAULT_CONCEPTS."""
    if name_or_path is None:
        return list(DEFAULT_CONCEPTS)

    return load_vocabulary(name_or_path).terms
