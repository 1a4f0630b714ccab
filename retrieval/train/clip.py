"""Contrastive CLIP training (from scratch or fine-tuning) on image/text pairs, and its validators.

The Shapes CLIP in `precomputed/` comes from here through `python -m retrieval train-clip
--recipe recipes/shapes-clip-small.toml`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from retrieval.backbone import load_backbone, model_config, new_model, save_backbone
from retrieval.collection import read_metadata
from retrieval.errors import BadInput
from retrieval.eval.metrics import feature_ranks, recall_at_k
from retrieval.images import open_image
from retrieval.shapes.torch_data import split_pixels, split_texts
from retrieval.shapes.world import build_split
from retrieval.train.loop import (
    MODEL_FILE,
    TrainConfig,
    TrainResult,
    Validate,
    load_checkpoint,
    resolve_device,
    run_record,
    set_trainable,
    train_loop,
)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th image belongs with the i-th text and vice versa. With
    `positives` (texts x images, true where a text is true of an image), each side's probability
    mass on all its positives counts, so "a red circle" may pick any image holding one."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_features @ text_features.T
    if positives is not None:
        positives = positives.to(logits.device)
        return (_multi_positive(logits, positives.T) + _multi_positive(logits.T, positives)) / 2
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _multi_positive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(softmax mass on the row's positives)."""
    on_positives = logits.masked_fill(~positives, float("-inf")).logsumexp(dim=1)
    return (logits.logsumexp(dim=1) - on_positives).mean()


def edit_loss(
    image_features: torch.Tensor,
    request_features: torch.Tensor,
    references: torch.Tensor,
    targets: torch.Tensor,
    logit_scale,
) -> torch.Tensor:
    """CLIP4Cir's stage-1 objective: normalise(reference + request) must pick its target out of
    the batch's images (the reference itself left out, or copying it would score)."""
    images = F.normalize(image_features, dim=-1)
    query = F.normalize(images[references] + F.normalize(request_features, dim=-1), dim=-1)
    logits = logit_scale * query @ images.T
    own = F.one_hot(references, len(images)).bool()
    return F.cross_entropy(logits.masked_fill(own, float("-inf")), targets)


