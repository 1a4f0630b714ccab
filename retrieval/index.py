"""The index artifact: a directory holding vectors, a FAISS index, item metadata and thumbnails.

Layout (every write makes a new version and then flips CURRENT with an atomic rename, so a crash
mid-write leaves the previous version loadable):
    index_dir/CURRENT                  name of the live version
    index_dir/versions/<v>/manifest.json, vectors.npy, items.jsonl, map.npy, [index.faiss],
                           norms.npy (each image feature's norm before normalisation; absent in
                           indexes built before it was recorded)
    index_dir/thumbs/<id>-<hash>.jpg   shared by versions, written before the flip

The vectors are unit length. A composed model trained on raw CLIP features (the papers' converted
weights) gets an item's raw feature as vector * norm.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
INDEX_TYPES = ("flat", "hnsw", "ivfflat", "ivfpq")  # what a version stores
INDEX_CHOICES = ("auto", *INDEX_TYPES)  # what a build may ask for
ENGINES = ("inprocess", "ray")  # what embeds the images (Settings.engine)
KEEP_VERSIONS = 2
MILVUS_MANIFEST = "milvus.json"  # a folder holding it is a collection living in Milvus

# `auto` keeps exact search up to this many items. A flat query costs ~N*512 multiply-adds: at
# 200k x 512 about 35 ms of one core (BENCHMARKS.md, "ann-scale-clip-like": 16.8 ms at 100k), well
# under the ~500 ms text-encoder forward ("Text query latency"), and it is exact. Above it HNSW.
FLAT_MAX_ITEMS = 200_000
# HNSW graph quality: M=16/efConstruction=40 gave recall@10 0.45-0.78 at 100k x 512-d; M=32 /
# efConstruction=200 gave 0.977 at efSearch=64 (issue #17).
HNSW_DEFAULTS = {"m": 32, "ef_construction": 200, "ef_search": 64}
# IVF-PQ's 8-bit codes blur the ranking: the top `rerank` candidates are re-scored exactly on
# vectors.npy (0.45-0.6 recall@10 without, 0.91-0.93 with the top 100; issue #17).
IVF_DEFAULTS = {"nprobe": 16, "rerank": 100}
# the per-query effort knob each ANN index type has (flat has none)
EFFORT_KNOB = {"hnsw": "ef_search", "ivfflat": "nprobe", "ivfpq": "nprobe"}
MAX_SEARCH_EFFORT = 4096  # per-query ef_search / nprobe: beyond this flat search is cheaper
RECALL_QUERIES, RECALL_K = 200, 10
# The effort a build starts from (ef_search 64, nprobe 16) is enough for data like the Shapes
# embeddings at 1M, not for more varied data: there IVF-Flat at nprobe 16 keeps 0.81 of recall@10
# (BENCHMARKS.md, "ann-scale-*"). So a build doubles the effort until its own measured recall
# reaches this target, unless index_params fix it.
RECALL_TARGET = 0.95


def choose_index_type(requested: str, count: int, flat_max_items: int = FLAT_MAX_ITEMS) -> str:
    """The stored type for a request: `auto` is exact (flat) up to `flat_max_items`, else HNSW."""
    if requested not in INDEX_CHOICES:
        raise BadInput(f"unknown index type {requested!r}; choose one of {INDEX_CHOICES}")
    if requested != "auto":
        return requested
    return "flat" if count <= flat_max_items else "hnsw"


def build_faiss(vectors: np.ndarray, index_type: str, params: dict) -> faiss.Index | None:
    """Flat search runs straight on the vectors; ANN types get a FAISS structure."""
    dim = vectors.shape[1]
    if index_type == "flat":
        return None
    if index_type == "hnsw":
        params = {**HNSW_DEFAULTS, **params}
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.add(vectors)
        return index
    if index_type in ("ivfflat", "ivfpq"):
        nlist = params.get("nlist") or default_nlist(len(vectors))
        return _trained_ivf(vectors, index_type, nlist, params)
    raise BadInput(f"unknown index type {index_type!r}; choose one of {INDEX_TYPES}")


@dataclass(frozen=True)
class SearchEffort:
    """Per-query ANN effort: HNSW's efSearch, IVF's nprobe; None keeps the index's own."""

    ef_search: int | None = None
    nprobe: int | None = None

    def __post_init__(self):
        for name in ("ef_search", "nprobe"):
            value = getattr(self, name)
            valid = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and not (valid and 1 <= value <= MAX_SEARCH_EFFORT):
                raise BadInput(
                    f"{name} must be a whole number between 1 and {MAX_SEARCH_EFFORT}, got {value!r}"
                )

    def given(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self).items() if value is not None}


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


