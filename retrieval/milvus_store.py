"""The Milvus backend: a collection whose items, metadata and vectors live in a Milvus collection.

Milvus holds, per item: its id, unit vector, the image feature's norm, the file fingerprint (for
incremental updates), the whole metadata row (JSON), and the fields the search filters read
(lower-cased artist, year, lower-cased title + description, lower-cased tags), so every filter
runs server-side as a Milvus boolean expression. Search is exact (FLAT) by inner product, the
local flat index's ranking.

The index folder stays the collection's handle, as for the local index: the app, the API and the
CLI open collections by folder, and the thumbnails they serve are files there:
    index_dir/milvus.json     manifest: model spec + fingerprint, dim, runtimes, the Milvus
                              collection's name and URI (credentials never written)
    index_dir/thumbs/         thumbnails, as in the local index

A build fills a new physical collection `<name>__<version>` and then points the alias `<name>` at
it, so a crash mid-build leaves the previous collection live (the local index's CURRENT flip).
An update changes the live collection in place: upserts what was embedded or whose metadata
changed, deletes what left the folder, then rewrites the manifest.

pymilvus (and milvus-lite for the embedded default) are imported only here and only when used.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from retrieval import __version__
from retrieval.backbone import Backbone, model_fingerprint, portable_spec, relative_path
from retrieval.collection import scan_folder
from retrieval.config import DEFAULTS, Settings
from retrieval.errors import BadInput, Conflict, IndexMismatch, NotFound, RetrievalError
from retrieval.index import (
    FORMAT_VERSION,
    MILVUS_MANIFEST,
    BuildReport,
    Index,
    SearchEffort,
    _embed_items,
    _file_fingerprint,
    _skip_records,
    _some,
    _write_lock,
    write_atomic,
)
from retrieval.search import Filters, artist_key, item_year, keyword_text, tag_keys

INSTALL_HINT = "pip install -r requirements-scale.txt"
ID_MAX, TEXT_MAX, TAG_MAX, TAGS_MAX = 4096, 65535, 1024, 4096  # Milvus VARCHAR/ARRAY limits
BATCH = 1000  # rows per insert/get: far below Milvus's 64 MiB gRPC message limit at 2048-d
MAX_TOP_K = 16384  # Milvus's limit on one search's results
MODEL_PROPERTY = "smart_retrieval.model"  # the collection's own record of the model it holds
_NAME = re.compile(r"[^A-Za-z0-9_]+")


class MilvusFailure(RetrievalError):
    """Milvus is missing, unreachable, or refused an operation."""

    status_code = 503


def _pymilvus():
    try:
        import pymilvus
    except ImportError as error:
        raise MilvusFailure(
            f"the Milvus backend needs pymilvus and milvus-lite: {INSTALL_HINT}"
        ) from error
    return pymilvus


@contextmanager
def _milvus_errors(doing: str):
    """Milvus's own exceptions become messages a person can act on."""
    pymilvus = _pymilvus()
    try:
        yield
    except pymilvus.exceptions.MilvusException as error:
        raise MilvusFailure(f"{doing}: {getattr(error, 'message', error)}") from error


# -- where the collection lives ------------------------------------------------------------------
def milvus_uri(settings: Settings) -> str:
    """SR_MILVUS_URI, else the embedded Milvus Lite file `<cache_dir>/milvus.db`."""
    return settings.milvus_uri or str(Path(settings.cache_dir) / "milvus.db")


def is_remote(uri: str) -> bool:
    """A server URI (http://host:19530); anything else is a Milvus Lite file."""
    return "://" in uri


def recorded_uri(uri: str, directory: Path) -> str:
    """What the manifest keeps: a Lite file relative to the folder, a server without credentials."""
    if not is_remote(uri):
        return relative_path(Path(uri), directory)
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def resolved_uri(recorded: str, directory: Path) -> str:
    return recorded if is_remote(recorded) else str((Path(directory) / recorded).resolve())


