"""Inference stage of the pipeline: image files -> normalised embeddings (+ thumbnails), and each
image feature's norm before normalisation (raw features = vector * norm, for models trained on them).

Decoding and preprocessing run in DataLoader workers so they overlap with the model forward.
JPEGs are decoded at a reduced DCT scale (PIL draft mode) just large enough for the model input
and the thumbnail: on a CPU the workers share cores with the model, so every ms of decoding counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import signal
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from retrieval.backbone import Backbone
from retrieval.config import DEFAULTS, ImageLimits, Settings
from retrieval.errors import BadInput
from retrieval.images import open_image, thumbnail

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class EmbeddedBatchResult:
    vectors: np.ndarray  # (n_ok, d) in the order of `ok`, normalised unless asked otherwise
    ok: list[int]  # positions (in the input list) that were embedded
    thumbs: dict[int, bytes]  # position -> JPEG bytes
    failed: list[tuple[int, str]]  # position -> reason
    norms: np.ndarray  # (n_ok,) each image feature's L2 norm before normalisation


def open_reduced(
    path, min_short: int, min_long: int, limits: ImageLimits = DEFAULTS.image_limits
) -> Image.Image:
    """Decode a JPEG at the smallest 1/2, 1/4 or 1/8 scale whose sides still reach
    `min_short` (short side) and `min_long` (long side); other formats decode in full.

    The DCT-domain downscale skips most of the IDCT and makes the later resizes cheap. Anything
    unusual (not a JPEG, too many pixels, a decoding error) goes through `open_image` unchanged,
    so the checks and error messages are exactly those of the normal path.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            factor = max(min_short / min(width, height), min_long / max(width, height))
            if image.format == "JPEG" and factor < 0.5 and width * height <= limits.max_pixels:
                image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))
                image.load()
                return open_image(image, limits)
    except Exception:  # the full decode below reports the real problem, with its message
        pass
    return open_image(path, limits)


class _ImageFiles(Dataset):
    """Worker side: decode, model transform and thumbnail of one file.

    `min_short` None decodes every image in full (the reference path, used to measure draft mode).
    """

    def __init__(
        self,
        paths,
        transform,
        thumb_size: int,
        min_short: int | None,
        limits: ImageLimits = DEFAULTS.image_limits,
    ):
        self.paths, self.transform, self.thumb_size = paths, transform, thumb_size
        self.min_short, self.limits = min_short, limits

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, path) -> Image.Image:
        if self.min_short is None:
            return open_image(path, self.limits)
        return open_reduced(path, self.min_short, self.thumb_size, self.limits)

    def __getitem__(self, position: int):
        try:
            image = self.decode(self.paths[position])
        except BadInput as error:
            return position, None, str(error)
        if not self.thumb_size:  # features only (research datasets)
            return position, self.transform(image), b""
        buffer = io.BytesIO()
        thumbnail(image, self.thumb_size).save(buffer, format="JPEG", quality=85)
        return position, self.transform(image), buffer.getvalue()


def _collate(samples):
    good = [s for s in samples if s[1] is not None]
    bad = [(s[0], s[2]) for s in samples if s[1] is None]
    pixels = torch.stack([s[1] for s in good]) if good else None
    return [s[0] for s in good], pixels, [s[2] for s in good], bad


def worker_init(_=None) -> None:
    """Every DataLoader worker of the project starts here: one thread (the main process owns the
    cores for the model), and it dies with its parent, so a killed server or command leaves no
    worker holding memory (Linux: the kernel sends SIGKILL when the parent goes)."""
    torch.set_num_threads(1)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect: orphaned already
        os._exit(1)


def encode_pixels(
    backbone: Backbone, pixels: torch.Tensor, normalise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(features, norms) of one batch of model inputs; every engine embeds through here, so
    in-process and Ray vectors come from the same arithmetic."""
    raw = backbone.encode_image_tensors(pixels, normalise=False)
    norms = torch.linalg.vector_norm(raw, dim=-1).cpu().numpy()
    features = torch.nn.functional.normalize(raw, dim=-1) if normalise else raw
    return features.cpu().numpy(), norms


def embed_files(
    backbone: Backbone,
    paths: list,
    settings: Settings = DEFAULTS,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    reduced_decode: bool = True,
    thumbnails: bool = True,
    normalise: bool = True,
) -> EmbeddedBatchResult:
    """Embed every readable image; unreadable ones are reported in `failed`, never fatal.

    `vectors` are unit length, or with `normalise=False` the image encoder's raw output; `norms`
    are recorded either way."""
    batch_size = batch_size or settings.batch_size
    num_workers = settings.num_workers if num_workers is None else num_workers
    num_workers = min(num_workers, os.cpu_count() or 1, max(0, len(paths) // batch_size))
    loader = DataLoader(
        _ImageFiles(
            list(paths),
            backbone.transform,
            settings.thumb_size if thumbnails else 0,
            backbone.image_size if reduced_decode else None,
            settings.image_limits,
        ),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=worker_init if num_workers else None,
        pin_memory=backbone.device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    vectors, norms, ok, thumbs, failed = [], [], [], {}, []
    bar = tqdm(
        total=len(paths), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True
    )
    for positions, pixels, thumb_bytes, bad in loader:
        failed.extend(bad)
        if pixels is not None:
            features, lengths = encode_pixels(backbone, pixels, normalise)
            vectors.append(features)
            norms.append(lengths)
            ok.extend(positions)
            thumbs.update(zip(positions, thumb_bytes, strict=True))
        bar.update(len(positions) + len(bad))
    bar.close()
    dim = backbone.dim
    matrix = (
        np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    )
    lengths = np.concatenate(norms).astype(np.float32) if norms else np.zeros(0, np.float32)
    return EmbeddedBatchResult(matrix, ok, thumbs, failed, lengths)
