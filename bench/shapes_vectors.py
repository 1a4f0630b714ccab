"""Real embeddings for the ANN benchmark: freshly rendered random Shapes scenes embedded by the
shipped Shapes CLIP (128-d), cached in chunks under runs/ann-cache/ so a run can stop and resume.

Each chunk is a fixed random stream (seed, chunk number): the same count always gives the same
vectors, and a chunk is written whole (temporary file + rename) or not at all. Every chunk
records the wall and CPU seconds it took, so the cost of a million can be stated from measurement.

    python -m bench.shapes_vectors --count 200000            # background job, resumable
    python -m bench.shapes_vectors --count 200 --seed 1      # held-out queries
    python -m bench.shapes_vectors --count 1000000 --shard 0/2 &  # one process per core
    python -m bench.shapes_vectors --count 1000000 --shard 1/2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.backbone import load_backbone
from retrieval.config import SHAPES_MODEL_DIR
from retrieval.shapes.world import random_scene, render

ROOT = Path(__file__).resolve().parent.parent
MODEL = SHAPES_MODEL_DIR  # the shipped Shapes CLIP (128-d)


def weights_tag(model_dir: Path) -> str:
    """The folder name and a hash of its weights: a retrained model under the same name must not
    read the vectors its predecessor cached."""
    digest = hashlib.sha1()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return f"{model_dir.name}-{digest.hexdigest()[:10]}"


CACHE = ROOT / "runs/ann-cache" / weights_tag(MODEL)
CHUNK = 10_000
BATCH = 250


def chunk_path(cache: Path, seed: int, chunk: int) -> Path:
    return cache / f"seed{seed}-chunk{chunk:04d}.npy"


def embed_chunk(backbone, seed: int, chunk: int, size: int) -> np.ndarray:
    """`size` random scenes (any split, 1-3 objects) rendered as the dataset renders them and
    embedded through the backbone's own preprocessing: what indexing a Shapes folder stores."""
    rng = np.random.default_rng([seed, chunk])
    parts = []
    for start in range(0, size, BATCH):
        scenes = [random_scene(rng) for _ in range(min(BATCH, size - start))]
        images = [render(scene, int(rng.integers(2**31)))[0] for scene in scenes]
        parts.append(backbone.encode_images(images))
    return np.concatenate(parts).astype(np.float32)


def write_chunk(cache: Path, seed: int, chunk: int, size: int, backbone) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = embed_chunk(backbone, seed, chunk, size)
    path = chunk_path(cache, seed, chunk)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, vectors)
    os.replace(temporary, path)
    cost = {
        "images": size,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }
    path.with_suffix(".json").write_text(json.dumps(cost))
    print(
        f"{path.name}: {size} images, {cost['cpu_s']:.0f} s CPU, {cost['wall_s']:.0f} s", flush=True
    )


def chunk_sizes(count: int) -> list[int]:
    return [min(CHUNK, count - start) for start in range(0, count, CHUNK)]


def _cached(path: Path, size: int) -> bool:
    return path.is_file() and len(np.load(path, mmap_mode="r")) >= size


def embed_shard(count: int, seed: int, shard: int, shards: int, cache: Path = CACHE) -> None:
    """Embed the missing chunks numbered shard, shard + shards, ...: `shards` processes, one per
    core, fill one cache between them without ever writing the same chunk."""
    cache.mkdir(parents=True, exist_ok=True)
    backbone = None
    for chunk, size in enumerate(chunk_sizes(count)):
        path = chunk_path(cache, seed, chunk)
        if chunk % shards != shard or _cached(path, size):
            continue
        backbone = backbone or load_backbone(str(MODEL), device="cpu")
        write_chunk(cache, seed, chunk, size, backbone)


def shapes_vectors(
    count: int, seed: int = 0, cache: Path = CACHE, embed: bool = True
) -> np.ndarray:
    """The first `count` embeddings of stream `seed`, embedding the chunks not cached yet
    (`embed=False`: refuse instead, so a benchmark never starts a long job by surprise)."""
    if embed:
        embed_shard(count, seed, 0, 1, cache)
    for chunk, size in enumerate(chunk_sizes(count)):
        path = chunk_path(cache, seed, chunk)
        if not _cached(path, size):
            raise FileNotFoundError(f"{path} is missing: run python -m bench.shapes_vectors first")
    parts = [
        np.load(chunk_path(cache, seed, chunk))[:size]
        for chunk, size in enumerate(chunk_sizes(count))
    ]
    return np.ascontiguousarray(np.concatenate(parts))


def measured_rate(cache: Path = CACHE) -> dict:
    """Images per CPU second and per wall second over every cached chunk."""
    costs = [json.loads(path.read_text()) for path in sorted(cache.glob("seed*-chunk*.json"))]
    images = sum(cost["images"] for cost in costs)
    cpu = sum(cost["cpu_s"] for cost in costs)
    wall = sum(cost["wall_s"] for cost in costs)
    return {
        "images": images,
        "per_cpu_s": images / max(cpu, 1e-9),
        "per_wall_s": images / max(wall, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0, help="0: the collection; 1: queries")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: this process embeds chunks I, I+N, ..."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    shard, shards = (int(part) for part in args.shard.split("/"))
    if shards > 1:
        embed_shard(args.count, args.seed, shard, shards)
        return
    vectors = shapes_vectors(args.count, args.seed)
    print(vectors.shape, measured_rate())


if __name__ == "__main__":
    main()