def collection_name(directory: Path) -> str:
    """A Milvus name (letters, digits, underscores; not starting with a digit) from a folder's."""
    name = _NAME.sub("_", Path(directory).resolve().name).strip("_") or "collection"
    return (f"sr_{name}" if name[0].isdigit() else name)[:200]


def check_collection_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name) or "__" in name:
        raise BadInput(
            f"{name!r} is not a usable Milvus collection name: letters, digits and single "
            "underscores, not starting with a digit, at most 200 characters"
        )
    return name


_CLIENTS: dict[str, object] = {}
_CLIENTS_LOCK = threading.Lock()


class _LiteNoise(logging.Filter):
    """Milvus Lite lacks a timestamp call that pymilvus's query iterator tries first; the
    iterator falls back correctly, so the server's traceback and the warning are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        unimplemented = record.exc_info and isinstance(record.exc_info[1], NotImplementedError)
        return not (unimplemented or "mvccTs" in record.getMessage())


def _quiet_lite() -> None:
    for name in ("grpc._server", "pymilvus.orm.iterator"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LiteNoise) for f in logger.filters):
            logger.addFilter(_LiteNoise())


def connect(uri: str):
    """One client per URI and process (Milvus Lite starts its server once per file)."""
    with _CLIENTS_LOCK:
        if uri not in _CLIENTS:
            pymilvus = _pymilvus()
            if not is_remote(uri):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                _quiet_lite()
            try:
                _CLIENTS[uri] = pymilvus.MilvusClient(uri=uri)
            except pymilvus.exceptions.MilvusException as error:
                raise MilvusFailure(
                    f"cannot open Milvus at {uri} ({getattr(error, 'message', error)}); check "
                    f"SR_MILVUS_URI, and for the embedded Milvus Lite: {INSTALL_HINT}"
                ) from error
        return _CLIENTS[uri]


# -- filters as Milvus expressions ---------------------------------------------------------------
def quoted(text: str) -> str:
    """A Milvus string literal: double quotes, with backslash escapes as JSON writes them."""
    return json.dumps(text, ensure_ascii=False)


def like_pattern(word: str) -> str:
    """`%word%` with LIKE's own wildcards in the word matched literally."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", word) + "%"


def milvus_filter(filters: Filters | None) -> str:
    """The Milvus boolean expression that keeps what `Filters.matches` keeps ("" keeps all)."""
    if filters is None:
        return ""
    clauses = []
    if filters.artist:
        clauses.append(f"artist == {quoted(filters.artist.strip().lower())}")
    if filters.date_from is not None:
        clauses.append(f"year >= {int(filters.date_from)}")
    if filters.date_to is not None:
        clauses.append(f"year <= {int(filters.date_to)}")
    for word in (filters.keyword or "").lower().split():
        clauses.append(f"text like {quoted(like_pattern(word))}")
    if filters.tags:
        tags = ", ".join(quoted(tag.lower()) for tag in filters.tags)
        clauses.append(f"array_contains_all(tags, [{tags}])")
    return " and ".join(clauses)


@dataclass(frozen=True)
class MilvusWhere:
    """A filter the Milvus index evaluates itself (what `Index.allowed` returns for it)."""

    expression: str


# -- rows ----------------------------------------------------------------------------------------
def _fits(value: str, limit: int, what: str, item_id: str) -> str:
    if len(value.encode()) > limit:
        raise BadInput(f"item {item_id!r}: its {what} is longer than Milvus keeps ({limit} bytes)")
    return value


def _clipped(text: str, limit: int = TEXT_MAX) -> str:
    """Keyword text past Milvus's VARCHAR limit is cut (on a character boundary)."""
    return text.encode()[:limit].decode(errors="ignore")


