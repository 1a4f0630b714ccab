"""CLIP fine-tuning on artworks: images against their class texts, batches of distinct classes,
validated by the two retrieval mAPs of the NoisyArt protocol.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch

from retrieval.backbone import Backbone, model_config, save_backbone
from retrieval.data.art import DEFAULT_TITLE_TEMPLATE, TEXT_KINDS, ArtDataset, class_text
from retrieval.embed import worker_init
from retrieval.errors import BadInput
from retrieval.eval.art import ClipFeatures, EvalOptions, evaluate
from retrieval.images import open_image
from retrieval.train.clip import train_clip
from retrieval.train.loop import load_checkpoint


class DistinctClassBatches(torch.utils.data.Sampler):
    """Shuffled batches in which no class appears twice, so in-batch negatives are true negatives.

    Uses torch's global generator, which the training loop reseeds every epoch (reproducible resume).
    """

    def __init__(self, labels, batch_size: int):
        self.labels = list(labels)
        self.batch_size = min(batch_size, len(set(self.labels)))
        if self.batch_size < 2:
            raise BadInput("contrastive fine-tuning needs images of at least two classes")

    def __len__(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def __iter__(self):
        open_batches: list[tuple[list[int], set]] = []
        emitted = 0
        for index in torch.randperm(len(self.labels)).tolist():
            label = self.labels[index]
            target = next((batch for batch in open_batches if label not in batch[1]), None)
            if target is None:
                target = ([], set())
                open_batches.append(target)
            target[0].append(index)
            target[1].add(label)
            if len(target[0]) == self.batch_size:
                open_batches.remove(target)
                yield target[0]
                emitted += 1
                if emitted == len(self):
                    return


class ImageTextPairs(torch.utils.data.Dataset):
    """(pixels, token ids) of an image and one of its class texts, picked at random each time."""

    def __init__(self, dataset: ArtDataset, class_tokens: dict[int, torch.Tensor], transform):
        self.dataset, self.class_tokens, self.transform = dataset, class_tokens, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        tokens = self.class_tokens[self.dataset.labels[index]]
        choice = int(torch.randint(len(tokens), (1,)))
        try:
            return self.transform(open_image(self.dataset.paths[index])), tokens[choice]
        except BadInput:
            return None


def _collate_pairs(batch):
    batch = [sample for sample in batch if sample is not None]
    if len(batch) < 2:
        raise BadInput("a training batch had fewer than two readable images")
    return torch.stack([pixels for pixels, _ in batch]), torch.stack(
        [tokens for _, tokens in batch]
    )


def class_tokens(
    backbone, dataset: ArtDataset, kinds=TEXT_KINDS, template: str = DEFAULT_TITLE_TEMPLATE
) -> dict[int, torch.Tensor]:
    """Token ids of each present class's distinct texts (title prompt and/or description)."""
    unknown = set(kinds) - set(TEXT_KINDS)
    if unknown or not kinds:
        raise BadInput(f"texts must be among {TEXT_KINDS}, not {sorted(unknown) or 'nothing'}")
    tokens = {}
    for label in dataset.present_classes():
        texts = list(
            dict.fromkeys(class_text(dataset.classes[label], kind, template) for kind in kinds)
        )
        tokens[label] = backbone.tokenize(texts)
    return tokens


def pairs_loader(
    backbone,
    dataset: ArtDataset,
    batch_size: int,
    kinds=TEXT_KINDS,
    template: str = DEFAULT_TITLE_TEMPLATE,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    pairs = ImageTextPairs(
        dataset, class_tokens(backbone, dataset, kinds, template), backbone.transform
    )
    return torch.utils.data.DataLoader(
        pairs,
        batch_sampler=DistinctClassBatches(dataset.labels, batch_size),
        num_workers=workers,
        worker_init_fn=worker_init,
        collate_fn=_collate_pairs,
        pin_memory=torch.cuda.is_available(),
    )


def artwork_validator(
    backbone,
    val: ArtDataset,
    template: str = DEFAULT_TITLE_TEMPLATE,
    batch_size: int = 64,
    workers: int = 0,
):
    """A `validate(model)` callback: artwork->artwork and description->artwork mAP on `val`."""

    def validate(model) -> dict[str, float]:
        view = Backbone(
            backbone.spec,
            model,
            backbone.base_transform,
            backbone.tokenizer,
            next(model.parameters()).device,
            backbone.preprocessing,
        )
        run = evaluate(
            ClipFeatures(view),
            val,
            None,
            EvalOptions(
                title_template=template, batch_size=batch_size, workers=workers, progress=False
            ),
        )
        metrics = {
            "map_image": run["metrics"]["map_image"],
            "map_description": run["metrics"]["map_description"],
        }
        return {**metrics, "map_mean": (metrics["map_image"] + metrics["map_description"]) / 2}

    return validate


def finetune(
    backbone,
    train: ArtDataset,
    cfg,
    val: ArtDataset | None = None,
    kinds=TEXT_KINDS,
    template: str = DEFAULT_TITLE_TEMPLATE,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Contrastive image/class-text fine-tuning of a copy of the backbone's CLIP; saves cfg.out_dir/model.

    `cfg` is a `retrieval.training.TrainConfig` (steps, lr, last_blocks, towers, resume, ...).
    The best checkpoint (by validation `map_mean` when `val` is given, else the last) is written in
    the open_clip local-dir layout at OUT/model, loadable with `--model OUT/model`.
    """

    if not cfg.out_dir:
        raise BadInput("fine-tuning needs an output folder")
    model = copy.deepcopy(
        backbone.model
    )  # the loaded backbone is cached and shared: never train it
    loader = pairs_loader(backbone, train, cfg.batch_size, kinds, template, workers)
    validate = (
        artwork_validator(backbone, val, template, workers=workers) if val is not None else None
    )
    if validate is not None and not cfg.select_metric:
        cfg.select_metric = "map_mean"
    result = train_clip(model, loader, cfg, validate=validate, progress=progress)
    out = Path(cfg.out_dir)
    load_checkpoint(out / "best", model)
    model_dir = save_backbone(model.cpu(), model_config(backbone.spec), out / "model")
    summary = {
        "model_dir": str(model_dir),
        "base_model": backbone.spec,
        "train_images": len(train),
        "train_classes": len(train.present_classes()),
        "texts": list(kinds),
        **asdict(result),
    }
    (out / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
