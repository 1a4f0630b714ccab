"""Image and text features of research datasets, cached on disk.

Image features are cached on disk under a key made of the model spec, a hash of its weights and
the preprocessing; an image is re-embedded only when that key or the file (size, mtime) changes.
Features are L2-normalised, or raw (the encoder's output, for models trained on it: the papers'
converted weights), each scale in a cache of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from retrieval.config import DEFAULTS, Settings
from retrieval.data.composed import ComposedSplit
from retrieval.embed import embed_files
from retrieval.errors import BadInput


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor of the model: two checkpoints with one spec never share a cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def feature_cache_key(backbone, normalise: bool = True) -> dict:
    key = {
        "model_spec": str(backbone.spec),
        "weights": weights_digest(backbone.model),
        "preprocessing": backbone.preprocessing,
        "image_size": backbone.image_size,
    }
    return key if normalise else {**key, "features": "raw"}  # normalised caches keep their key


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def embed_image_paths(
    backbone,
    paths: list[Path],
    batch_size: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
    normalise: bool = True,
) -> torch.Tensor:
    """(n, d) float32 features on CPU (normalised, or raw with `normalise=False`), through the
    serving pipeline (full decode, no thumbnails); any unreadable file is an error here, because
    metrics would lie."""
    result = embed_files(
        backbone,
        list(paths),
        settings,
        batch_size=batch_size or settings.batch_size,
        num_workers=num_workers,
        progress=progress,
        reduced_decode=False,
        thumbnails=False,
        normalise=normalise,
    )
    if result.failed:
        examples = "; ".join(f"{paths[p]}: {reason}" for p, reason in result.failed[:3])
        raise BadInput(f"{len(result.failed)} images could not be read ({examples})")
    return torch.from_numpy(result.vectors)


class FeatureCache:
    """Image features of one (model, weights, preprocessing, scale) on disk, grown as new images
    are asked for."""

    def __init__(self, backbone, cache_dir: str | Path | None = None, normalise: bool = True):
        self.backbone, self.normalise = backbone, normalise
        self.key = feature_cache_key(backbone, normalise)
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        root = Path(cache_dir) if cache_dir else DEFAULTS.features_dir
        self.directory = root / digest

    def _load(self) -> tuple[list[str], torch.Tensor]:
        keys_file, tensor_file = (
            self.directory / "keys.json",
            self.directory / "features.safetensors",
        )
        if not (keys_file.is_file() and tensor_file.is_file()):
            return [], torch.zeros(0, self.backbone.dim)
        keys = json.loads(keys_file.read_text())
        features = load_file(str(tensor_file))["features"]
        if len(keys) != len(features):  # a torn write: start over
            return [], torch.zeros(0, self.backbone.dim)
        return keys, features

    def _save(self, keys: list[str], features: torch.Tensor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"features.{os.getpid()}.tmp"
        save_file({"features": features.contiguous()}, str(tmp))
        os.replace(tmp, self.directory / "features.safetensors")
        (self.directory / "keys.json.tmp").write_text(json.dumps(keys))
        os.replace(self.directory / "keys.json.tmp", self.directory / "keys.json")
        (self.directory / "model.json").write_text(json.dumps(self.key, indent=2))

    def features(
        self, paths: list[Path], progress: bool = True, batch_size: int = 0
    ) -> torch.Tensor:
        """(n, d) features in the order of `paths`; only images missing from the cache are embedded."""
        keys, stored = self._load()
        position = {key: row for row, key in enumerate(keys)}
        wanted = [_file_key(Path(path)) for path in paths]
        missing = list(dict.fromkeys(key for key in wanted if key not in position))
        if missing:
            by_key = dict(zip(wanted, paths, strict=True))
            fresh = embed_image_paths(
                self.backbone,
                [by_key[key] for key in missing],
                batch_size,
                progress=progress,
                normalise=self.normalise,
            )
            for key in missing:
                position[key] = len(keys)
                keys.append(key)
            stored = torch.cat([stored, fresh])
            self._save(keys, stored)
        return stored[torch.tensor([position[key] for key in wanted], dtype=torch.long)]


def image_features(
    backbone,
    paths: list[Path],
    cache: bool | str | Path = True,
    progress: bool = True,
    batch_size: int = 0,
    normalise: bool = True,
) -> torch.Tensor:
    """Features of image files, through the on-disk cache unless `cache` is False (training models);
    normalised, or the encoder's raw output with `normalise=False`."""
    if cache is False:
        return embed_image_paths(
            backbone, list(paths), batch_size, progress=progress, normalise=normalise
        )
    cache_dir = None if cache is True else cache
    return FeatureCache(backbone, cache_dir, normalise).features(list(paths), progress, batch_size)


def split_features(
    split: ComposedSplit,
    backbone,
    cache: bool | str | Path = True,
    progress: bool = True,
    normalise: bool = True,
) -> tuple[list[str], torch.Tensor]:
    """(names, features) of every image of a split, in `split.images` order; raw features (for
    models trained on them) with `normalise=False`."""
    names = list(split.images)
    paths = [split.images[n] for n in names]
    return names, image_features(backbone, paths, cache, progress, normalise=normalise)


def encode_texts(
    backbone, texts: list[str], batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """Normalised text features (CPU float32) of many strings, in batches."""
    chunks = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc="embed texts", disable=not progress, leave=False
    ):
        batch = texts[start : start + batch_size]
        chunks.append(backbone.encode_token_ids(backbone.tokenize(batch)).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.dim)


def unique_rows(values: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct strings and, for each input, its row among them (encode each text once)."""
    distinct = list(dict.fromkeys(values))
    row = {value: i for i, value in enumerate(distinct)}
    return distinct, np.array([row[value] for value in values], dtype=np.int64)