def milvus_row(item: dict, vector: np.ndarray, norm: float | None) -> dict:
    """One Milvus row: the metadata as stored, plus the normalised fields the filters read."""
    item_id = _fits(str(item["id"]), ID_MAX, "id", item["id"])
    tags = sorted(tag_keys(item))
    if len(tags) > TAGS_MAX:
        raise BadInput(f"item {item_id!r} has {len(tags)} tags; Milvus keeps at most {TAGS_MAX}")
    return {
        "id": item_id,
        "vector": np.asarray(vector, np.float32).tolist(),
        "norm": None if norm is None else float(norm),
        "fingerprint": str(item.get("fingerprint", "")),
        "artist": _fits(artist_key(item), TEXT_MAX, "artist", item_id),
        "year": item_year(item),
        "text": _clipped(keyword_text(item)),
        "tags": [_fits(tag, TAG_MAX, "tag", item_id) for tag in tags],
        "item": item,
    }


# -- the Milvus side -----------------------------------------------------------------------------
@dataclass
class MilvusStore:
    """One collection in one Milvus: `name` is the alias searches use."""

    client: object
    name: str
    uri: str

    @classmethod
    def at(cls, uri: str, name: str) -> MilvusStore:
        return cls(connect(uri), check_collection_name(name), uri)

    def _errors(self, doing: str):
        return _milvus_errors(f"Milvus at {self.uri}, collection {self.name!r}, {doing}")

    def target(self) -> str | None:
        """The physical collection the alias points at, None when there is none."""
        with self._errors("describing"):
            if not self.client.has_collection(self.name):
                return None
            return self.client.describe_collection(self.name)["collection_name"]

    def dim(self) -> int:
        with self._errors("describing"):
            fields = self.client.describe_collection(self.name)["fields"]
        return int(next(f for f in fields if f["name"] == "vector")["params"]["dim"])

    def create_version(self, model: dict) -> str:
        """A new, empty physical collection for a build (searched only once published), which
        records `model` (spec, fingerprint, dim), so any folder pointing at it can be checked."""
        physical = f"{self.name}__v{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:8]}"
        with self._errors("creating a version"):
            self.client.create_collection(
                physical,
                schema=_schema(self.client, int(model["dim"])),
                index_params=_index_params(self.client),
                consistency_level="Strong",  # an update is seen by the next search
            )
            self.client.alter_collection_properties(
                physical, properties={MODEL_PROPERTY: json.dumps(model)}
            )
        return physical

    def model(self) -> dict | None:
        """The model the live collection records (None: not built by this project)."""
        with self._errors("describing"):
            properties = self.client.describe_collection(self.name).get("properties") or {}
        recorded = properties.get(MODEL_PROPERTY)
        return json.loads(recorded) if recorded else None

    def publish(self, physical: str) -> None:
        """Point the alias at `physical`, then drop the versions it replaces."""
        with self._errors("publishing"):
            names = self.client.list_collections()
            if self.name in names:
                raise Conflict(
                    f"Milvus at {self.uri} has a collection named {self.name!r} that this "
                    "project did not build; choose another --milvus-collection"
                )
            if self.target() is None:
                self.client.create_alias(physical, self.name)
            else:
                self.client.alter_alias(physical, self.name)
            for stale in names:
                if stale.startswith(f"{self.name}__") and stale != physical:
                    self.client.drop_collection(stale)

    def drop(self) -> None:
        physical = self.target()
        with self._errors("dropping"):
            if physical is not None:
                self.client.drop_alias(self.name)
                self.client.drop_collection(physical)

    def write(self, rows: list[dict], into: str | None = None) -> None:
        """Insert or replace rows, in batches."""
        with self._errors("writing"):
            for start in range(0, len(rows), BATCH):
                self.client.upsert(into or self.name, rows[start : start + BATCH])
            self.client.flush(into or self.name)

    def delete(self, ids: list[str]) -> None:
        with self._errors("deleting"):
            for start in range(0, len(ids), BATCH):
                self.client.delete(self.name, ids=ids[start : start + BATCH])

    def rows(self, fields: list[str]):
        """Every row's `fields`, in batches (a query iterator: no offset limit)."""
        with self._errors("reading"):
            self.client.load_collection(self.name)
            iterator = self.client.query_iterator(
                self.name, batch_size=BATCH, filter="", output_fields=fields
            )
            try:
                while batch := iterator.next():
                    yield from batch
            finally:
                iterator.close()

    def vectors(self, ids: list[str]) -> dict[str, list[float]]:
        with self._errors("reading vectors"):
            found = {}
            for start in range(0, len(ids), BATCH):
                rows = self.client.get(
                    self.name, ids=ids[start : start + BATCH], output_fields=["vector"]
                )
                found.update({row["id"]: row["vector"] for row in rows})
        return found

    def search(self, queries: np.ndarray, k: int, expression: str = "") -> list[list]:
        """Exact top-k (id, inner product) per query, filtered server-side by `expression`."""
        with self._errors("searching"):
            results = self.client.search(
                self.name,
                data=np.asarray(queries, np.float32).tolist(),
                limit=min(k, MAX_TOP_K),
                filter=expression,
                anns_field="vector",
                search_params={"metric_type": "IP"},
                output_fields=["id"],
            )
        return [[(hit["id"], float(hit["distance"])) for hit in hits] for hits in results]


