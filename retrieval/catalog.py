"""The catalog of collections the app and API serve, read from a small JSON file.

Each entry names a model, an index location (local folder or hf-hub:org/repo) and optional
composed-search weights. Entries load lazily, once; a failure is remembered as a reason to show
to users, so one broken collection never stops the others.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.backbone import Backbone, load_backbone, pick_device
from retrieval.composed.baselines import weights_licence
from retrieval.composed.combiner import combiner_composer, load_combiner
from retrieval.composed.phi import load_phi, zero_shot_composer
from retrieval.config import DEFAULTS, Settings
from retrieval.errors import NotFound, RetrievalError
from retrieval.hub import fetch
from retrieval.index import Index
from retrieval.runtime import check_runtime
from retrieval.search import Searcher
from retrieval.stores import open_index


@dataclass
class CollectionSpec:
    name: str
    title: str
    index: str
    model: str | None = None  # default: the model recorded in the index
    description: str = ""
    combiner: str | None = None
    phi: str | None = None
    vocabulary: str | None = None
    runtime: str = "torch"  # where queries run on a CPU: torch, onnx or onnx-int8
    examples: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict, base: Path) -> CollectionSpec:
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        for key in ("index", "model", "combiner", "phi"):
            value = known.get(key)
            is_path = (
                key != "model" or (base / str(value)).exists()
            )  # a model may be an open_clip name
            if value and not value.startswith("hf-hub:") and is_path:
                known[key] = str((base / value).resolve())
        return cls(**known)


@dataclass
class Collection:
    """A loaded, searchable collection."""

    spec: CollectionSpec
    index: Index
    backbone: Backbone
    searcher: Searcher

    @property
    def name(self) -> str:
        return self.spec.name

    def method_licences(self) -> dict[str, str]:
        """Composed methods whose weights carry a licence of their own, shown wherever offered."""
        licences = {name: weights_licence(c) for name, c in self.searcher.composers.items()}
        return {name: licence for name, licence in licences.items() if licence}


def composers_for(spec: CollectionSpec) -> dict:
    """Composed-search methods whose weights this collection ships (sum is always there)."""
    composers = {}
    if spec.combiner:
        composers["combiner"] = combiner_composer(load_combiner(str(fetch(spec.combiner, "model"))))
    if spec.phi:
        composers["zero-shot"] = zero_shot_composer(load_phi(str(fetch(spec.phi, "model"))))
    return composers


def serving_runtime(spec: CollectionSpec, settings: Settings) -> str:
    """SR_RUNTIME when set; else the collection's own runtime on a CPU, and PyTorch on a GPU."""
    if settings.runtime:
        return check_runtime(settings.runtime, "SR_RUNTIME")
    own = check_runtime(spec.runtime, f'"runtime" of collection {spec.name!r}')
    return own if pick_device(settings.device).type == "cpu" else "torch"


def open_collection(spec: CollectionSpec, settings: Settings = DEFAULTS) -> Collection:
    index_dir = fetch(spec.index, "dataset")
    index = open_index(index_dir, milvus_uri=settings.milvus_uri)  # a local or Milvus collection
    backbone = load_backbone(
        spec.model or index.model_spec(),
        preprocessing=index.manifest["preprocessing"],
        device=settings.device,
        image_limits=settings.image_limits,
        runtime=serving_runtime(spec, settings),
        cache_dir=settings.cache_dir,
    )
    searcher = Searcher(index, backbone, composers_for(spec), max_k=settings.max_k)
    return Collection(spec, index, backbone, searcher)


class Catalog:
    """Thread-safe lazy loading: the first request for a collection loads it, later ones share it."""

    def __init__(self, specs: list[CollectionSpec], settings: Settings = DEFAULTS):
        self.settings = settings
        self.specs = {spec.name: spec for spec in specs}
        self._loaded: dict[str, Collection] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path | None = None, settings: Settings = DEFAULTS) -> Catalog:
        path = Path(path or settings.collections_file)
        raw = json.loads(path.read_text())
        specs = [CollectionSpec.from_dict(entry, path.parent) for entry in raw["collections"]]
        return cls(specs, settings)

    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> Collection:
        if name not in self.specs:
            raise NotFound(f"no collection {name!r}; available: {', '.join(self.specs)}")
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            if name in self._errors:
                raise CollectionUnavailable(f"{name}: {self._errors[name]}")
            try:
                collection = open_collection(self.specs[name], self.settings)
            except (RetrievalError, OSError, ValueError, RuntimeError) as error:
                self._errors[name] = str(error) or type(error).__name__
                raise CollectionUnavailable(f"{name}: {self._errors[name]}") from error
            self._loaded[name] = collection
            return collection

    def status(self, name: str) -> str | None:
        """None when the collection loads, else the reason it cannot."""
        try:
            self.get(name)
        except RetrievalError as error:
            return str(error)
        return None

    def state(self, name: str) -> str:
        """'loaded', 'not loaded' or the failure reason, without loading anything."""
        if name in self._loaded:
            return "loaded"
        return self._errors.get(name, "not loaded")

    def add(self, collection: Collection) -> None:
        with self._lock:
            self.specs[collection.name] = collection.spec
            self._loaded[collection.name] = collection
            self._errors.pop(collection.name, None)

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.specs:
                raise NotFound(f"no collection {name!r}")
            self.specs.pop(name)
            self._loaded.pop(name, None)
            self._errors.pop(name, None)


class CollectionUnavailable(RetrievalError):
    status_code = 503
