"""Composed-retrieval benchmarks on disk: CIRR, FashionIQ and CIRCO readers, plus cached image features.

Every reader returns a `ComposedSplit`: the queries (reference image, modification captions,
ground truths) and the images they need (name -> path), with the gallery the protocol ranks.

    CIRR       ROOT/captions/cap.rc2.{train,val,test1}.json, ROOT/image_splits/split.rc2.{split}.json
               (image name -> "./dev/dev-244-0-img0.png", relative to ROOT). The Shapes world uses the
               same layout with a labelled "test" split.
    FashionIQ  ROOT/captions/cap.{dress,shirt,toptee}.{train,val,test}.json,
               ROOT/image_splits/split.{category}.{split}.json, ROOT/images/<id>.jpg (or .png)
    CIRCO      ROOT/annotations/{val,test}.json, images from COCO 2017 unlabeled:
               ROOT/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json and
               ROOT/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg

Image features are cached on disk under a key made of the model spec, a hash of its weights and
the preprocessing; an image is re-embedded only when that key or the file (size, mtime) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from retrieval.config import DEFAULTS, Settings
from retrieval.errors import BadInput, NotFound
from retrieval.images import open_image

DATASETS = ("cirr", "fashioniq", "circo")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_EXTENSIONS = (".jpg", ".png", ".jpeg")
CIRR_SPLIT_ALIASES = {"dev": "val", "test": "test1"}
COCO_UNLABELED = "COCO2017_unlabeled"


@dataclass
class Query:
    """One composed query: reference image + modification text -> ground-truth images."""

    id: str
    reference: str
    captions: list[str]
    targets: list[str] = field(
        default_factory=list
    )  # [] on test splits; targets[0] = the main target
    members: list[str] = field(default_factory=list)  # CIRR img_set members (the subset metric)
    extra: dict = field(default_factory=dict)


@dataclass
class ComposedSplit:
    """One split of a benchmark: queries, the images they touch, and the gallery they rank."""

    dataset: str  # cirr | fashioniq | circo
    split: str
    queries: list[Query]
    images: dict[str, Path]  # every image a query or the gallery uses
    gallery: list[str]  # names ranked by the protocol
    exclude_reference: bool  # CIRR/CIRCO drop the reference from the ranking; FashionIQ does not
    category: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.queries) and all(query.targets for query in self.queries)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.category + '/' if self.category else ''}{self.split}"

    def query_text(self, query: Query) -> str:
        """The text used at evaluation: FashionIQ joins its two captions as "c1 and c2"."""
        if self.dataset == "fashioniq":
            return fashioniq_caption(query.captions, "both")
        return query.captions[0]

    def training_texts(self, query: Query) -> list[str]:
        """Caption variants training draws from (FashionIQ: "c1 and c2", "c2 and c1", "c1", "c2")."""
        if self.dataset == "fashioniq":
            return [
                fashioniq_caption(query.captions, mode)
                for mode in ("both", "reversed", "first", "second")
            ]
        return [query.captions[0]]


def fashioniq_caption(captions: list[str], mode: str = "both") -> str:
    """CLIP4Cir's FashionIQ text: captions stripped of end punctuation, the sentence capitalised."""
    first, second = (c.strip().strip(".?, ") for c in (list(captions) + ["", ""])[:2])
    parts = {
        "both": [first, second],
        "reversed": [second, first],
        "first": [first],
        "second": [second],
    }[mode]
    parts = [part for part in parts if part] or [first or second]
    text = " and ".join(parts)
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- readers


