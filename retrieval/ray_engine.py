"""The Ray engine: `embed_files` spread over Ray Data model actors, on one machine or a cluster.

Only the file list leaves the driver. Each actor loads the model once, then decodes its batches
with the in-process pipeline's own loader (`_ImageFiles`: same decoding, transform, thumbnail and
error messages) and embeds them through `encode_pixels`, so its vectors are the in-process ones.
The answer is an `EmbeddedBatchResult`, what `embed_files` returns, so whatever writes the index
(a FAISS version, a Milvus collection) takes it unchanged.

On a cluster every node needs this project's requirements, the image files at the same paths and
the model (a Hub spec, or a folder at the same path); the `retrieval` package itself is shipped
with the job. ray is imported only inside this module's functions, when the engine is used.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from retrieval.backbone import Backbone, load_backbone, resolved_spec
from retrieval.config import DEFAULTS, ImageLimits, Settings
from retrieval.embed import EmbeddedBatchResult, _collate, _ImageFiles, encode_pixels
from retrieval.errors import BadInput, RetrievalError

INSTALL_HINT = "pip install -r requirements-scale.txt"
MAX_BLOCKS = 10_000  # input blocks of the file list: one per batch up to this many


class EngineUnavailable(RetrievalError):
    """The Ray engine cannot run here (ray not installed)."""

    status_code = 503


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise EngineUnavailable(f"the Ray engine needs ray[data]: {INSTALL_HINT}") from error
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors run and what each one reserves."""

    actors: int
    num_cpus: int  # also the actor's decoding threads and torch threads
    num_gpus: float


