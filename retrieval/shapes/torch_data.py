"""The Shapes world as torch data: image/caption pairs rendered on the fly for training, and
in-memory tensors of a generated split for validation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from retrieval.embed import worker_init
from retrieval.shapes.languages import (
    describe,
    edit_text,
    paraphrase,
    partial_caption,
    triplet_caption,
)
from retrieval.shapes.world import (
    Mention,
    Scene,
    SplitData,
    mentioned_in,
    random_mentions,
    random_scene,
    render,
    sample_edit,
)


class ShapesGroup(NamedTuple):
    """One dataset item: a scene and its variants, rendered and captioned."""

    pixels: list[torch.Tensor]
    captions: list[str]
    requests: list[tuple[int, str]]  # (variant position, edit request from the scene to it)
    scenes: list[Scene]
    mentions: list[tuple[Mention, ...] | None]  # per caption: None when it is complete


class ShapesPairs(torch.utils.data.Dataset):
    """Endless fresh (image, caption) pairs of train-split scenes, rendered on the fly.

    Each item is a group: one random scene plus `group - 1` single-edit variants of it, so every
    batch holds near-duplicates that only a model reading colour, shape, size and position can tell
    apart. Seeded by (seed, epoch, index): reproducible, and a new epoch shows new renderings.
    With several `languages`, each caption is in one of them at random (English alone draws
    nothing more, so English-only runs repeat the earlier ones exactly). With `edits`, each item
    also carries the edit request from the scene to each variant: CLIP4Cir's stage-1 triplets,
    free because the group already holds both images. With `partial`, that share of captions
    name only some objects and some of their attributes ("a red circle"): the phrases heatmaps
    and tags are asked with, true of every image holding the object (`caption_positives`).
    """

    def __init__(
        self,
        length: int,
        transform,
        tokenizer,
        seed: int = 0,
        group: int = 2,
        split: str = "train",
        languages: tuple[str, ...] = ("en",),
        edits: bool = False,
        partial: float = 0.0,
    ):
        self.length, self.transform, self.tokenizer = length, transform, tokenizer
        self.seed, self.group, self.split, self.epoch = seed, group, split, 0
        self.languages, self.edits, self.partial = languages, edits, partial

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> ShapesGroup:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scene = random_scene(rng, self.split)
        scenes, edits = [scene], []
        while len(scenes) < self.group:
            edit = sample_edit(scene, rng, self.split, exclude={describe(s) for s in scenes})
            if edit:
                edits.append((len(scenes), edit))
            scenes.append(edit.apply(scene) if edit else random_scene(rng, self.split))
        pixels = [self.transform(render(s, int(rng.integers(2**31)))[0]) for s in scenes]
        captions, mentions = zip(*[self.caption(scene, rng) for scene in scenes], strict=True)
        requests = []
        if self.edits:
            requests = [(at, edit_text(edit, scene, rng, self.language(rng))) for at, edit in edits]
        return ShapesGroup(pixels, list(captions), requests, scenes, list(mentions))

    def language(self, rng: np.random.Generator) -> str:
        if len(self.languages) == 1:
            return self.languages[0]
        return self.languages[int(rng.integers(len(self.languages)))]

    def caption(self, scene, rng: np.random.Generator) -> tuple[str, tuple[Mention, ...] | None]:
        """A caption and, when it is partial, the mentions that say which scenes it is true of."""
        language = self.language(rng)
        if self.partial and rng.random() < self.partial:
            mentions = random_mentions(scene, rng)
            return partial_caption(mentions, rng, language), mentions
        if rng.random() < 0.7:
            return paraphrase(scene, rng, language), None
        return describe(scene, language), None

    def collate(self, samples: list[ShapesGroup]):
        """(pixels, tokens, edit triplets or None, positives or None): `positives[t, i]` says
        caption t is true of image i, given only when some captions are partial."""
        pixels = torch.stack([p for sample in samples for p in sample.pixels])
        tokens = self.tokenizer([t for sample in samples for t in sample.captions])
        triplets = self.triplets(samples) if self.edits else None
        positives = caption_positives(samples) if self.partial else None
        return pixels, tokens, triplets, positives

    def triplets(self, samples: list[ShapesGroup]):
        references, targets, requests, start = [], [], [], 0
        for sample in samples:
            for at, text in sample.requests:
                references.append(start)
                targets.append(start + at)
                requests.append(text)
            start += len(sample.pixels)
        return self.tokenizer(requests), torch.tensor(references), torch.tensor(targets)


def caption_positives(samples: list[ShapesGroup]) -> torch.Tensor:
    """Which batch images each caption is true of: a complete description only of its own scene
    (or an identical one), a partial caption of every scene holding the mentioned objects."""
    scenes = [scene for sample in samples for scene in sample.scenes]
    claims = [claim for sample in samples for claim in sample.mentions]
    rows = [
        [scene == own if mentions is None else mentioned_in(mentions, scene) for scene in scenes]
        for own, mentions in zip(scenes, claims, strict=True)
    ]
    return torch.tensor(rows, dtype=torch.bool)


def shapes_loader(
    transform,
    tokenizer,
    batch_size: int = 128,
    epoch_size: int = 20_000,
    seed: int = 0,
    group: int = 2,
    num_workers: int = 0,
    languages: tuple[str, ...] = ("en",),
    edits: bool = False,
    partial: float = 0.0,
) -> torch.utils.data.DataLoader:
    """A DataLoader of (pixels, token_ids[, edit triplets]) batches for `training.train_clip`."""
    dataset = ShapesPairs(
        epoch_size // group,
        transform,
        tokenizer,
        seed=seed,
        group=group,
        languages=languages,
        edits=edits,
        partial=partial,
    )
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


def split_tensors(
    data: SplitData, transform, tokenizer, seed_offset: int = 0, language: str = "en"
):
    """Pixels of a split's gallery, tokens of its canonical descriptions, and its triplets as
    positions, texts in `language`."""
    return split_pixels(data, transform, seed_offset), *split_texts(data, tokenizer, language)


def split_pixels(data: SplitData, transform, seed_offset: int = 0) -> torch.Tensor:
    """The split's gallery rendered and transformed, in gallery order."""
    renders = [render(image.scene, image.seed + seed_offset)[0] for image in data.images]
    return torch.stack([transform(picture) for picture in renders])


def split_texts(data: SplitData, tokenizer, language: str):
    """Description tokens and (reference, caption tokens, target) of a split in `language`."""
    position = {image.name: index for index, image in enumerate(data.images)}
    scenes = {image.name: image.scene for image in data.images}
    tokens = tokenizer([describe(image.scene, language) for image in data.images])
    references = torch.tensor([position[t.reference] for t in data.triplets])
    targets = torch.tensor([position[t.target] for t in data.triplets])
    captions = [triplet_caption(t, scenes, language) for t in data.triplets]
    return tokens, (references, tokenizer(captions), targets)
