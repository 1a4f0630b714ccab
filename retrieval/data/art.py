"""Artwork datasets: the NoisyArt reader and any museum laid out as class folders.

* NoisyArt (`read_noisyart`): ROOT/metadata.json (artworks with `uri`, `title`, `description`,
  `_authors` [{name}], ...), image folders ROOT/{trainval_3120,trainval_200,test_200}/ made of class
  folders `0001_http:^^dbpedia.org^resource^<Title>` (the artwork URI with '/' written '^', after a
  4-digit number and '_'), and ROOT/splits/trainval_3120/{train,val,trainval,boot}.txt.
  Split-file lines are image paths relative to trainval_3120/, `<class folder>/<file>` (e.g.
  `0001_http:^^dbpedia.org^resource^Mona_Lisa/google_000003.jpg`), one per line. Matching is
  tolerant: blank lines, CRLF, backslashes, a leading `./` or `trainval_3120/`, a trailing integer
  label and a different image extension (the r255 PNG release) are all accepted. Classes are
  matched by URI, never by folder number, so test and train folders may be numbered differently.
* Class folders (`read_class_folders`): ROOT/[SPLIT/]<class>/<images>, plus an optional metadata
  CSV/JSONL (ROOT/classes.csv by default) with columns class (folder name; `folder` or `id` also
  accepted), title, description, artist. Any museum can lay its photos out this way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from retrieval.collection import read_metadata
from retrieval.errors import BadInput, NotFound
from retrieval.images import is_image_file

FOLDER_SPLITS = ("test_200", "trainval_200", "trainval_3120")


LIST_SPLITS = ("train", "val", "trainval", "boot", "train_wo_boot", "all")


LIST_SPLIT_DIR = Path("splits") / "trainval_3120"


CLASS_FOLDER = re.compile(r"^(\d+)_(.+)$")


CLASS_METADATA_NAMES = ("classes.csv", "classes.jsonl", "metadata.csv", "metadata.jsonl")


TEXT_KINDS = ("title", "description")


DEFAULT_TITLE_TEMPLATE = "{title}, by {artist}"


@dataclass
class ArtClass:
    """One artwork (a class): the key that identifies it across splits and what is known about it."""

    key: str
    title: str
    description: str = ""
    artist: str = ""
    folder: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class ArtDataset:
    """The images of one split, labelled by index into `classes` (every known class, even imageless)."""

    name: str
    split: str
    classes: list[ArtClass]
    paths: list[Path]
    labels: list[int]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def present_classes(self) -> list[int]:
        """Indices of the classes that have at least one image in this split."""
        return sorted(set(self.labels))

    def subset(self, positions) -> ArtDataset:
        positions = list(positions)
        return ArtDataset(
            self.name,
            self.split,
            self.classes,
            [self.paths[i] for i in positions],
            [self.labels[i] for i in positions],
            list(self.notes),
        )

    def key_of(self, position: int) -> str:
        return self.classes[self.labels[position]].key


def folder_to_uri(folder: str) -> str:
    """NoisyArt class folder -> artwork URI: drop the 'NNNN_' number, '^' back to '/'."""
    match = CLASS_FOLDER.match(folder)
    return (match.group(2) if match else folder).replace("^", "/")


def uri_to_title(uri: str) -> str:
    """Fallback title from a DBpedia resource URI ('.../The_Starry_Night' -> 'The Starry Night')."""
    return unquote(uri.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ").strip() or uri


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _class_dirs(base: Path) -> list[Path]:
    if not base.is_dir():
        raise NotFound(f"image folder {base} not found")
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _authors(entry: dict) -> str:
    authors = entry.get("_authors") or entry.get("authors") or []
    if isinstance(authors, dict):
        authors = [authors]
    names = [
        str(a.get("name", "")).strip() if isinstance(a, dict) else str(a).strip() for a in authors
    ]
    return ", ".join(name for name in names if name)


def read_noisyart_metadata(path: str | Path) -> dict[str, dict]:
    """metadata.json -> {uri: entry}. Accepts a list of entries with `uri` or a dict keyed by uri."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"NoisyArt metadata {path} not found (expected ROOT/metadata.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path.name} is not valid JSON: {error}") from error
    if isinstance(data, dict):
        entries = [
            {**entry, "uri": entry.get("uri", uri)}
            for uri, entry in data.items()
            if isinstance(entry, dict)
        ]
    elif isinstance(data, list):
        entries = [entry for entry in data if isinstance(entry, dict) and entry.get("uri")]
    else:
        raise BadInput(f"{path.name} must hold a list of artworks or an object keyed by uri")
    return {str(entry["uri"]): entry for entry in entries}


def noisyart_class(uri: str, entry: dict | None, folder: str = "") -> ArtClass:
    entry = entry or {}
    title = str(entry.get("title") or "").strip() or uri_to_title(uri)
    description = str(entry.get("description") or entry.get("comment") or "").strip()
    return ArtClass(uri, title, description, _authors(entry), folder, entry)


def _noisyart_image_root(root: Path) -> Path:
    """The folder holding trainval_3120/ etc.: ROOT itself, or ROOT/imgs (an older layout)."""
    if any((root / name).is_dir() for name in FOLDER_SPLITS) or not (root / "imgs").is_dir():
        return root
    return root / "imgs"