def encode_used_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` over the batch's used length only: the causal mask makes the padding
    after the end token irrelevant, and short Shapes texts then cost a fraction of the context.
    Models other than open_clip's CLIP class take the plain path."""
    if not isinstance(model, open_clip.CLIP) or model.text_pool_type != "argmax":
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    pooled = x[torch.arange(len(x)), tokens.argmax(dim=-1)]
    return pooled @ model.text_projection


def clip_step(model, batch, edit_weight: float = 0.0) -> torch.Tensor:
    """Loss of one (images, token_ids[, edit triplets[, positives]]) batch: contrastive, plus the
    weighted stage-1 objective when the batch carries edit requests."""
    images, tokens, *extra = batch
    triplets, positives = (*extra, None, None)[:2]
    image_features = model.encode_image(images)
    text_features = encode_used_tokens(model, tokens)
    scale = model.logit_scale.exp()
    loss = clip_loss(image_features, text_features, scale, positives)
    if edit_weight and triplets is not None and len(triplets[1]):
        requests, references, targets = triplets
        request_features = encode_used_tokens(model, requests)
        loss = loss + edit_weight * edit_loss(
            image_features, request_features, references, targets, scale
        )
    return loss


def train_clip(
    model,
    loader: Iterable,
    cfg: TrainConfig,
    validate: Validate | None = None,
    progress: bool = True,
    edit_weight: float = 0.0,
) -> TrainResult:
    """Contrastive image/text training. `loader` yields (images, token_ids) batches, and with
    `edit_weight` also edit triplets (`ShapesPairs(edits=True)`)."""
    set_trainable(model, cfg.towers, cfg.last_blocks, logit_scale=cfg.train_logit_scale)

    def step(model, batch):
        return clip_step(model, batch, edit_weight)

    return train_loop(model, loader, cfg, step, validate=validate, progress=progress)


class PairsDataset(torch.utils.data.Dataset):
    """(image file, caption) pairs -> (pixels, caption); `collate` tokenizes a batch."""

    def __init__(self, pairs: list[tuple[Path, str]], transform, tokenizer):
        self.pairs, self.transform, self.tokenizer = pairs, transform, tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        path, caption = self.pairs[index]
        return self.transform(open_image(path)), caption

    def collate(self, samples):
        return torch.stack([s[0] for s in samples]), self.tokenizer([s[1] for s in samples])


def read_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """Image/caption pairs from a CSV or JSONL with columns file (relative to its folder) and caption."""

    path = Path(path)
    rows = read_metadata(path)
    pairs = []
    for number, row in enumerate(rows, start=1):
        file, caption = row.get("file"), row.get("caption") or row.get("description")
        if not file or not caption:
            raise BadInput(
                f"{path.name} row {number}: needs 'file' and 'caption' (or 'description')"
            )
        pairs.append(((path.parent / str(file)).resolve(), str(caption)))
    return pairs


@torch.no_grad()
def _encode_images(model, pixels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    parts = [
        model.encode_image(pixels[i : i + chunk].to(device)).float()
        for i in range(0, len(pixels), chunk)
    ]
    return F.normalize(torch.cat(parts), dim=-1)


@torch.no_grad()
def _encode_texts(model, tokens: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    parts = [
        model.encode_text(tokens[i : i + chunk].to(device)).float()
        for i in range(0, len(tokens), chunk)
    ]
    return F.normalize(torch.cat(parts), dim=-1)


def retrieval_validator(
    pixels: torch.Tensor, tokens: torch.Tensor, triplets=None, ks=(1, 5, 10)
) -> Validate:
    """Metrics on a fixed gallery: text->image recall (text i describes image i) and, with
    `triplets` = (reference positions, caption tokens, target positions), composed-sum recall
    with the reference removed from its own ranking. `t2i_mean` / `sum_mean` average the recalls.
    """

    def validate(model) -> dict[str, float]:
        return text_metrics(model, _encode_images(model, pixels).cpu(), tokens, triplets, ks)

    return validate


def text_metrics(model, images: torch.Tensor, tokens, triplets=None, ks=(1, 5, 10)) -> dict:
    """`retrieval_validator`'s metrics for already encoded gallery images."""
    metrics = {}
    if tokens is not None:
        texts = _encode_texts(model, tokens).cpu()
        t2i = recall_at_k(feature_ranks(texts, images, torch.arange(len(images))), ks)
        metrics.update({f"t2i_{k}": v for k, v in t2i.items()})
        metrics["t2i_mean"] = sum(t2i.values()) / len(t2i)
    if triplets is not None:
        references, caption_tokens, targets = triplets
        query = F.normalize(images[references] + _encode_texts(model, caption_tokens).cpu(), dim=-1)
        composed = recall_at_k(feature_ranks(query, images, targets, references), ks)
        metrics.update({f"sum_{k}": v for k, v in composed.items()})
        metrics["sum_mean"] = sum(composed.values()) / len(composed)
    return metrics


def shapes_validator(
    transform, tokenizer, sets: int = 48, seed: int = 0, languages: tuple[str, ...] = ("en",)
):
    """Validation on an in-memory val split: text->image and composed-sum recall.

    With several languages, each one's metrics carry its code as a prefix (`it_t2i_1`) and
    `t2i_mean` / `sum_mean` average over the languages, so checkpoints are picked for all of them.
    """
    data = build_split("val", sets, seed)
    pixels = split_pixels(data, transform)
    if len(languages) == 1:
        return retrieval_validator(pixels, *split_texts(data, tokenizer, languages[0]))
    texts = {language: split_texts(data, tokenizer, language) for language in languages}

    def validate(model) -> dict[str, float]:
        images, metrics = _encode_images(model, pixels).cpu(), {}  # once for every language
        for language, (tokens, triplets) in texts.items():
            language_metrics = text_metrics(model, images, tokens, triplets)
            metrics.update({f"{language}_{k}": v for k, v in language_metrics.items()})
        for name in ("t2i_mean", "sum_mean"):
            metrics[name] = sum(metrics[f"{lang}_{name}"] for lang in languages) / len(languages)
        return metrics

    return validate


def model_to_train(arch: str, init: str | None = None):
    """A fresh `arch`, or a float copy of `init` to fine-tune; with transform, tokenizer and the
    open_clip config to save it under (resolved first, so a bad spec fails before training)."""
    if init:
        config = model_config(init)
        backbone = load_backbone(init, device="cpu")
        model = copy.deepcopy(backbone.model).float()
        return model, backbone.base_transform, backbone.tokenizer, config
    config = model_config(arch)
    model, transform, tokenizer = new_model(arch, device="cpu")
    return model.float(), transform, tokenizer, config


def pairs_validator(path: str | Path, transform, tokenizer) -> Validate:
    """Text -> image recall on a fixed CSV/JSONL of file,caption pairs."""
    pairs = read_pairs(path)
    pixels = torch.stack([transform(open_image(image)) for image, _ in pairs])
    return retrieval_validator(pixels, tokenizer([caption for _, caption in pairs]))


def train_and_export(
    model,
    loader,
    cfg: TrainConfig,
    out: str | Path,
    model_cfg: dict,
    validate=None,
    fp16=False,
    command: str = "",
    edit_weight: float = 0.0,
) -> dict:
    """Contrastive training, then the best checkpoint saved as an open_clip folder + training.json
    (`command`: how the run was started, recorded so it can be repeated)."""
    result = train_clip(model, loader, cfg, validate=validate, edit_weight=edit_weight)
    best = Path(cfg.out_dir) / "best"
    if (best / MODEL_FILE).is_file():
        load_checkpoint(best, model)
    model = model.cpu().eval()
    if fp16:
        model = model.half()
    folder = save_backbone(model, model_cfg, out)
    report = {
        "command": command,
        "config": asdict(cfg),
        "model_cfg": model_cfg,
        "best_step": result.best_step,
        "best_metrics": result.best_metrics,
        "history": result.history,
        **run_record(result, resolve_device(cfg.device)),
        "torch": torch.__version__,
        "fp16_weights": bool(fp16),
    }
    (folder / "training.json").write_text(json.dumps(report, indent=2, default=str))
    return report
