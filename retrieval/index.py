"""The index artifact: a directory holding vectors, a FAISS index, item metadata and thumbnails.

Layout (every write makes a new version and then flips CURRENT with an atomic rename, so a crash
mid-write leaves the previous version loadable):
    index_dir/CURRENT                  name of the live version
    index_dir/versions/<v>/manifest.json, vectors.npy, items.jsonl, map.npy, [index.faiss]
    index_dir/thumbs/<id>-<hash>.jpg   shared by versions, written before the flip
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval import __version__
from retrieval.backbone import (
    Backbone,
    fingerprint_matches,
    model_fingerprint,
    portable_spec,
    relative_path,
    resolved_spec,
)
from retrieval.collection import Item, scan_folder
from retrieval.config import DEFAULTS, Settings
from retrieval.embed import embed_files
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.layout import compute_layout
from retrieval.runtime import MIN_AGREEMENT, combined_agreement

FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "hnsw", "ivfpq")
KEEP_VERSIONS = 2


def build_faiss(vectors: np.ndarray, index_type: str, params: dict) -> faiss.Index | None:
    """Flat search runs straight on the vectors; ANN types get a FAISS structure."""
    dim = vectors.shape[1]
    if index_type == "flat":
        return None
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.get("m", 32), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.get("ef_construction", 80)
        index.add(vectors)
        return index
    if index_type == "ivfpq":
        nlist = params.get("nlist") or max(1, min(4096, int(4 * np.sqrt(len(vectors)))))
        m = params.get("m") or _pq_subquantizers(dim)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        if len(vectors) < max(nlist, 256):
            raise BadInput(
                f"IVF-PQ needs at least {max(nlist, 256)} vectors to train; use flat or hnsw"
            )
        sample = vectors[
            np.random.default_rng(0).permutation(len(vectors))[: max(nlist * 40, 10_000)]
        ]
        index.train(np.ascontiguousarray(sample))
        index.add(vectors)
        return index
    raise BadInput(f"unknown index type {index_type!r}; choose one of {INDEX_TYPES}")


SMALL_QUERY_BATCH = 16
BLAS_MIN_ELEMENTS = 1 << 24  # ~32k vectors of 512-d: below that a plain scan is ~1 ms anyway


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int):
    """Exact top-k by inner product. A few queries on a large collection (user requests) go
    through one multi-threaded BLAS product + partial sort: faiss.knn scans one query on one
    thread, ~3.5x slower at 100k x 512 (see BENCHMARKS.md, text latency). Small collections and
    large query batches stay with faiss.knn (waking BLAS threads costs more than it saves there)."""
    if len(queries) > SMALL_QUERY_BATCH or vectors.size < BLAS_MIN_ELEMENTS:
        return faiss.knn(queries, np.ascontiguousarray(vectors), k, faiss.METRIC_INNER_PRODUCT)
    scores = np.asarray(queries @ np.asarray(vectors).T, dtype=np.float32)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def _pq_subquantizers(dim: int) -> int:
    return next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 2)


def _set_search_params(index: faiss.Index, params: dict) -> None:
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = params.get("ef_search", 64)
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = params.get("nprobe", 16)


@contextmanager
def _write_lock(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@dataclass
class Index:
    directory: Path
    manifest: dict
    items: list[dict]
    vectors: np.ndarray
    ann: faiss.Index | None = None
    layout: np.ndarray | None = None  # the collection map, (n, 2) in [0, 1]; None in old versions
    version: str = ""  # the version directory's name: caches derived from it live there

    def __post_init__(self):
        self._positions = {item["id"]: position for position, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._positions

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone | None = None) -> Index:
        for attempt in range(3):  # a concurrent writer may prune the version being read: read again
            try:
                return cls._load_current(Path(directory), backbone)
            except FileNotFoundError:
                if attempt == 2:
                    raise

    @classmethod
    def _load_current(cls, directory: Path, backbone: Backbone | None) -> Index:
        current = directory / "CURRENT"
        if not current.is_file():
            raise NotFound(f"{directory} is not an index (no CURRENT file); build one with `index`")
        version = current.read_text().strip()
        version_dir = directory / "versions" / version
        manifest = json.loads((version_dir / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexMismatch(
                f"index format {manifest.get('format')} is not supported (expected {FORMAT_VERSION})"
            )
        with open(version_dir / "items.jsonl", encoding="utf-8") as handle:
            items = [json.loads(line) for line in handle if line.strip()]
        vectors = np.load(version_dir / "vectors.npy", mmap_mode="r")
        ann = None
        if (version_dir / "index.faiss").is_file():
            ann = faiss.read_index(str(version_dir / "index.faiss"), faiss.IO_FLAG_MMAP)
            _set_search_params(ann, manifest.get("index_params", {}))
        layout = np.load(version_dir / "map.npy") if (version_dir / "map.npy").is_file() else None
        index = cls(directory, manifest, items, vectors, ann, layout, version)
        if backbone is not None:
            index.check_backbone(backbone)
        return index

    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse to search with a model the vectors did not come from."""
        built_with = f"{self.manifest['model_spec']} (dim {self.dim})"
        if backbone.dim != self.dim:
            raise IndexMismatch(
                f"the index at {self.directory} was built with {built_with}, but the model in use "
                f"({backbone.spec}) embeds into {backbone.dim} dimensions; rebuild the index or load its model"
            )
        if not fingerprint_matches(self.manifest.get("model_fingerprint"), backbone, atol=2e-3):
            raise IndexMismatch(
                f"the index at {self.directory} was built with {built_with}; the model in use "
                f"({backbone.spec}) has the same dimension but different weights"
            )
        self.check_runtime(backbone)

    def runtimes(self) -> dict[str, float]:
        """Each runtime whose vectors the index holds, with its agreement with PyTorch."""
        return self.manifest.get("runtimes") or {"torch": 1.0}

    def check_runtime(self, backbone: Backbone) -> None:
        """Vectors from one runtime and queries from another meet only when they agree closely."""
        for runtime, agreement in self.runtimes().items():
            bound = combined_agreement(agreement, backbone.runtime_agreement)
            if runtime != backbone.runtime and bound < MIN_AGREEMENT:
                raise IndexMismatch(
                    f"the index at {self.directory} holds {runtime} embeddings and queries run on "
                    f"{backbone.runtime}: for this model they agree only to cosine {bound:.4f} "
                    f"(needed: {MIN_AGREEMENT}); search with runtime {runtime} (--runtime, "
                    f'SR_RUNTIME or the collection\'s "runtime") or rebuild the index with '
                    f"{backbone.runtime}"
                )

    # -- lookups -----------------------------------------------------------------------------
    def version_dir(self) -> Path:
        return self.directory / "versions" / self.version

    def position(self, item_id: str) -> int:
        try:
            return self._positions[item_id]
        except KeyError:
            raise NotFound(f"no item {item_id!r} in this collection") from None

    def item(self, item_id: str) -> dict:
        return self.items[self.position(item_id)]

    def model_spec(self) -> str:
        """The recorded model spec, with a relative model folder resolved against the index."""
        return resolved_spec(self.manifest["model_spec"], self.directory)

    def source_root(self) -> Path:
        root = Path(self.manifest.get("source_root") or ".")
        return root if root.is_absolute() else (self.directory / root).resolve()

    def metadata_file(self) -> Path | None:
        """The metadata file the index was built from (recorded relative to the index, like images)."""
        recorded = self.manifest.get("metadata_file")
        return (self.directory / recorded).resolve() if recorded else None

    def image_path(self, item_id: str) -> Path:
        """The full-size original if it is still there, else the thumbnail."""
        item = self.item(item_id)
        root = self.source_root()
        path = (root / item["file"]).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path
        return self.thumb_path(item_id)

    def thumb_path(self, item_id: str) -> Path:
        thumbs = (self.directory / "thumbs").resolve()
        path = (thumbs / self.item(item_id)["thumb"]).resolve()
        if not path.is_relative_to(thumbs):
            raise NotFound(f"item {item_id!r} has no thumbnail inside the index")
        return path

    # -- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
        """Top-k (scores, positions) by inner product; `allowed` restricts to those positions (exact)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if len(allowed) == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros(
                    (len(queries), 0), np.int64
                )
            subset = np.ascontiguousarray(self.vectors[allowed])
            scores, local = faiss.knn(
                queries, subset, min(k, len(allowed)), faiss.METRIC_INNER_PRODUCT
            )
            return scores, allowed[local]
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.ann is None:
            return exact_search(queries, self.vectors, k)
        scores, positions = self.ann.search(queries, k)
        return scores, positions

    # -- writing -----------------------------------------------------------------------------
    def update_metadata(self, updates: dict[str, dict]) -> Index:
        """Merge fields into items (e.g. tags) and save as a new version."""
        items = [dict(item) for item in self.items]
        for item_id, fields in updates.items():
            items[self.position(item_id)].update(fields)
        vectors = np.asarray(self.vectors)
        return write_version(self.directory, self.manifest, items, vectors, self.layout)

    def redraw_map(self, method: str) -> Index:
        """A new version whose collection map is drawn with `method` (same items and vectors)."""
        manifest = {**self.manifest, "map": {"requested": method}}
        return write_version(self.directory, manifest, self.items, np.asarray(self.vectors))


def write_version(
    directory: Path,
    manifest: dict,
    items: list[dict],
    vectors: np.ndarray,
    layout: np.ndarray | None = None,
) -> Index:
    """Write a complete new version next to the live one, then flip CURRENT atomically.

    Without a `layout` (new vectors), the collection map is drawn with the method the manifest
    asks for (`map.requested`)."""
    directory = Path(directory)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    manifest = {
        **manifest,
        "count": len(items),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if layout is None or len(layout) != len(vectors):
        requested = manifest.get("map", {}).get("requested", "auto")
        layout, drawn = compute_layout(vectors, requested)
        manifest["map"] = {"requested": requested, **drawn}
    ann = (
        build_faiss(vectors, manifest["index_type"], manifest.get("index_params", {}))
        if len(items)
        else None
    )
    with _write_lock(directory):
        name = f"v{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        staging = directory / "versions" / f".{name}.tmp"
        staging.mkdir(parents=True)
        np.save(staging / "vectors.npy", vectors)
        np.save(staging / "map.npy", np.asarray(layout, dtype=np.float32))
        if ann is not None:
            faiss.write_index(ann, str(staging / "index.faiss"))
        lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        (staging / "items.jsonl").write_text(lines, encoding="utf-8")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(staging, directory / "versions" / name)
        write_atomic(directory / "CURRENT", name.encode())
        _prune_versions(directory, keep=name)
    return Index.load(directory)


def _prune_versions(directory: Path, keep: str) -> None:
    versions = sorted(
        (p for p in (directory / "versions").iterdir() if not p.name.startswith(".")),
        key=os.path.getmtime,
    )
    stale = [p for p in versions if p.name != keep][: max(0, len(versions) - KEEP_VERSIONS)]
    for path in stale + [p for p in (directory / "versions").glob(".*.tmp")]:
        shutil.rmtree(path, ignore_errors=True)


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _thumb_name(item_id: str, fingerprint: str) -> str:
    return f"{item_id}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:10]}.jpg"


def _embed_items(
    items: list[Item], directory: Path, backbone: Backbone, progress: bool, settings: Settings
):
    """Embed items and write their thumbnails; returns (metadata rows, vectors, skipped)."""
    result = embed_files(backbone, [item.path for item in items], settings, progress=progress)
    thumbs = directory / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    rows = []
    for position in result.ok:
        item = items[position]
        fingerprint = _file_fingerprint(item.path)
        row = {**item.meta, "fingerprint": fingerprint, "thumb": _thumb_name(item.id, fingerprint)}
        write_atomic(thumbs / row["thumb"], result.thumbs[position])
        rows.append(row)
    skipped = [(items[position].meta["file"], reason) for position, reason in result.failed]
    return rows, result.vectors, skipped


@dataclass
class BuildReport:
    index: Index
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list = None

    def summary(self) -> str:
        text = (
            f"{len(self.index)} items in {self.index.directory} ({self.added} added, {self.changed} changed, "
            f"{self.removed} removed, {self.unchanged} unchanged)"
        )
        for file, reason in self.skipped or []:
            text += f"\n  skipped {file}: {reason}"
        return text

    def as_dict(self) -> dict:
        """The report as JSON: what the version holds, what changed, and every file left out."""
        counts = ("added", "changed", "removed", "unchanged")
        return {
            "indexed": len(self.index),
            **{name: getattr(self, name) for name in counts},
            "skipped": _skip_records(self.skipped or []),
        }


def build_index(
    folder: str | Path,
    out_dir: str | Path,
    backbone: Backbone,
    index_type: str = "flat",
    metadata: str | Path | None = None,
    index_params: dict | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """Embed a whole folder into a fresh index (replacing any index already at `out_dir`)."""
    if index_type not in INDEX_TYPES:
        raise BadInput(f"unknown index type {index_type!r}; choose one of {INDEX_TYPES}")
    folder, out_dir = Path(folder), Path(out_dir)
    items, skipped = scan_folder(folder, metadata)
    if not items:
        raise BadInput(
            f"no images found in {folder.name!r} ({_some(skipped) or 'an empty folder'})"
        )
    rows, vectors, failed = _embed_items(items, out_dir, backbone, progress, settings)
    if not rows:
        raise BadInput(f"none of the {len(items)} images could be read: {_some(failed)}")
    manifest = {
        "format": FORMAT_VERSION,
        "retrieval_version": __version__,
        "model_spec": portable_spec(backbone.spec, out_dir),
        "model_fingerprint": model_fingerprint(backbone),
        "dim": backbone.dim,
        "preprocessing": backbone.preprocessing,
        "runtimes": {backbone.runtime: backbone.runtime_agreement},
        "normalized": True,
        "index_type": index_type,
        "index_params": index_params or {},
        "map": {"requested": settings.map_method},
        "source_root": relative_path(folder, out_dir),
        "metadata_file": relative_path(Path(metadata), out_dir) if metadata else None,
        "skipped": _skip_records(skipped + failed),
    }
    index = write_version(out_dir, manifest, rows, vectors)
    return BuildReport(index, added=len(rows), skipped=skipped + failed)


def update_index(
    out_dir: str | Path,
    backbone: Backbone,
    folder: str | Path | None = None,
    metadata: str | Path | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """Embed only new or changed files, drop deleted ones, refresh metadata of the rest."""
    index = Index.load(out_dir, backbone)
    folder = Path(folder) if folder else index.source_root()
    metadata = metadata or index.metadata_file()
    known_ids = {row["file"]: row["id"] for row in index.items if "file" in row}
    items, skipped = scan_folder(folder, metadata, known_ids)
    old = {row["id"]: position for position, row in enumerate(index.items)}
    keep_rows, keep_vectors, todo = [], [], []
    for item in items:
        position = old.get(item.id)
        if position is not None and index.items[position].get("fingerprint") == _file_fingerprint(
            item.path
        ):
            previous = index.items[position]
            keep_rows.append(
                {
                    **item.meta,
                    "fingerprint": previous["fingerprint"],
                    "thumb": previous["thumb"],
                    **({"tags": previous["tags"]} if "tags" in previous else {}),
                }
            )
            keep_vectors.append(np.asarray(index.vectors[position]))
        else:
            todo.append(item)
    new_rows, new_vectors, failed = (
        _embed_items(todo, Path(out_dir), backbone, progress, settings) if todo else ([], None, [])
    )
    rows = keep_rows + new_rows
    if not rows:
        raise BadInput(f"no readable images left in {folder}")
    parts = ([np.stack(keep_vectors)] if keep_vectors else []) + ([new_vectors] if new_rows else [])
    runtimes = index.runtimes() | ({backbone.runtime: backbone.runtime_agreement} if todo else {})
    manifest = {
        **index.manifest,
        "runtimes": runtimes,
        "source_root": relative_path(folder, Path(out_dir)),
        "skipped": _skip_records(skipped + failed),
    }
    new_index = write_version(Path(out_dir), manifest, rows, np.concatenate(parts))
    final, embedded = {row["id"] for row in rows}, {row["id"] for row in new_rows}
    return BuildReport(  # counted on what the new version holds: added + changed + unchanged = len
        new_index,
        added=len(final - old.keys()),
        changed=len(embedded & old.keys()),
        removed=len(old.keys() - final),
        unchanged=len(keep_rows),
        skipped=skipped + failed,
    )


def _skip_records(skipped: list[tuple[str, str]]) -> list[dict]:
    return [{"file": file, "reason": reason} for file, reason in skipped]


def _some(skipped: list[tuple[str, str]], count: int = 3) -> str:
    """The first few skipped files and why, for an error message."""
    shown = "; ".join(f"{file}: {reason}" for file, reason in skipped[:count])
    return shown + (f"; and {len(skipped) - count} more" if len(skipped) > count else "")
