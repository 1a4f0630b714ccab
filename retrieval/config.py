"""All settings in one place. Every field can be set by an environment variable `SR_<FIELD>`.

Only the entry points (`app.py`, `python -m retrieval`, the benchmarks) call `Settings.from_env()`;
the library takes the resulting object (or the part it needs) as an argument, so a test or an
embedding application controls every limit without touching the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES_MODEL_DIR = ROOT / "precomputed" / "shapes-clip-small"
SHAPES_INDEX_DIR = ROOT / "precomputed" / "shapes" / "index"


def _env_value(name: str, default):
    raw = os.environ.get(f"SR_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


@dataclass(frozen=True)
class Settings:
    """Runtime limits and locations; see the README table of `SR_*` variables."""

    collections_file: str = str(ROOT / "collections.json")
    cache_dir: str = str(ROOT / "cache")
    device: str = ""  # "" picks CUDA when present, else CPU
    runtime: str = ""  # torch | onnx | onnx-int8; "" runs each collection on its own runtime
    batch_size: int = 64
    num_workers: int = 2
    max_upload_mb: int = 200
    max_image_mb: int = 20
    max_image_pixels: int = 40_000_000
    max_zip_images: int = 5_000
    max_zip_ratio: int = 100  # uncompressed / compressed size, a zip bomb guard
    max_unzipped_mb: int = 2_000  # total size a zip upload may expand to
    max_k: int = 200
    thumb_size: int = 256
    map_method: str = "auto"  # the collection map: auto | umap | pca (see retrieval.layout)
    engine: str = "inprocess"  # who embeds index/update: inprocess | ray (retrieval.ray_engine)
    ray_address: str = ""  # engine ray: "" starts a local one-node Ray; auto | ray://host:10001
    ray_actors: int = 0  # engine ray: model actors; 0 = one per GPU, else one per ray_actor_cpus
    ray_actor_cpus: int = 1  # engine ray: CPUs (decoding threads) each model actor reserves
    milvus_uri: str = ""  # --backend milvus: "" = Milvus Lite file <cache_dir>/milvus.db at build
    api_key: str = ""
    cors_origins: tuple = ()
    host: str = "127.0.0.1"
    port: int = 7860
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        values = {f.name: _env_value(f.name, f.default) for f in fields(cls) if f.name != "extra"}
        return cls(**values)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.max_image_mb)

    @property
    def features_dir(self) -> Path:
        """Where cached image features of research datasets live."""
        return Path(self.cache_dir) / "features"


@dataclass(frozen=True)
class ImageLimits:
    """What one decoded image may cost: the part of the settings every image decoder needs."""

    max_pixels: int
    max_mb: int


DEFAULTS = Settings()  # the documented defaults, without reading the environment