def default_nlist(count: int) -> int:
    """IVF lists for a collection of `count` items: 4 sqrt(N), at most 4096."""
    return max(1, min(4096, int(4 * np.sqrt(count))))


def _trained_ivf(vectors: np.ndarray, index_type: str, nlist: int, params: dict) -> faiss.Index:
    """IVF-Flat keeps each vector whole in its list; IVF-PQ keeps 8-bit codes of m sub-vectors."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if index_type == "ivfflat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        least, name = nlist, "IVF-Flat"
    else:
        m = params.get("m") or _pq_subquantizers(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        least, name = max(nlist, 256), "IVF-PQ"
    if len(vectors) < least:
        raise BadInput(f"{name} needs at least {least} vectors to train; use flat or hnsw")
    sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: max(nlist * 40, 10_000)]]
    index.train(np.ascontiguousarray(sample))
    index.add(vectors)
    return index


def _pq_subquantizers(dim: int) -> int:
    return next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 2)


def search_settings(index_type: str, params: dict, tuned: dict | None = None) -> dict:
    """How an index searches unless a query says otherwise: `params` (index_params) first, then
    what the build `tuned`, then the defaults. IVF-Flat's lists hold the exact vectors, so only
    IVF-PQ re-ranks."""
    params = {**(tuned or {}), **params}
    if index_type == "hnsw":
        return {"ef_search": params.get("ef_search", HNSW_DEFAULTS["ef_search"])}
    if index_type in ("ivfflat", "ivfpq"):
        settings = {"nprobe": params.get("nprobe", IVF_DEFAULTS["nprobe"])}
        if index_type == "ivfpq":
            settings["rerank"] = params.get("rerank", IVF_DEFAULTS["rerank"])
        return settings
    return {}


def _set_search_params(index: faiss.Index, settings: dict) -> None:
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = settings["ef_search"]
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = settings["nprobe"]


def rerank_exact(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int):
    """The best k of each query's ANN candidates by exact inner product on the stored vectors;
    missing candidates (-1) stay last."""
    found = candidates >= 0
    picked = np.asarray(vectors[np.where(found, candidates, 0).ravel()], np.float32)
    scores = np.einsum("qcd,qd->qc", picked.reshape(*candidates.shape, -1), queries)
    scores = np.where(found, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def _faiss_params(index: faiss.Index, effort: SearchEffort):
    """FAISS per-call parameters (the shared index is never mutated: requests run in threads)."""
    if isinstance(index, faiss.IndexHNSW) and effort.ef_search is not None:
        return faiss.SearchParametersHNSW(efSearch=effort.ef_search)
    if isinstance(index, faiss.IndexIVF) and effort.nprobe is not None:
        return faiss.SearchParametersIVF(nprobe=effort.nprobe)
    return None


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
    norms: np.ndarray | None = None  # (n,) image features' norms before normalisation; None: old

    def __post_init__(self):
        self._positions = {item["id"]: position for position, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._positions

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def label(self) -> str:
        """How messages name this collection."""
        return f"the index at {self.directory}"

    @staticmethod
    def settings_of(manifest: dict) -> dict:
        index_type, params = manifest.get("index_type", "flat"), manifest.get("index_params", {})
        return search_settings(index_type, params, manifest.get("tuned_search"))

    def effort_notes(self, effort: SearchEffort, filtered: bool = False) -> list[str]:
        """Why a given ef_search / nprobe did not apply to this search."""
        index_type = self.manifest.get("index_type", "flat")
        notes = []
        for name in effort.given():
            if filtered and self.ann is not None:
                notes.append(f"{name} was ignored: filtered searches are exact")
            elif EFFORT_KNOB.get(index_type) != name:
                tuned = " / ".join(kind for kind, knob in EFFORT_KNOB.items() if knob == name)
                exact = " (exact search)" if index_type == "flat" else ""
                notes.append(
                    f"{name} was ignored: it tunes {tuned} indexes and this collection's "
                    f"index is {index_type}{exact}"
                )
        return notes

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone | None = None) -> Index:
        """The live version (`retrieval.stores.open_index` also opens Milvus collections)."""
        for attempt in range(3):  # a concurrent writer may prune the version being read: read again
            try:
                return cls._load_current(Path(directory), backbone)
            except FileNotFoundError:
                if attempt == 2:
                    raise

    @classmethod
    def _load_current(cls, directory: Path, backbone: Backbone | None) -> Index:
        current = directory / "CURRENT"
        if not current.is_file() and (directory / MILVUS_MANIFEST).is_file():
            raise BadInput(
                f"{directory} is a collection living in Milvus ({MILVUS_MANIFEST}), and this reads "
                "local indexes only: search, info, update and the app serve it; for the map, "
                "near-duplicates and publishing build a local index of the same folder "
                "(`python -m retrieval index FOLDER --out PATH`, without --backend milvus)"
            )
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
            _set_search_params(ann, cls.settings_of(manifest))
        layout = np.load(version_dir / "map.npy") if (version_dir / "map.npy").is_file() else None
        norms = (
            np.load(version_dir / "norms.npy") if (version_dir / "norms.npy").is_file() else None
        )
        if norms is not None and len(norms) != len(items):  # not ours: as if never recorded
            norms = None
        index = cls(directory, manifest, items, vectors, ann, layout, version, norms)
        if backbone is not None:
            index.check_backbone(backbone)
        return index

    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse to search with a model the vectors did not come from."""
        built_with = f"{self.manifest['model_spec']} (dim {self.dim})"
        if backbone.dim != self.dim:
            raise IndexMismatch(
                f"{self.label} was built with {built_with}, but the model in use "
                f"({backbone.spec}) embeds into {backbone.dim} dimensions; rebuild the index or load its model"
            )
        if not fingerprint_matches(self.manifest.get("model_fingerprint"), backbone, atol=2e-3):
            raise IndexMismatch(
                f"{self.label} was built with {built_with}; the model in use "
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
                    f"{self.label} holds {runtime} embeddings and queries run on "
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

    def raw_vector(
        self, item_id: str, needed_by: str = "a model trained on raw CLIP features"
    ) -> np.ndarray:
        """The item's image feature before normalisation (vector * norm), for `needed_by`.

        Indexes built before the norms were recorded cannot give it: rebuilding is the fix."""
        if self.norms is None:
            raise IndexMismatch(
                f"{needed_by} takes un-normalised CLIP image features, and the index at "
                f"{self.directory} has no image-feature norms (norms.npy: indexes built before "
                f"they were recorded, and `update` of such an index, have none); rebuild it with "
                f"`{self.rebuild_command()}`, or give the reference as an image"
            )
        position = self.position(item_id)
        return np.asarray(self.vectors[position], np.float32) * np.float32(self.norms[position])

    def rebuild_command(self) -> str:
        """The `index` command that builds this collection again, with the norms."""
        parts = ["python", "-m", "retrieval", "index", str(self.source_root())]
        parts += ["--out", str(self.directory), "--model", self.model_spec()]
        if self.manifest.get("preprocessing", "standard") != "standard":
            parts += ["--preprocessing", self.manifest["preprocessing"]]
        if "index_choice" not in self.manifest:  # built before `auto`, or with a fixed type
            parts += ["--index-type", self.manifest.get("index_type", "flat")]
        if self.manifest.get("index_params"):
            parts += ["--index-params", json.dumps(self.manifest["index_params"])]
        runtimes = list(self.runtimes())
        if len(runtimes) == 1 and runtimes[0] != "torch":
            parts += ["--runtime", runtimes[0]]
        if self.metadata_file() is not None:
            parts += ["--metadata", str(self.metadata_file())]
        return shlex.join(parts)

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
    def allowed(self, filters) -> np.ndarray:
        """Positions of the items `filters` keep (a filtered search is exact on them)."""
        kept = [position for position, item in enumerate(self.items) if filters.matches(item)]
        return np.array(kept, dtype=np.int64)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        effort: SearchEffort = SearchEffort(),
    ):
        """Top-k (scores, positions) by inner product; `allowed` restricts to those positions (exact).

        `effort` overrides the ANN's ef_search / nprobe for this call; IVF-PQ candidates are
        re-ranked exactly on the stored vectors (`rerank` of them, 0: off)."""
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
        rerank = self.settings_of(self.manifest).get("rerank", 0)
        params = _faiss_params(self.ann, effort)
        scores, positions = self.ann.search(queries, min(max(k, rerank), len(self)), params=params)
        if rerank:
            return rerank_exact(queries, self.vectors, positions, k)
        return scores, positions

    # -- writing -----------------------------------------------------------------------------
    def update_metadata(self, updates: dict[str, dict]) -> Index:
        """Merge fields into items (e.g. tags) and save as a new version."""
        items = [dict(item) for item in self.items]
        for item_id, fields in updates.items():
            items[self.position(item_id)].update(fields)
        vectors = np.asarray(self.vectors)
        return write_version(
            self.directory, self.manifest, items, vectors, self.layout, self.norms, self.ann
        )

    def redraw_map(self, method: str) -> Index:
        """A new version whose collection map is drawn with `method` (same items and vectors)."""
        manifest = {**self.manifest, "map": {"requested": method}}
        vectors = np.asarray(self.vectors)
        return write_version(
            self.directory, manifest, self.items, vectors, norms=self.norms, same_ann=self.ann
        )


