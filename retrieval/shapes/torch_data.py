"""The Shapes world as torch data: image/caption pairs rendered on the fly for training, and
in-memory tensors of a generated split for validation.
"""

from __future__ import annotations

import numpy as np
import torch

from retrieval.embed import worker_init
from retrieval.shapes.world import (
    SplitData,
    describe,
    paraphrase,
    random_scene,
    render,
    sample_edit,
)


class ShapesPairs(torch.utils.data.Dataset):
    """Endless fresh (image, caption) pairs of train-split scenes, rendered on the fly.

    Each item is a group: one random scene plus `group - 1` single-edit variants of it, so every
    batch holds near-duplicates that only a model reading colour, shape, size and position can tell
    apart. Seeded by (seed, epoch, index): reproducible, and a new epoch shows new renderings.
    """

    def __init__(
        self, length: int, transform, tokenizer, seed: int = 0, group: int = 2, split: str = "train"
    ):
        self.length, self.transform, self.tokenizer = length, transform, tokenizer
        self.seed, self.group, self.split, self.epoch = seed, group, split, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = random_scene(rng, self.split)
        scenes = [scene]
        while len(scenes) < self.group:
            edit = sample_edit(scene, rng, self.split, exclude={describe(s) for s in scenes})
            scenes.append(edit.apply(scene) if edit else random_scene(rng, self.split))
        pixels = [self.transform(render(s, int(rng.integers(2**31)))[0]) for s in scenes]
        texts = [paraphrase(s, rng) if rng.random() < 0.7 else describe(s) for s in scenes]
        return pixels, texts

    def collate(self, samples):
        pixels = torch.stack([p for sample in samples for p in sample[0]])
        tokens = self.tokenizer([t for sample in samples for t in sample[1]])
        return pixels, tokens


def shapes_loader(
    transform,
    tokenizer,
    batch_size: int = 128,
    epoch_size: int = 20_000,
    seed: int = 0,
    group: int = 2,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader of (pixels, token_ids) batches for `training.train_clip`."""
    dataset = ShapesPairs(epoch_size // group, transform, tokenizer, seed=seed, group=group)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=max(1, batch_size // group),
        shuffle=True,
        drop_last=True,
        collate_fn=dataset.collate,
        num_workers=num_workers,
        worker_init_fn=worker_init,
        persistent_workers=False,
    )


def split_tensors(data: SplitData, transform, tokenizer, seed_offset: int = 0):
    """Pixels of a split's gallery, tokens of its canonical descriptions, and its triplets as positions."""
    position = {image.name: index for index, image in enumerate(data.images)}
    pixels = torch.stack(
        [transform(render(image.scene, image.seed + seed_offset)[0]) for image in data.images]
    )
    tokens = tokenizer([describe(image.scene) for image in data.images])
    references = torch.tensor([position[t.reference] for t in data.triplets])
    targets = torch.tensor([position[t.target] for t in data.triplets])
    return pixels, tokens, (references, tokenizer([t.caption for t in data.triplets]), targets)