def parse_split_line(line: str) -> tuple[str, str] | None:
    """'<class folder>/<file>' -> (class folder, file stem); None for blank or malformed lines."""
    text = line.strip().replace("\\", "/")
    parts = text.rsplit(None, 1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        text = parts[0]  # "path label" lists
    text = text.removeprefix("./").removeprefix("trainval_3120/")
    if "/" not in text:
        return None
    folder, name = text.rsplit("/", 1)
    folder = folder.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return (folder, stem) if folder and stem else None


def read_split_file(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"split file {path} not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [entry for entry in map(parse_split_line, lines) if entry is not None]


def _labelled(folders: list[Path], class_of_folder) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for folder in folders:
        files = _image_files(folder)
        paths += files
        labels += [class_of_folder(folder.name)] * len(files)
    return paths, labels


def read_noisyart(root: str | Path, split: str = "test_200") -> ArtDataset:
    """One NoisyArt split: a folder split (test_200, trainval_200, trainval_3120) or a list split
    (train, val, trainval, boot) from splits/trainval_3120/<split>.txt over trainval_3120/."""
    root = Path(root)
    if split not in FOLDER_SPLITS + LIST_SPLITS:
        raise BadInput(
            f"unknown NoisyArt split {split!r}; choose from {FOLDER_SPLITS + LIST_SPLITS}"
        )
    metadata = read_noisyart_metadata(root / "metadata.json")
    classes = [noisyart_class(uri, entry) for uri, entry in metadata.items()]
    index = {cls.key: position for position, cls in enumerate(classes)}

    def class_of_folder(folder: str) -> int:
        uri = folder_to_uri(folder)
        if uri not in index:
            index[uri] = len(classes)
            classes.append(noisyart_class(uri, None, folder))
        classes[index[uri]].folder = classes[index[uri]].folder or folder
        return index[uri]

    images = _noisyart_image_root(root)
    folder_split = split if split in FOLDER_SPLITS else "trainval_3120"
    paths, labels = _labelled(_class_dirs(images / folder_split), class_of_folder)
    dataset = ArtDataset("noisyart", split, classes, paths, labels)
    if split in LIST_SPLITS:
        dataset = _apply_split_list(
            dataset, root / LIST_SPLIT_DIR / f"{split}.txt", images / folder_split
        )
    if not dataset.paths:
        raise BadInput(f"NoisyArt split {split!r} under {root} has no images")
    return dataset


def _apply_split_list(dataset: ArtDataset, list_path: Path, base: Path) -> ArtDataset:
    """Keep the images a split file lists, matched on (class folder, file stem): extensions may differ."""
    wanted = read_split_file(list_path)
    position_of = {}
    for position, path in enumerate(dataset.paths):
        relative = path.relative_to(base)
        position_of.setdefault((relative.parts[0], path.stem), position)
    found = [position_of[entry] for entry in dict.fromkeys(wanted) if entry in position_of]
    subset = dataset.subset(found)
    missing = len(set(wanted)) - len(found)
    if missing:
        subset.notes.append(
            f"{missing} of {len(set(wanted))} files listed in {list_path.name} are not on disk"
        )
    return subset


def _class_rows(root: Path, metadata: str | Path | None) -> list[dict]:
    if metadata:
        return read_metadata(metadata)
    found = next((root / name for name in CLASS_METADATA_NAMES if (root / name).is_file()), None)
    return read_metadata(found) if found else []


def class_from_row(key: str, row: dict) -> ArtClass:
    title = str(row.get("title") or "").strip() or key.replace("_", " ")
    artist = str(row.get("artist") or row.get("author") or "").strip()
    return ArtClass(key, title, str(row.get("description") or "").strip(), artist, key, dict(row))


def read_class_folders(
    root: str | Path, split: str | None = None, metadata: str | Path | None = None
) -> ArtDataset:
    """ROOT/[SPLIT/]<class>/<images> with class texts from a CSV/JSONL keyed by folder name."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"collection folder {root} not found")
    rows = _class_rows(root, metadata)
    classes, index = [], {}
    for row in rows:
        key = str(row.get("class") or row.get("folder") or row.get("id") or "").strip()
        if key and key not in index:
            index[key] = len(classes)
            classes.append(class_from_row(key, row))

    def class_of_folder(folder: str) -> int:
        if folder not in index:
            index[folder] = len(classes)
            classes.append(class_from_row(folder, {}))
        return index[folder]

    base = root / split if split else root
    paths, labels = _labelled(_class_dirs(base), class_of_folder)
    if not paths:
        raise BadInput(f"no images in class folders under {base}")
    return ArtDataset("classfolders", split or ".", classes, paths, labels)


def title_prompt(cls: ArtClass, template: str = DEFAULT_TITLE_TEMPLATE) -> str:
    """The class name as a prompt; the ', by {artist}' part is dropped when the artist is unknown."""
    if not cls.artist and "{artist}" in template:
        template = re.sub(r"[,;:\s]*(by\s+)?\{artist\}", "", template)
    return template.format(title=cls.title, artist=cls.artist).strip() or cls.title


def class_text(cls: ArtClass, kind: str, template: str = DEFAULT_TITLE_TEMPLATE) -> str:
    """`title` prompt or `description` (falling back to the title when there is none)."""
    if kind == "description" and cls.description:
        return cls.description
    return title_prompt(cls, template)