def write_version(
    directory: Path,
    manifest: dict,
    items: list[dict],
    vectors: np.ndarray,
    layout: np.ndarray | None = None,
    norms: np.ndarray | None = None,
    same_ann: faiss.Index | None = None,
) -> Index:
    """Write a complete new version next to the live one, then flip CURRENT atomically.

    Without a `layout` (new vectors), the collection map is drawn with the method the manifest
    asks for (`map.requested`). `norms` (the image features' norms before normalisation, one per
    item) are written when known. `same_ann`: the live version's ANN structure, for a rewrite of
    metadata or map alone (same vectors), so a tag edit neither rebuilds it nor re-measures the
    recall the manifest records."""
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
    choice = manifest.get("index_choice")
    if choice:  # `auto`: the type follows the collection's size, also across updates
        manifest["index_type"] = choose_index_type("auto", len(items), choice["flat_max_items"])
    if same_ann is not None and "recall" in manifest:
        ann = same_ann
    else:
        manifest.pop("tuned_search", None)
        ann = _new_ann(vectors, manifest) if len(items) else None
        manifest["recall"] = tune_search(Index(directory, manifest, items, vectors, ann))
    with _write_lock(directory):
        name = f"v{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        staging = directory / "versions" / f".{name}.tmp"
        staging.mkdir(parents=True)
        np.save(staging / "vectors.npy", vectors)
        np.save(staging / "map.npy", np.asarray(layout, dtype=np.float32))
        if norms is not None:
            if len(norms) != len(items):
                raise ValueError(f"{len(norms)} norms for {len(items)} items")
            np.save(staging / "norms.npy", np.asarray(norms, dtype=np.float32))
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