def _schema(client, dim: int):
    types = _pymilvus().DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", types.VARCHAR, is_primary=True, max_length=ID_MAX)
    schema.add_field("vector", types.FLOAT_VECTOR, dim=dim)
    schema.add_field("norm", types.FLOAT, nullable=True)  # unknown in indexes built before it
    schema.add_field("fingerprint", types.VARCHAR, max_length=256)
    schema.add_field("artist", types.VARCHAR, max_length=TEXT_MAX)
    schema.add_field("year", types.INT64, nullable=True)
    schema.add_field("text", types.VARCHAR, max_length=TEXT_MAX)
    schema.add_field(
        "tags", types.ARRAY, element_type=types.VARCHAR, max_capacity=TAGS_MAX, max_length=TAG_MAX
    )
    schema.add_field("item", types.JSON)
    return schema


def _index_params(client):
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    return params


# -- the collection as the searcher sees it ------------------------------------------------------
class MilvusVectors:
    """The vectors, read from Milvus on demand: one item's for a query, all of them (once,
    then kept) for what scores the whole collection (the app's score profile)."""

    def __init__(self, store: MilvusStore, ids: list[str], dim: int):
        self.store, self.ids, self.dim = store, ids, dim
        self._all: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ids), self.dim)

    def __getitem__(self, key):
        if self._all is not None:
            return self._all[key]
        if isinstance(key, (int, np.integer)):
            return self._fetch([self.ids[key]])[0]
        wanted = self.ids[key] if isinstance(key, slice) else [self.ids[p] for p in np.ravel(key)]
        return self._fetch(wanted)

    def __array__(self, dtype=None, copy=None):
        with self._lock:
            if self._all is None:
                self._all = self._fetch(self.ids)
        return self._all if dtype is None else self._all.astype(dtype, copy=False)

    def _fetch(self, ids: list[str]) -> np.ndarray:
        found = self.store.vectors(ids)
        missing = [item_id for item_id in ids if item_id not in found]
        if missing:
            raise NotFound(
                f"{len(missing)} items are no longer in Milvus collection {self.store.name!r} "
                f"(e.g. {missing[0]!r}); reload the collection"
            )
        return np.asarray([found[item_id] for item_id in ids], np.float32).reshape(-1, self.dim)