def _read_json(path: Path):
    if not path.is_file():
        raise NotFound(f"{path} is missing: is --root the dataset folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadInput(f"{path} is not valid JSON: {error}") from error


def _check_known(split: ComposedSplit) -> ComposedSplit:
    """Fail early, with names, when a query points at an image the split does not list."""
    missing = sorted(
        {
            name
            for query in split.queries
            for name in [query.reference, *query.targets]
            if name not in split.images
        }
    )
    if missing:
        raise BadInput(
            f"{split.name}: {len(missing)} images used by queries are not in the image list "
            f"(e.g. {missing[:3]}); check the dataset files"
        )
    return split


def cirr_split_name(root: Path, split: str) -> str:
    """The split as named on disk: "val"/"dev" and "test"/"test1" both work (Shapes has "test")."""
    for name in (split, CIRR_SPLIT_ALIASES.get(split, split), "val" if split == "dev" else split):
        if (root / "captions" / f"cap.rc2.{name}.json").is_file():
            return name
    available = sorted(p.name.split(".")[2] for p in (root / "captions").glob("cap.rc2.*.json"))
    raise NotFound(f"no CIRR split {split!r} under {root}/captions (found: {available or 'none'})")


def read_cirr(root: str | Path, split: str = "val") -> ComposedSplit:
    """CIRR (or any dataset in its layout): the gallery is the whole split, reference excluded."""
    root = Path(root)
    split = cirr_split_name(root, split)
    rows = _read_json(root / "captions" / f"cap.rc2.{split}.json")
    relpaths = _read_json(root / "image_splits" / f"split.rc2.{split}.json")
    images = {name: (root / rel).resolve() for name, rel in relpaths.items()}
    queries = []
    for row in rows:
        target = row.get("target_hard")
        queries.append(
            Query(
                id=str(row["pairid"]),
                reference=row["reference"],
                captions=[row["caption"]],
                targets=[target] if target else [],
                members=list(row.get("img_set", {}).get("members", [])),
                extra={key: row[key] for key in ("target_soft", "edit") if key in row},
            )
        )
    return _check_known(ComposedSplit("cirr", split, queries, images, list(images), True))


def _fashioniq_path(folder: Path, name: str, extensions: list[str]) -> Path:
    """The image file of an id; the extension that matched last is tried first."""
    for extension in extensions:
        path = folder / f"{name}{extension}"
        if path.is_file():
            if extension != extensions[0]:
                extensions.remove(extension)
                extensions.insert(0, extension)
            return path
    return folder / f"{name}{extensions[0]}"  # reported as unreadable when embedded


def read_fashioniq(root: str | Path, category: str, split: str = "val") -> ComposedSplit:
    """FashionIQ, one category: the gallery is the split's image list (the reference stays in it)."""
    if category not in FASHIONIQ_CATEGORIES:
        raise BadInput(
            f"unknown FashionIQ category {category!r}; choose from {FASHIONIQ_CATEGORIES}"
        )
    root = Path(root)
    rows = _read_json(root / "captions" / f"cap.{category}.{split}.json")
    gallery = [
        str(name) for name in _read_json(root / "image_splits" / f"split.{category}.{split}.json")
    ]
    extensions = list(FASHIONIQ_EXTENSIONS)
    folder = root / "images"
    names = list(
        dict.fromkeys(
            gallery + [r["candidate"] for r in rows] + [r["target"] for r in rows if "target" in r]
        )
    )
    images = {name: _fashioniq_path(folder, name, extensions) for name in names}
    queries = [
        Query(
            id=f"{category}-{number}",
            reference=row["candidate"],
            captions=list(row["captions"]),
            targets=[row["target"]] if row.get("target") else [],
        )
        for number, row in enumerate(rows)
    ]
    return _check_known(
        ComposedSplit("fashioniq", split, queries, images, gallery, False, category)
    )


def coco_unlabeled_images(root: Path) -> dict[str, Path]:
    """COCO 2017 unlabeled image id -> file, from its image_info file or else the folder listing."""
    base = root / COCO_UNLABELED
    folder = base / "unlabeled2017"
    info = base / "annotations" / "image_info_unlabeled2017.json"
    if info.is_file():
        entries = _read_json(info)["images"]
        return {str(entry["id"]): folder / entry["file_name"] for entry in entries}
    if not folder.is_dir():
        raise NotFound(f"{folder} is missing: CIRCO needs the COCO 2017 unlabeled images there")
    files = sorted(folder.glob("*.jpg"))
    return {str(int(path.stem)): path for path in files if path.stem.isdigit()}


def read_circo(root: str | Path, split: str = "val") -> ComposedSplit:
    """CIRCO: the gallery is all of COCO 2017 unlabeled; several ground truths per query."""
    root = Path(root)
    rows = _read_json(root / "annotations" / f"{split}.json")
    images = coco_unlabeled_images(root)
    queries = []
    for row in rows:
        targets = [str(i) for i in row.get("gt_img_ids") or []]
        main = row.get("target_img_id")
        if main is not None and str(main) not in targets:
            targets.insert(0, str(main))
        queries.append(
            Query(
                id=str(row["id"]),
                reference=str(row["reference_img_id"]),
                captions=[row["relative_caption"]],
                targets=targets,
                extra={
                    key: row[key] for key in ("shared_concept", "semantic_aspects") if key in row
                },
            )
        )
    return _check_known(ComposedSplit("circo", split, queries, images, list(images), True))


def load_splits(
    dataset: str, root: str | Path, split: str, categories=FASHIONIQ_CATEGORIES
) -> list[ComposedSplit]:
    """The split(s) a protocol evaluates: one for CIRR/CIRCO/Shapes, one per FashionIQ category."""
    if dataset in ("cirr", "shapes"):
        return [read_cirr(root, split)]
    if dataset == "fashioniq":
        return [read_fashioniq(root, category, split) for category in categories]
    if dataset == "circo":
        return [read_circo(root, split)]
    raise BadInput(f"unknown dataset {dataset!r}; choose from {DATASETS + ('shapes',)}")


# --------------------------------------------------------------------------- cached image features


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor of the model: two checkpoints with one spec never share a cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def feature_cache_key(backbone) -> dict:
    return {
        "model_spec": str(backbone.spec),
        "weights": weights_digest(backbone.model),
        "preprocessing": backbone.preprocessing,
        "image_size": backbone.image_size,
    }


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class _Pixels(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        try:
            return position, self.transform(open_image(self.paths[position])), ""
        except (BadInput, OSError) as error:
            return position, None, str(error)


def _collate(samples):
    good = [s for s in samples if s[1] is not None]
    pixels = torch.stack([s[1] for s in good]) if good else None
    return [s[0] for s in good], pixels, [(s[0], s[2]) for s in samples if s[1] is None]


def embed_image_paths(
    backbone,
    paths: list[Path],
    batch_size: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> torch.Tensor:
    """(n, d) normalised float32 features on CPU; any unreadable file is an error (metrics would lie)."""
    batch_size = batch_size or settings.batch_size
    workers = settings.num_workers if num_workers is None else num_workers
    workers = min(workers, os.cpu_count() or 1, len(paths) // batch_size)
    loader = DataLoader(
        _Pixels(list(paths), backbone.transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda",
    )
    features = torch.zeros(len(paths), backbone.dim)
    failed = []
    for positions, pixels, bad in tqdm(
        loader, desc="embed images", disable=not progress, leave=False
    ):
        failed += bad
        if pixels is not None:
            features[positions] = backbone.encode_image_tensors(pixels).float().cpu()
    if failed:
        examples = "; ".join(f"{paths[p]}: {reason}" for p, reason in failed[:3])
        raise BadInput(f"{len(failed)} images could not be read ({examples})")
    return features


class FeatureCache:
    """Image features of one (model, weights, preprocessing) on disk, grown as new images are asked for."""

    def __init__(self, backbone, cache_dir: str | Path | None = None):
        self.backbone = backbone
        self.key = feature_cache_key(backbone)
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
                self.backbone, [by_key[key] for key in missing], batch_size, progress=progress
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
) -> torch.Tensor:
    """Features of image files, through the on-disk cache unless `cache` is False (training models)."""
    if cache is False:
        return embed_image_paths(backbone, list(paths), batch_size, progress=progress)
    cache_dir = None if cache is True else cache
    return FeatureCache(backbone, cache_dir).features(list(paths), progress, batch_size)


def split_features(
    split: ComposedSplit, backbone, cache: bool | str | Path = True, progress: bool = True
) -> tuple[list[str], torch.Tensor]:
    """(names, features) of every image of a split, in `split.images` order."""
    names = list(split.images)
    return names, image_features(backbone, [split.images[n] for n in names], cache, progress)


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