def _new_ann(vectors: np.ndarray, manifest: dict) -> faiss.Index | None:
    ann = build_faiss(vectors, manifest["index_type"], manifest.get("index_params", {}))
    if ann is not None:
        _set_search_params(ann, Index.settings_of(manifest))
    return ann


def tune_search(index: Index, target: float = RECALL_TARGET) -> dict:
    """Double ef_search / nprobe from where it starts until the index's measured recall reaches
    `target` (or the effort stops growing: every IVF list, MAX_SEARCH_EFFORT); the effort found
    goes into the manifest's `tuned_search` and the ANN structure. Returns the last measurement.
    Effort that index_params fix is measured as it is."""
    knob = EFFORT_KNOB.get(index.manifest.get("index_type", "flat"))
    if index.ann is None or len(index) < 2:
        return measure_recall(index)
    _set_search_params(index.ann, Index.settings_of(index.manifest))  # a read structure may differ
    truth = _recall_truth(index)
    recall = measure_recall(index, truth=truth)
    if knob in index.manifest.get("index_params", {}):
        return recall
    limit = faiss.extract_index_ivf(index.ann).nlist if knob == "nprobe" else MAX_SEARCH_EFFORT
    while recall["value"] < target and recall["search"][knob] < limit:
        index.manifest["tuned_search"] = {knob: min(limit, 2 * recall["search"][knob])}
        _set_search_params(index.ann, Index.settings_of(index.manifest))
        recall = measure_recall(index, truth=truth)
    return recall