@dataclass
class MilvusIndex(Index):
    """An Index whose vectors and ranking live in Milvus; items are read once when it opens.

    Search, filtered or not, runs in Milvus. Items added to the collection after it opened are
    not shown until it is opened again; deleted ones drop out of results at once."""

    store: MilvusStore | None = None

    @classmethod
    def open(
        cls, directory: str | Path, backbone: Backbone | None = None, milvus_uri: str = ""
    ) -> MilvusIndex:
        directory = Path(directory)
        manifest = read_manifest(directory)
        uri = milvus_uri or resolved_uri(manifest["milvus"]["uri"], directory)
        store = MilvusStore.at(uri, manifest["milvus"]["collection"])
        _check_store(store, manifest, directory)
        rows = sorted(store.rows(["id", "item", "norm"]), key=lambda row: row["id"])
        items = [row["item"] for row in rows]
        vectors = MilvusVectors(store, [row["id"] for row in rows], int(manifest["dim"]))
        norms = [row["norm"] for row in rows]
        norms = None if None in norms else np.asarray(norms, np.float32)
        index = cls(directory, manifest, items, vectors, None, None, store.target(), norms, store)
        if backbone is not None:
            index.check_backbone(backbone)
        return index

    @property
    def label(self) -> str:
        return f"the Milvus collection {self.store.name!r} (index folder {self.directory})"

    def allowed(self, filters: Filters) -> MilvusWhere | None:
        expression = milvus_filter(filters)
        return MilvusWhere(expression) if expression else None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: MilvusWhere | np.ndarray | None = None,
        effort: SearchEffort = SearchEffort(),
    ):
        """Top-k (scores, positions) from Milvus; missing places are (-inf, -1).

        `allowed` is a filter expression, or positions (sent as an id list)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if isinstance(allowed, (np.ndarray, list)):
            allowed = self._positions_filter(np.asarray(allowed, np.int64))
        k = min(k, len(self))
        if k == 0 or (allowed is not None and not allowed.expression):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        found = self.store.search(queries, k, allowed.expression if allowed else "")
        scores = np.full((len(queries), k), -np.inf, np.float32)
        positions = np.full((len(queries), k), -1, np.int64)
        for row, hits in enumerate(found):
            for column, (item_id, score) in enumerate(hits[:k]):
                scores[row, column] = score
                positions[row, column] = self._positions.get(item_id, -1)
        return scores, positions

    def _positions_filter(self, positions: np.ndarray) -> MilvusWhere:
        ids = ", ".join(quoted(self.items[p]["id"]) for p in positions)
        return MilvusWhere(f"id in [{ids}]" if len(positions) else "")

    def update_metadata(self, updates: dict[str, dict]) -> MilvusIndex:
        """Merge fields into items (e.g. tags) in Milvus; the vectors stay."""
        items = [{**self.item(item_id), **fields} for item_id, fields in updates.items()]
        with _write_lock(self.directory):
            self.store.write(_kept_rows(self, items))
        return MilvusIndex.open(self.directory, milvus_uri=self.store.uri)

    def redraw_map(self, method: str) -> Index:
        raise BadInput(f"{self.label} has no collection map: maps are drawn for local indexes")

    def version_dir(self) -> Path:
        """Where local files of a version live (duplicate signatures, a published card): none."""
        raise BadInput(
            f"{self.label} keeps no local version: near-duplicate groups and publishing need a "
            "local index of the same folder (`python -m retrieval index FOLDER --out PATH`)"
        )


def read_manifest(directory: Path) -> dict:
    manifest = json.loads((Path(directory) / MILVUS_MANIFEST).read_text())
    if manifest.get("format") != FORMAT_VERSION or manifest.get("backend") != "milvus":
        raise IndexMismatch(
            f"{directory / MILVUS_MANIFEST} is not a Milvus collection manifest of format "
            f"{FORMAT_VERSION}"
        )
    return manifest


def _check_store(store: MilvusStore, manifest: dict, directory: Path) -> None:
    """The folder's manifest and the Milvus collection must describe the same vectors."""
    if store.target() is None:
        raise NotFound(
            f"the index folder {directory} points at Milvus collection {store.name!r}, which "
            f"Milvus at {store.uri} does not hold; build it with `python -m retrieval index "
            f"FOLDER --out {directory} --backend milvus` (or set SR_MILVUS_URI to where it is)"
        )
    if store.dim() != int(manifest["dim"]):
        raise IndexMismatch(
            f"Milvus collection {store.name!r} holds {store.dim()}-d vectors, but the index "
            f"folder {directory} says it was built with {manifest['model_spec']} "
            f"(dim {manifest['dim']}); rebuild it"
        )
    model = store.model()
    if model is not None and model["model_fingerprint"] != manifest["model_fingerprint"]:
        raise IndexMismatch(
            f"Milvus collection {store.name!r} holds vectors of {model['model_spec']}, but the "
            f"index folder {directory} says it was built with {manifest['model_spec']} (other "
            "weights): another build replaced it; rebuild it or use another --milvus-collection"
        )


