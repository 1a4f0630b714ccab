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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import BadInput, NotFound

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