def _recall_truth(index: Index, queries: int = RECALL_QUERIES, k: int = RECALL_K):
    """(sampled positions, their exact k+1 neighbours): the ground truth of measure_recall."""
    sample = np.random.default_rng(0).permutation(len(index))[:queries]
    vectors = np.ascontiguousarray(index.vectors[sample], np.float32)
    return sample, exact_search(vectors, index.vectors, min(k, len(index) - 1) + 1)[1]


def measure_recall(index: Index, k: int = RECALL_K, truth: tuple | None = None) -> dict:
    """recall@k of the index's own search for a sample of its items (each query's own item left
    out) against exact search on the vectors, with the search settings used. Flat is exact."""
    settings = Index.settings_of(index.manifest)
    k = min(k, len(index) - 1)
    if index.ann is None or k < 1:
        return {"k": k, "value": 1.0, "queries": 0, "search": settings, "exact": True}
    sample, truth = truth or _recall_truth(index, k=k)
    vectors = np.ascontiguousarray(index.vectors[sample], np.float32)
    _, found = index.search(vectors, k + 1)
    hits = [
        len(_others(t, own, k) & _others(f, own, k))
        for t, f, own in zip(truth, found, sample, strict=True)
    ]
    value = round(float(np.mean(hits)) / k, 4)
    return {"k": k, "value": value, "queries": len(sample), "search": settings, "exact": False}


def _others(positions: np.ndarray, own: int, k: int) -> set[int]:
    return set([int(p) for p in positions if p != own][:k])


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


def _engine(settings: Settings):
    """What embeds the files (`settings.engine`): this process's pipeline, or Ray's model actors
    (imported only when asked for). Both give `embed_files`'s result, so every backend takes it."""
    if settings.engine == "ray":
        from retrieval.ray_engine import embed_files_ray

        return embed_files_ray
    if settings.engine != "inprocess":
        raise BadInput(f"unknown engine {settings.engine!r}; choose one of {ENGINES}")
    return embed_files