# -- building and updating -----------------------------------------------------------------------
def build_milvus_index(
    folder: str | Path,
    out_dir: str | Path,
    backbone: Backbone,
    uri: str,
    collection: str | None = None,
    metadata: str | Path | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """Embed a whole folder into a new version of a Milvus collection, then make it the live one.

    `collection` names it in Milvus (default: from the folder name of `out_dir`)."""
    folder, out_dir = Path(folder), Path(out_dir)
    name = check_collection_name(collection or collection_name(out_dir))
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
        "backend": "milvus",
        "milvus": {"collection": name, "uri": recorded_uri(uri, out_dir)},
        "retrieval_version": __version__,
        "model_spec": portable_spec(backbone.spec, out_dir),
        "model_fingerprint": model_fingerprint(backbone),
        "dim": backbone.dim,
        "preprocessing": backbone.preprocessing,
        "runtimes": {backbone.runtime: backbone.runtime_agreement},
        "normalized": True,
        "index_type": "flat",
        "metric": "IP",
        "index_params": {},
        "source_root": relative_path(folder, out_dir),
        "metadata_file": relative_path(Path(metadata), out_dir) if metadata else None,
        "skipped": _skip_records(skipped + failed),
    }
    index = write_collection(out_dir, manifest, rows, vectors, norms, uri)
    return BuildReport(index, added=len(rows), skipped=skipped + failed)


def copy_to_milvus(index: Index, out_dir: str | Path, uri: str, collection: str | None = None):
    """A Milvus-backed copy of a local index (same items, vectors, norms and thumbnails), with
    nothing embedded again: how a built collection moves to Milvus."""
    out_dir = Path(out_dir)
    name = check_collection_name(collection or collection_name(out_dir))
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    for item in index.items:
        write_atomic(thumbs / item["thumb"], index.thumb_path(item["id"]).read_bytes())
    manifest = {
        **{key: value for key, value in index.manifest.items() if key not in ("map", "recall")},
        "backend": "milvus",
        "milvus": {"collection": name, "uri": recorded_uri(uri, out_dir)},
        "model_spec": portable_spec(index.model_spec(), out_dir),
        "index_type": "flat",
        "metric": "IP",
        "index_params": {},
        "source_root": relative_path(index.source_root(), out_dir),
        "metadata_file": _moved(index.metadata_file(), out_dir),
    }
    manifest.pop("index_choice", None)
    vectors = np.asarray(index.vectors, np.float32)
    norms = [None] * len(index) if index.norms is None else index.norms
    return write_collection(out_dir, manifest, index.items, vectors, norms, uri)


def _moved(path: Path | None, out_dir: Path) -> str | None:
    return relative_path(path, out_dir) if path else None


def write_collection(
    out_dir: Path, manifest: dict, items: list[dict], vectors, norms, uri: str
) -> MilvusIndex:
    """Fill a new version, publish it, then write the folder's manifest (under the write lock)."""
    store = MilvusStore.at(uri, manifest["milvus"]["collection"])
    rows = [milvus_row(*row) for row in zip(items, vectors, norms, strict=True)]
    with _write_lock(out_dir):
        model = {key: manifest[key] for key in ("model_spec", "model_fingerprint", "dim")}
        physical = store.create_version(model)
        try:
            store.write(rows, into=physical)
            store.publish(physical)
        except BaseException:
            with _milvus_errors("cleaning up"):
                store.client.drop_collection(physical)
            raise
        _write_manifest(out_dir, {**manifest, "count": len(rows)})
    return MilvusIndex.open(out_dir, milvus_uri=uri)


