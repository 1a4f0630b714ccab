"""Collections: a folder of images plus optional metadata (CSV or JSONL), read into `Item`s.

Metadata columns: id, file, title, artist, date, description, url, license; any other column is kept.
Rows are matched to images by `file` (path relative to the folder) or, failing that, by `id`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
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
    root: str | Path, metadata: str | Path | None = None
) -> tuple[list[Item], list[tuple[str, str]]]:
    """All images below `root` (recursive), joined with metadata rows. Returns (items, skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"collection folder {root} not found")
    metadata = Path(metadata) if metadata else _find_metadata(root)
    rows = read_metadata(metadata) if metadata else []
    by_file = {
        str(row.get("file", "")).replace("\\", "/").lstrip("./"): row
        for row in rows
        if row.get("file")
    }
    by_id = {str(row["id"]): row for row in rows if row.get("id")}
    items, seen, skipped = [], set(), []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
        relative = path.relative_to(root).as_posix()
        row = by_file.get(relative) or by_id.get(path.stem) or {}
        item_id = safe_id(str(row.get("id") or relative.rsplit(".", 1)[0]))
        if item_id in seen:
            skipped.append((relative, f"duplicate id {item_id!r}"))
            continue
        seen.add(item_id)
        meta = {key: value for key, value in row.items() if value not in (None, "")}
        meta.update(id=item_id, file=relative)
        meta.setdefault("title", path.stem.replace("_", " "))
        items.append(Item(item_id, path, meta))
    return items, skipped