def _embed_items(
    items: list[Item], directory: Path, backbone: Backbone, progress: bool, settings: Settings
):
    """Embed items and write their thumbnails; returns (metadata rows, vectors, norms, skipped)."""
    embed = _engine(settings)
    result = embed(backbone, [item.path for item in items], settings, progress=progress)
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
    return rows, result.vectors, result.norms, skipped


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
    index_type: str = "auto",
    metadata: str | Path | None = None,
    index_params: dict | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
    flat_max_items: int = FLAT_MAX_ITEMS,
) -> BuildReport:
    """Embed a whole folder into a fresh index (replacing any index already at `out_dir`).

    `auto` keeps flat up to `flat_max_items` items and switches to HNSW above (see FLAT_MAX_ITEMS)."""
    choose_index_type(index_type, 0)  # refuse an unknown type before embedding anything
    folder, out_dir = Path(folder), Path(out_dir)
    items, skipped = scan_folder(folder, metadata)
    if not items:
        raise BadInput(
            f"no images found in {folder.name!r} ({_some(skipped) or 'an empty folder'})"
        )
    rows, vectors, norms, failed = _embed_items(items, out_dir, backbone, progress, settings)
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
        "index_type": choose_index_type(index_type, len(rows), flat_max_items),
        **_auto_choice(index_type, flat_max_items),
        "index_params": index_params or {},
        "map": {"requested": settings.map_method},
        "source_root": relative_path(folder, out_dir),
        "metadata_file": relative_path(Path(metadata), out_dir) if metadata else None,
        "skipped": _skip_records(skipped + failed),
    }
    index = write_version(out_dir, manifest, rows, vectors, norms=norms)
    return BuildReport(index, added=len(rows), skipped=skipped + failed)


def update_index(
    out_dir: str | Path,
    backbone: Backbone,
    folder: str | Path | None = None,
    metadata: str | Path | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """Embed only new or changed files, drop deleted ones, refresh metadata of the rest.

    The image-feature norms carry over with the kept vectors; an index built before they were
    recorded stays without them (only a full `build_index` embeds everything again)."""
    index = Index.load(out_dir, backbone)
    folder = Path(folder) if folder else index.source_root()
    metadata = metadata or index.metadata_file()
    known_ids = {row["file"]: row["id"] for row in index.items if "file" in row}
    items, skipped = scan_folder(folder, metadata, known_ids)
    old = {row["id"]: position for position, row in enumerate(index.items)}
    keep_rows, keep_vectors, keep_norms, todo = [], [], [], []
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
            keep_norms.append(None if index.norms is None else float(index.norms[position]))
        else:
            todo.append(item)
    new_rows, new_vectors, new_norms, failed = (
        _embed_items(todo, Path(out_dir), backbone, progress, settings)
        if todo
        else ([], None, np.zeros(0, np.float32), [])
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
    norms = (
        None
        if None in keep_norms
        else np.concatenate([np.asarray(keep_norms, np.float32), new_norms])
    )
    new_index = write_version(Path(out_dir), manifest, rows, np.concatenate(parts), norms=norms)
    final, embedded = {row["id"] for row in rows}, {row["id"] for row in new_rows}
    return BuildReport(  # counted on what the new version holds: added + changed + unchanged = len
        new_index,
        added=len(final - old.keys()),
        changed=len(embedded & old.keys()),
        removed=len(old.keys() - final),
        unchanged=len(keep_rows),
        skipped=skipped + failed,
    )


def _auto_choice(index_type: str, flat_max_items: int) -> dict:
    """What `write_version` needs to choose the type again when an update changes the size."""
    if index_type != "auto":
        return {}
    return {"index_choice": {"requested": "auto", "flat_max_items": flat_max_items}}


def _skip_records(skipped: list[tuple[str, str]]) -> list[dict]:
    return [{"file": file, "reason": reason} for file, reason in skipped]


def _some(skipped: list[tuple[str, str]], count: int = 3) -> str:
    """The first few skipped files and why, for an error message."""
    shown = "; ".join(f"{file}: {reason}" for file, reason in skipped[:count])
    return shown + (f"; and {len(skipped) - count} more" if len(skipped) > count else "")