def _write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(directory / MILVUS_MANIFEST, json.dumps(manifest, indent=2).encode())


def update_milvus_index(
    out_dir: str | Path,
    backbone: Backbone,
    folder: str | Path | None = None,
    metadata: str | Path | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """Embed only new or changed files, delete the ones that left, refresh changed metadata:
    `update_index` for a Milvus collection (SR_MILVUS_URI, when set, says which Milvus)."""
    out_dir = Path(out_dir)
    index = MilvusIndex.open(out_dir, backbone, settings.milvus_uri)
    folder = Path(folder) if folder else index.source_root()
    metadata = metadata or index.metadata_file()
    known_ids = {row["file"]: row["id"] for row in index.items if "file" in row}
    items, skipped = scan_folder(folder, metadata, known_ids)
    kept, refreshed, todo = _sorted_out(index, items)
    new_rows, new_vectors, new_norms, failed = (
        _embed_items(todo, out_dir, backbone, progress, settings) if todo else ([], [], [], [])
    )
    final = {row["id"] for row in kept + new_rows}
    if not final:
        raise BadInput(f"no readable images left in {folder}")
    old = {item["id"] for item in index.items}
    removed = sorted(old - final)
    changes = [milvus_row(*row) for row in zip(new_rows, new_vectors, new_norms, strict=True)]
    changes += _kept_rows(index, refreshed)
    runtimes = index.runtimes() | ({backbone.runtime: backbone.runtime_agreement} if todo else {})
    manifest = {
        **index.manifest,
        "runtimes": runtimes,
        "source_root": relative_path(folder, out_dir),
        "skipped": _skip_records(skipped + failed),
        "count": len(final),
    }
    with _write_lock(out_dir):
        index.store.write(changes)
        index.store.delete(removed)
        _write_manifest(out_dir, manifest)
    embedded = {row["id"] for row in new_rows}
    return BuildReport(
        MilvusIndex.open(out_dir, milvus_uri=index.store.uri),
        added=len(final - old),
        changed=len(embedded & old),
        removed=len(removed),
        unchanged=len(kept),
        skipped=skipped + failed,
    )


def _sorted_out(index: MilvusIndex, items) -> tuple[list[dict], list[dict], list]:
    """(rows kept as they are, kept rows whose metadata changed, items to embed)."""
    kept, refreshed, todo = [], [], []
    for item in items:
        old = index.item(item.id) if item.id in index else None
        if old is None or old.get("fingerprint") != _file_fingerprint(item.path):
            todo.append(item)
            continue
        row = {**item.meta, "fingerprint": old["fingerprint"], "thumb": old["thumb"]}
        row |= {"tags": old["tags"]} if "tags" in old else {}
        kept.append(row)
        if row != old:
            refreshed.append(row)
    return kept, refreshed, todo


def _kept_rows(index: MilvusIndex, items: list[dict]) -> list[dict]:
    """Rows for items whose vectors stay: the vectors read back from Milvus in one pass."""
    if not items:
        return []
    positions = np.asarray([index.position(item["id"]) for item in items])
    norms = [None] * len(items) if index.norms is None else index.norms[positions]
    vectors = index.vectors[positions]
    return [milvus_row(*row) for row in zip(items, vectors, norms, strict=True)]


def drop_milvus_index(directory: str | Path, milvus_uri: str = "") -> None:
    """Delete the collection from Milvus and the folder's manifest (thumbnails stay): a Milvus
    collection outlives its folder, so deleting it is a step of its own."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    uri = milvus_uri or resolved_uri(manifest["milvus"]["uri"], directory)
    with _write_lock(directory):
        MilvusStore.at(uri, manifest["milvus"]["collection"]).drop()
        (directory / MILVUS_MANIFEST).unlink()
