"""Collections: a folder of images plus optional metadata (CSV or JSONL), read into `Item`s.

Metadata columns: id, file, title, artist, date, description, url, license; any other column is kept.
Rows are matched to images by `file` (path relative to the folder) or, failing that, by `id`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import BadInput, NotFound
from retrieval.images import is_image_file

KNOWN_FIELDS = ("id", "file", "title", "artist", "date", "description", "url", "license")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Item:
    """One image of a collection: a stable id, where the file is, and what is known about it."""

    id: str
    path: Path
    meta: dict = field(default_factory=dict)


def safe_id(text: str) -> str:
    """Ids travel in URLs and file names: keep them to a safe alphabet."""
    cleaned = _SAFE_ID.sub("_", text).strip("._")
    return cleaned or hashlib.sha1(text.encode()).hexdigest()[:12]


def read_metadata(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"metadata file {path} not found")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            rows = [
                json.loads(line)
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            if not all(isinstance(row, dict) for row in rows):
                raise BadInput(f"{path.name}: every JSONL line must be an object")
            return rows
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise BadInput(f"metadata file {path.name} could not be parsed: {error}") from error
    raise BadInput(f"metadata must be .csv or .jsonl, not {path.suffix!r}")


def _find_metadata(root: Path) -> Path | None:
    return next((root / name for name in METADATA_NAMES if (root / name).is_file()), None)


def scan_folder(
    root: str | Path, metadata: str | Path | None = None, known_ids: dict[str, str] | None = None
) -> tuple[list[Item], list[tuple[str, str]]]:
    """All images below `root` (recursive), joined with metadata rows. Returns (items, skipped):
    `skipped` names every image left out and every metadata row that matches no image, with why.

    An item's id is its path without the extension ("room1/vase"); files that share that stem
    ("vase.jpg", "vase.webp") keep their extension ("room1/vase.jpg"), so none is dropped.
    `known_ids` (file -> id, from the index being updated) keeps ids stable across updates.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"collection folder {root} not found")
    metadata = Path(metadata) if metadata else _find_metadata(root)
    rows = read_metadata(metadata) if metadata else []
    by_file = {_clean_file(row["file"]): row for row in rows if row.get("file")}
    by_id = {str(row["id"]): row for row in rows if row.get("id")}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    relatives = [path.relative_to(root).as_posix() for path in paths]
    stems = Counter(_stem(relative) for relative in relatives)
    items, owners, matched, skipped = [], {}, set(), []
    for path, relative in zip(paths, relatives, strict=True):
        shared = stems[_stem(relative)] > 1
        row = by_file.get(relative) or (None if shared else by_id.get(path.stem)) or {}
        default = relative if shared else _stem(relative)
        item_id = (known_ids or {}).get(relative) or safe_id(str(row.get("id") or default))
        if item_id in owners:
            skipped.append((relative, f"its id {item_id!r} is already used by {owners[item_id]}"))
            continue
        owners[item_id] = relative
        matched.add(id(row))
        meta = {key: value for key, value in row.items() if value not in (None, "")}
        meta.update(id=item_id, file=relative)
        meta.setdefault("title", path.stem.replace("_", " "))
        items.append(Item(item_id, path, meta))
    skipped += _unmatched_rows(rows, matched, metadata)
    return items, skipped


def _stem(relative: str) -> str:
    return relative.rsplit(".", 1)[0]


def _clean_file(file) -> str:
    return str(file).replace("\\", "/").lstrip("./")


def _unmatched_rows(rows: list[dict], matched: set[int], metadata: Path | None) -> list:
    """Metadata rows no image took: reported, so a wrong path in a CSV is not silently ignored."""
    return [
        (
            f"{metadata.name} row {number}",
            f"matches no image (file {row.get('file')!r}, id {row.get('id')!r})",
        )
        for number, row in enumerate(rows, 1)
        if id(row) not in matched
    ]
