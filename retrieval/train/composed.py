"""CLIP4Cir's two training stages.

stage 1  `train_stage1`: fine-tune CLIP with query = normalise(i + t) against the target image,
         AdamW lr 2e-6 (`train_composed`);
stage 2  `train_combiner`: CLIP frozen, image features precomputed once (cached on disk),
         Adam lr 2e-5, cross-entropy over in-batch logits 100 * query @ targets^T.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from retrieval.backbone import Backbone, model_config, model_fingerprint, save_backbone
from retrieval.composed.baselines import sum_composer
from retrieval.composed.combiner import Combiner, new_combiner
from retrieval.data.composed import ComposedSplit
from retrieval.data.features import encode_texts, image_features, unique_rows
from retrieval.embed import worker_init
from retrieval.errors import BadInput
from retrieval.eval.composed import SELECT_METRIC, evaluate_split, summarise
from retrieval.images import open_image
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

STAGE2_LR = 2e-5
STAGE2_BATCH = 1024


class TripletFeatures(Dataset):
    """(reference feature, caption feature, target feature) batches from precomputed features.

    Each query has one or more caption variants (FashionIQ: four); a batch draws one per query,
    seeded by (seed, epoch, first index) so a resumed run sees the same draws.
    """

    def __init__(
        self,
        references: torch.Tensor,
        targets: torch.Tensor,
        variants: list[list[int]],
        images: torch.Tensor,
        texts: torch.Tensor,
        seed: int = 0,
    ):
        self.references, self.targets, self.variants = references, targets, variants
        self.images, self.texts, self.seed, self.epoch = images, texts, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.references)

    def __getitems__(self, indices: list[int]):
        rng = np.random.default_rng([self.seed, self.epoch, int(indices[0]), len(indices)])
        chosen = [self.variants[i][int(rng.integers(len(self.variants[i])))] for i in indices]
        rows = torch.as_tensor(indices, dtype=torch.long)
        return (
            self.images[self.references[rows]],
            self.texts[torch.as_tensor(chosen)],
            self.images[self.targets[rows]],
        )

    def __getitem__(self, index: int):
        return self.__getitems__([index])


def _keep_batch(batch):
    return batch


def triplet_features(
    backbone, splits: list[ComposedSplit], cache=True, seed: int = 0, progress: bool = True
) -> TripletFeatures:
    """Precompute (once, cached) the image features and the caption-variant text features of splits."""
    names = list(dict.fromkeys(name for split in splits for name in split.images))
    paths = {name: path for split in splits for name, path in split.images.items()}
    features = image_features(backbone, [paths[n] for n in names], cache, progress)
    row = {name: i for i, name in enumerate(names)}
    references, targets, variant_texts = [], [], []
    for split in splits:
        for query in split.queries:
            if not query.targets:
                raise BadInput(f"{split.name} has no targets: it cannot be used for training")
            references.append(row[query.reference])
            targets.append(row[query.targets[0]])
            variant_texts.append(split.training_texts(query))
    distinct, rows = unique_rows([text for variants in variant_texts for text in variants])
    variants, start = [], 0
    for texts_of_query in variant_texts:
        variants.append(rows[start : start + len(texts_of_query)].tolist())
        start += len(texts_of_query)
    text_features = encode_texts(backbone, distinct, progress=progress)
    return TripletFeatures(
        torch.tensor(references), torch.tensor(targets), variants, features, text_features, seed
    )


def combiner_step(model: Combiner, batch) -> torch.Tensor:
    """CLIP4Cir loss: cross-entropy over 100 * combined @ targets^T, the i-th target is the positive."""
    references, texts, targets = batch
    return composed_loss(model(references, texts), targets)


class _FeatureComposer:
    """Validation composer: the Combiner under training on precomputed caption features."""

    def __init__(self, model: Combiner, texts: dict[str, torch.Tensor]):
        self.model, self.texts = model, texts

    def __call__(self, backbone, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        text_features = torch.stack([self.texts[text] for text in texts]).to(device)
        return self.model(image_features.to(device, torch.float32), text_features)


def split_validator(
    backbone, splits: list[ComposedSplit], protocol: str, cache=True, progress: bool = False
):
    """A `validate(model)` for train_loop: features and caption features computed once, metrics per call."""
    prepared = []
    for split in splits:
        names = list(split.images)
        features = image_features(backbone, [split.images[n] for n in names], cache, progress)
        texts = list(dict.fromkeys(split.query_text(q) for q in split.queries))
        prepared.append(
            (split, (names, features), dict(zip(texts, encode_texts(backbone, texts), strict=True)))
        )

    def validate(model: Combiner) -> dict[str, float]:
        results = [
            evaluate_split(split, backbone, _FeatureComposer(model, texts), feats, progress=False)
            for split, feats, texts in prepared
        ]
        return summarise(protocol, results)

    return validate


def stage2_config(**overrides) -> TrainConfig:
    """CLIP4Cir stage 2: Adam lr 2e-5, constant, large batches, no clipping, mixed precision on CUDA."""
    base = dict(
        lr=STAGE2_LR,
        batch_size=STAGE2_BATCH,
        weight_decay=0.0,
        warmup_steps=0,
        schedule="constant",
        grad_clip=0.0,
        amp=True,
        train_logit_scale=False,
    )
    return TrainConfig(**{**base, **overrides})


def train_combiner(
    backbone,
    train_splits: list[ComposedSplit],
    cfg: TrainConfig,
    val_splits: list[ComposedSplit] | None = None,
    protocol: str = "cirr",
    cache=True,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[Combiner, TrainResult]:
    """Stage 2 on a frozen backbone; returns the best Combiner (by the protocol's metric) and the run."""
    data = triplet_features(backbone, train_splits, cache, cfg.seed, progress)
    loader = DataLoader(
        data,
        batch_size=min(cfg.batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) > cfg.batch_size,
        collate_fn=_keep_batch,
        num_workers=num_workers,
        worker_init_fn=worker_init,
    )
    validate = (
        split_validator(backbone, val_splits, protocol, cache, progress) if val_splits else None
    )
    if validate is not None and not cfg.select_metric:
        cfg.select_metric = SELECT_METRIC[protocol]
    cfg.extra.setdefault("stage", 2)
    model = new_combiner(
        backbone.dim,
        model_spec=str(backbone.spec),
        preprocessing=backbone.preprocessing,
        model_fingerprint=model_fingerprint(backbone),
    )
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    result = train_loop(
        model, loader, cfg, combiner_step, validate=validate, optimizer=optimizer, progress=progress
    )
    if cfg.out_dir and (Path(cfg.out_dir) / "best" / MODEL_FILE).is_file():
        load_checkpoint(Path(cfg.out_dir) / "best", model, map_location=device)
    model.config.training = {
        "recipe": "CLIP4Cir stage 2 (frozen backbone)",
        "protocol": protocol,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "best_step": result.best_step,
        "best_metrics": result.best_metrics,
        "train_queries": len(data),
        "train_splits": [split.name for split in train_splits],
        **run_record(result, device),
        **cfg.extra,
    }
    return model.cpu().eval(), result


class TripletImages(Dataset):
    """(reference pixels, caption, target pixels) for stage-1 fine-tuning; FashionIQ captions vary."""

    def __init__(self, splits: list[ComposedSplit], transform, tokenizer, seed: int = 0):
        self.items = [
            (split, query) for split in splits for query in split.queries if query.targets
        ]
        self.transform, self.tokenizer, self.seed, self.epoch = transform, tokenizer, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        split, query = self.items[index]
        variants = split.training_texts(query)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        text = variants[int(rng.integers(len(variants)))]
        reference = self.transform(open_image(split.images[query.reference]))
        target = self.transform(open_image(split.images[query.targets[0]]))
        return reference, text, target

    def collate(self, samples):
        references, texts, targets = zip(*samples, strict=True)
        return torch.stack(references), self.tokenizer(list(texts)), torch.stack(targets)


def train_stage1(
    backbone,
    train_splits: list[ComposedSplit],
    cfg: TrainConfig,
    out: str | Path,
    val_splits: list[ComposedSplit] | None = None,
    protocol: str = "cirr",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Path, TrainResult]:
    """CLIP4Cir stage 1: fine-tune a copy of the backbone with the sum objective; saves a loadable model."""

    model = copy.deepcopy(backbone.model).float()  # the loaded model is shared: train a copy
    tuned = Backbone(
        backbone.spec,
        model,
        backbone.base_transform,
        backbone.tokenizer,
        resolve_device(cfg.device),
        backbone.preprocessing,
    )
    data = TripletImages(train_splits, backbone.transform, backbone.tokenizer, cfg.seed)
    if not len(data):
        raise BadInput("no labelled training triplets")
    loader = DataLoader(
        data,
        batch_size=min(cfg.batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) > cfg.batch_size,
        collate_fn=data.collate,
        num_workers=num_workers,
        worker_init_fn=worker_init,
    )
    validate = None
    if val_splits:
        cfg.select_metric = cfg.select_metric or SELECT_METRIC[protocol]

        def validate(_model) -> dict[str, float]:
            results = [
                evaluate_split(s, tuned, sum_composer, cache=False, progress=False)
                for s in val_splits
            ]
            return summarise(protocol, results)

    cfg.extra.setdefault("stage", 1)
    cfg.out_dir = cfg.out_dir or str(Path(out) / "checkpoints")
    result = train_composed(model, loader, cfg, validate=validate, progress=progress)
    best = Path(cfg.out_dir) / "best"
    if (best / MODEL_FILE).is_file():
        load_checkpoint(best, model, map_location=tuned.device)
    model_dir = save_backbone(model.eval(), model_config(backbone.spec), Path(out))
    (Path(out) / "stage1.json").write_text(
        json.dumps(
            {
                "base_model": str(backbone.spec),
                "best_step": result.best_step,
                "best_metrics": result.best_metrics,
                "history": result.history,
                **run_record(result, tuned.device),
                "config": asdict(cfg),
            },
            indent=2,
            default=str,
        )
    )
    return model_dir, result


COMPOSED_SCALE = 100.0  # CLIP4Cir: temperature 0.01


def composed_loss(
    query: torch.Tensor, target: torch.Tensor, scale: float = COMPOSED_SCALE
) -> torch.Tensor:
    """CLIP4Cir loss: the i-th composed query should retrieve the i-th target among the batch."""
    logits = scale * F.normalize(query, dim=-1) @ F.normalize(target, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def composed_sum_step(model, batch) -> torch.Tensor:
    """Loss of one (reference images, caption tokens, target images) batch, query = sum."""
    references, tokens, targets = batch
    query = F.normalize(model.encode_image(references), dim=-1) + F.normalize(
        model.encode_text(tokens), dim=-1
    )
    return composed_loss(query, model.encode_image(targets))


def train_composed(
    model,
    loader: Iterable,
    cfg: TrainConfig,
    validate: Validate | None = None,
    progress: bool = True,
) -> TrainResult:
    """CLIP4Cir stage 1. `loader` yields (reference images, caption token_ids, target images)."""
    set_trainable(model, cfg.towers, cfg.last_blocks, logit_scale=False)
    return train_loop(model, loader, cfg, composed_sum_step, validate=validate, progress=progress)