def plan_actors(resources: dict, settings: Settings = DEFAULTS) -> ActorPlan:
    """One actor per GPU when the cluster has GPUs (and SR_DEVICE does not say cpu), else one per
    `ray_actor_cpus` CPUs, so the pool fills the cluster; `ray_actors` sets the count instead."""
    cpus = max(1, settings.ray_actor_cpus)
    gpus = 0 if settings.device == "cpu" else int(resources.get("GPU", 0))
    if gpus:
        actors = settings.ray_actors or gpus
        return ActorPlan(actors, cpus, min(1.0, gpus / actors))
    actors = settings.ray_actors or max(1, int(resources.get("CPU", 1)) // cpus)
    return ActorPlan(actors, cpus, 0.0)


@contextmanager
def ray_session(address: str = ""):
    """Use the Ray this process is already connected to; else connect to `address` (`auto`,
    `ray://head:10001`, shipping the `retrieval` package) or, without one, start a local
    one-node Ray. Whatever this opened is closed (a local Ray stopped) on the way out."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        code = {"py_modules": [str(Path(__file__).parent)], "excludes": ["__pycache__"]}
        ray.init(address=address, runtime_env=code, logging_level=logging.WARNING)
    else:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def embed_files_ray(
    backbone: Backbone, paths: list, settings: Settings = DEFAULTS, progress: bool = True
) -> EmbeddedBatchResult:
    """`embed_files` on Ray (same arguments, same result): the cluster at `settings.ray_address`,
    or a one-node Ray started for this call; actors as `plan_actors` lays them out."""
    if not paths:
        return _empty(backbone.dim)
    with ray_session(settings.ray_address) as ray:
        plan = plan_actors(ray.cluster_resources(), settings)
        return embed_with_actors(ray, backbone, paths, plan, settings, progress)


def embed_with_actors(
    ray, backbone: Backbone, paths: list, plan: ActorPlan, settings: Settings, progress: bool
) -> EmbeddedBatchResult:
    """Run the file list through a pool of `plan.actors` model actors and gather the rows."""
    if plan.num_gpus and backbone.runtime != "torch":
        raise BadInput(f"runtime {backbone.runtime} runs on the CPU; the Ray actors here get GPUs")
    files = [str(Path(path).absolute()) for path in paths]  # actors may start elsewhere
    batch = settings.batch_size
    blocks = min(MAX_BLOCKS, -(-len(files) // batch))
    listing = ray.data.from_items(
        [{"position": position, "path": file} for position, file in enumerate(files)],
        override_num_blocks=blocks,
    )
    listing.context.enable_progress_bars = False  # the driver shows its own bar
    rows = listing.map_batches(
        EmbedActor,
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(plan.actors, blocks)),  # none idle
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        fn_constructor_kwargs=actor_arguments(backbone, plan, settings),
        udf_modifying_row_count=False,
    )
    batches = rows.iter_batches(batch_size=None, batch_format="numpy")
    return gather(batches, len(files), backbone.dim, progress)


def actor_arguments(backbone: Backbone, plan: ActorPlan, settings: Settings) -> dict:
    """What an actor needs to rebuild the driver's model (not the model: actors load their own)."""
    model = {
        "spec": resolved_spec(backbone.spec, Path.cwd()),
        "preprocessing": backbone.preprocessing,
        "device": "cuda" if plan.num_gpus else "cpu",
        "image_limits": backbone.image_limits,
        "runtime": backbone.runtime,
        "cache_dir": settings.cache_dir,
    }
    return {
        "model": model,
        "thumb_size": settings.thumb_size,
        "limits": settings.image_limits,
        "threads": plan.num_cpus,
    }


class EmbedActor:
    """A Ray Data model actor: loads the model once, then decodes and embeds a batch per call.

    Every input row comes back (`ok` False and the reason in `error` for an unreadable file), so
    the driver can tell a failed file from one Ray lost."""

    def __init__(self, model: dict, thumb_size: int, limits: ImageLimits, threads: int):
        torch.set_num_threads(threads)
        self.backbone = load_backbone(**model)
        self.thumb_size, self.limits = thumb_size, limits
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None  # PIL decodes off the GIL

    def decode(self, paths: list[str]):
        """(positions in the batch, model inputs, thumbnails, failures), as a DataLoader batch."""
        backbone = self.backbone
        files = _ImageFiles(
            paths, backbone.transform, self.thumb_size, backbone.image_size, self.limits
        )
        run = self.pool.map if self.pool else map
        return _collate(list(run(files.__getitem__, range(len(paths)))))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        backbone, count = self.backbone, len(batch["path"])
        local, pixels, thumbs, bad = self.decode([str(path) for path in batch["path"]])
        out = {
            "position": np.asarray(batch["position"], np.int64),
            "ok": np.zeros(count, bool),
            "vector": np.zeros((count, backbone.dim), np.float32),
            "norm": np.zeros(count, np.float32),
            "thumb": np.array([b""] * count, dtype=object),
            "error": np.array([""] * count, dtype=object),
        }
        if pixels is not None:
            out["vector"][local], out["norm"][local] = encode_pixels(backbone, pixels)
            out["ok"][local] = True
        for position, thumb in zip(local, thumbs, strict=True):
            out["thumb"][position] = thumb  # one by one: numpy would make bytes arrays of a list
        for position, reason in bad:
            out["error"][position] = reason
        return out


def gather(batches, count: int, dim: int, progress: bool = True) -> EmbeddedBatchResult:
    """Place every returned row at its input position, as `embed_files` orders them. A file that
    came back neither embedded nor failed is an error: nothing is dropped without a word."""
    vectors, norms = np.zeros((count, dim), np.float32), np.zeros(count, np.float32)
    seen, embedded = np.zeros(count, bool), np.zeros(count, bool)
    thumbs, failed = {}, []
    bar = tqdm(total=count, unit="img", desc="embedding (ray)", disable=not progress)
    for batch in batches:
        positions, ok = batch["position"].astype(np.int64), batch["ok"].astype(bool)
        seen[positions] = True
        embedded[positions[ok]] = True
        vectors[positions[ok]], norms[positions[ok]] = batch["vector"][ok], batch["norm"][ok]
        thumbs.update(zip(positions[ok].tolist(), map(bytes, batch["thumb"][ok]), strict=True))
        failed.extend(zip(positions[~ok].tolist(), map(str, batch["error"][~ok]), strict=True))
        bar.update(len(positions))
    bar.close()
    if not seen.all():
        raise RuntimeError(f"Ray returned {int(seen.sum())} of {count} files")
    ok = np.flatnonzero(embedded)
    return EmbeddedBatchResult(vectors[ok], ok.tolist(), thumbs, sorted(failed), norms[ok])


def _empty(dim: int) -> EmbeddedBatchResult:
    return EmbeddedBatchResult(np.zeros((0, dim), np.float32), [], {}, [], np.zeros(0, np.float32))
