"""Turn an uploaded zip of images into a new searchable collection, safely.

A zip from the web is hostile until proven otherwise: every member name is checked (no absolute
paths, no `..`, no symlinks, no duplicates), sizes are capped before and while extracting (zip
bombs lie in their headers, so the bytes actually written are counted too), and only image files
and a metadata.csv/.jsonl are written. Nothing from the archive is ever unpickled or executed.

The new collection lives under `<cache_dir>/uploads/<name>/` (images/, index/, collection.json);
it is built in a hidden staging folder and moved into place with one rename, so a failed or
interrupted upload leaves nothing half-made behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from retrieval.backbone import Backbone
from retrieval.catalog import Collection, CollectionSpec
from retrieval.collection import METADATA_NAMES
from retrieval.config import DEFAULTS, Settings
from retrieval.errors import BadInput, Conflict, NotFound, TooLarge
from retrieval.images import IMAGE_SUFFIXES
from retrieval.index import Index, build_index
from retrieval.search import Searcher

MB = 1024 * 1024
CHUNK = 64 * 1024
MIN_RATIO_CHECK_BYTES = 1 * MB  # small text members may compress well; only big ones can be bombs
COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SPEC_FILE = "collection.json"
STALE_AFTER_S = 3600.0  # no upload takes an hour: a staging folder that old was left by a crash
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_IGNORED_DIRS = {"__MACOSX"}

ZipSource = str | Path | bytes | BinaryIO


def uploads_root(settings: Settings = DEFAULTS) -> Path:
    return Path(settings.cache_dir) / "uploads"


def check_collection_name(name: str) -> str:
    """Names become folder names and URL segments: lower-case letters, digits, - and _."""
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise BadInput(
            f"collection name {name!r} is not allowed: use 1-64 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. 'my-museum')"
        )
    return name


# -- reading the archive ---------------------------------------------------------------------
def _open_stream(source: ZipSource, settings: Settings):
    """(context manager over a seekable stream, size), refusing oversized uploads before reading."""
    if isinstance(source, bytes):
        stream, size = io.BytesIO(source), len(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise NotFound(f"zip file {path.name} not found")
        stream, size = None, path.stat().st_size
    else:
        stream = source
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(0)
    if size > settings.max_upload_mb * MB:
        raise TooLarge(_too_large_upload(size, settings))
    if size == 0:
        raise BadInput("the uploaded zip is empty")
    if stream is None:
        return open(path, "rb"), size  # noqa: SIM115 - closed by the caller's `with`
    return contextlib.nullcontext(stream), size  # the caller's stream stays open


def _too_large_upload(size: int, settings: Settings) -> str:
    return (
        f"the upload is {size / MB:.1f} MB; the limit is {settings.max_upload_mb} MB "
        "(SR_MAX_UPLOAD_MB): split the collection into several zips"
    )


def member_path(name: str) -> PurePosixPath | None:
    """The safe relative path for a member, None for members to skip; unsafe names raise."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _WINDOWS_DRIVE.match(normalised):
        raise BadInput(f"the zip holds an absolute path {name!r}; zip a folder's contents instead")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadInput(f"the zip holds a path leaving its folder ({name!r}); it was refused")
    if any(ord(char) < 32 or char == "\x7f" for char in normalised):
        raise BadInput(f"the zip holds a file name with control characters ({name!r})")
    if not parts or any(part.startswith(".") or part in _IGNORED_DIRS for part in parts):
        return None  # hidden files, macOS resource forks
    if any(len(part.encode("utf-8")) > 255 for part in parts):
        raise BadInput(f"the zip holds a file name longer than 255 bytes ({name[:60]!r}...)")
    path = PurePosixPath(*parts)
    wanted = path.suffix.lower() in IMAGE_SUFFIXES or path.name.lower() in METADATA_NAMES
    return path if wanted else None


def _check_member(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BadInput(f"the zip holds a symbolic link ({info.filename!r}); links are refused")
    if info.flag_bits & 0x1:
        raise BadInput(f"{info.filename!r} is encrypted; upload an unencrypted zip")


def plan_extraction(
    archive: zipfile.ZipFile, archive_size: int, settings: Settings
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every member against the caps; returns the members to write and where."""
    infos = archive.infolist()
    if len(infos) > settings.max_zip_images * 2 + 100:
        raise TooLarge(
            f"the zip holds {len(infos):,} entries; at most {settings.max_zip_images:,} images "
            "(SR_MAX_ZIP_IMAGES) are accepted"
        )
    plan, seen, images, total = [], set(), 0, 0
    for info in infos:
        _check_member(info)
        if not info.filename or info.filename.endswith(("/", "\\")):
            continue  # folders (ZipInfo.is_dir fails on an empty name: NUL-truncated entries)
        path = member_path(info.filename)
        if path is None:
            continue
        key = path.as_posix().lower()
        if key in seen:
            raise BadInput(f"the zip holds {path} twice; file names must be unique")
        seen.add(key)
        if (
            info.file_size >= MIN_RATIO_CHECK_BYTES
            and info.file_size > settings.max_zip_ratio * max(info.compress_size, 1)
        ):
            raise TooLarge(
                f"{path} expands {info.file_size / max(info.compress_size, 1):.0f} times "
                f"(limit {settings.max_zip_ratio}, SR_MAX_ZIP_RATIO): refused as a zip bomb"
            )
        images += path.suffix.lower() in IMAGE_SUFFIXES
        total += info.file_size
        plan.append((info, path))
    if images > settings.max_zip_images:
        raise TooLarge(
            f"the zip holds {images:,} images; the limit is {settings.max_zip_images:,} "
            "(SR_MAX_ZIP_IMAGES)"
        )
    _check_total(total, archive_size, settings)
    if images == 0:
        raise BadInput(
            "the zip holds no images (.jpg, .jpeg, .png, .webp, .tif, .tiff, .bmp or .gif)"
        )
    return plan


def _check_total(total: int, archive_size: int, settings: Settings) -> None:
    if total > settings.max_unzipped_mb * MB:
        raise TooLarge(
            f"the zip expands to {total / MB:.0f} MB; the limit is {settings.max_unzipped_mb} MB "
            "(SR_MAX_UNZIPPED_MB)"
        )
    if total >= MIN_RATIO_CHECK_BYTES and total > settings.max_zip_ratio * archive_size:
        raise TooLarge(
            f"the zip expands {total / archive_size:.0f} times its size (limit "
            f"{settings.max_zip_ratio}, SR_MAX_ZIP_RATIO): refused as a zip bomb"
        )


def _extract_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int
) -> int:
    """Copy one member in chunks, trusting the bytes actually produced rather than the header."""
    written = 0
    with archive.open(info) as source, open(target, "xb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > info.file_size or written > budget:
                raise TooLarge(
                    f"{info.filename!r} expands beyond what the zip declares: refused as a zip bomb"
                )
            out.write(chunk)
    return written


def import_zip(source: ZipSource, dest_dir: str | Path, settings: Settings = DEFAULTS) -> Path:
    """Extract the images (and metadata) of a zip into the new folder `dest_dir`.

    Returns the folder to index: `dest_dir`, or its only sub-folder when the zip wraps everything
    in one top-level folder. Raises BadInput / TooLarge with a message for the uploader.
    """
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise BadInput(f"{dest} already exists and is not empty")
    opened, size = _open_stream(source, settings)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with opened as stream, zipfile.ZipFile(stream) as archive:
            budget = settings.max_unzipped_mb * MB
            for info, relative in plan_extraction(archive, size, settings):
                target = root.joinpath(*relative.parts)
                if not target.resolve().is_relative_to(root):
                    raise BadInput(f"the zip member {info.filename!r} leaves the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                budget -= _extract_member(archive, info, target, budget)
    except (BadInput, NotFound):
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except FileExistsError as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise BadInput(f"the zip holds {Path(error.filename).name} twice") from error
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,
        RuntimeError,
    ) as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise BadInput(f"the upload is not a readable zip archive ({error})") from error
    except (OSError, ValueError) as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise BadInput(f"the zip could not be extracted ({error})") from error
    return _content_root(dest)


def _content_root(folder: Path) -> Path:
    """A zip of one folder (the usual 'compress folder' result) is indexed from inside it."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


# -- collections -----------------------------------------------------------------------------
def create_collection_from_zip(
    source: ZipSource,
    name: str,
    backbone: Backbone,
    settings: Settings = DEFAULTS,
    title: str | None = None,
    description: str = "",
    index_type: str = "flat",
    like: Collection | None = None,
) -> Collection:
    """Extract, index with `backbone` and register on disk; the caller adds it to its Catalog.

    `like`: a collection using the same model whose composed-search weights and tagging
    vocabulary the new collection inherits (a Combiner works for any index of its model).
    """
    check_collection_name(name)
    root = uploads_root(settings)
    final = root / name
    if final.exists():
        raise Conflict(f"a collection named {name!r} already exists; choose another name")
    staging = root / f".incoming-{uuid.uuid4().hex}"
    inherited = {}
    if like is not None:
        inherited = {key: getattr(like.spec, key) for key in ("combiner", "phi", "vocabulary")}
    try:
        folder = import_zip(source, staging / "images", settings)
        build_index(
            folder,
            staging / "index",
            backbone,
            index_type=index_type,
            progress=False,
            settings=settings,
        )
        spec = CollectionSpec(
            name=name,
            title=(title or name).strip()[:200] or name,
            index=str(final / "index"),
            model=backbone.spec,
            description=description.strip()[:2000],
            **inherited,
        )
        (staging / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(staging, final)  # atomic; fails if another upload took the name meanwhile
        except OSError as error:
            if not final.exists():
                raise  # a disk error, not a name taken: say what happened
            raise Conflict(
                f"a collection named {name!r} already exists; choose another name"
            ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = Index.load(final / "index", backbone)
    composers = dict(like.searcher.composers) if like is not None else {}
    searcher = Searcher(index, backbone, composers, max_k=settings.max_k)
    return Collection(spec, index, backbone, searcher)


def replace_folder(complete: Path, target: Path) -> None:
    """Put a fully built folder in place of `target`: the old one serves until the new one is
    complete, and is removed only after the swap (two renames within one parent folder)."""
    old = target.with_name(f".replaced-{uuid.uuid4().hex}")
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(complete, target)
    except OSError:
        if old.exists():
            os.rename(old, target)  # the swap failed: the old folder serves on
        raise
    shutil.rmtree(old, ignore_errors=True)


def sweep_staging(settings: Settings = DEFAULTS, older_than_s: float = STALE_AFTER_S) -> list[str]:
    """Remove what crashed uploads, replacements and deletions left behind (hidden folders
    untouched for `older_than_s`); returns their names. Run when the server starts."""
    root = uploads_root(settings)
    now, removed = time.time(), []
    for folder in sorted(root.glob(".*")) if root.is_dir() else []:
        if folder.is_dir() and now - folder.stat().st_mtime > older_than_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def uploaded_specs(settings: Settings = DEFAULTS) -> list[CollectionSpec]:
    """Specs of collections uploaded earlier, so a restarted app can serve them again. Hidden
    folders are work in progress (or its crash leftovers) and never served."""
    root = uploads_root(settings)
    specs = []
    files = sorted(root.glob(f"*/{SPEC_FILE}")) if root.is_dir() else []
    for file in (f for f in files if not f.parent.name.startswith(".")):
        try:
            raw = json.loads(file.read_text())
            spec = CollectionSpec(
                **{k: raw[k] for k in CollectionSpec.__dataclass_fields__ if k in raw}
            )
        except (OSError, ValueError, TypeError):
            continue
        spec.index = str(file.parent / "index")  # the folder may have moved with the cache
        specs.append(spec)
    return specs


def is_uploaded(name: str, settings: Settings = DEFAULTS) -> bool:
    return (
        bool(COLLECTION_NAME.match(name)) and (uploads_root(settings) / name / SPEC_FILE).is_file()
    )


def delete_uploaded_collection(name: str, settings: Settings = DEFAULTS) -> None:
    """Remove an uploaded collection's files; shipped collections are not touched."""
    if not is_uploaded(name, settings):
        raise NotFound(f"{name!r} is not an uploaded collection")
    target = uploads_root(settings) / name
    trash = target.with_name(f".deleted-{uuid.uuid4().hex}")
    os.rename(target, trash)  # the name is free at once, even if removing the files takes time
    shutil.rmtree(trash, ignore_errors=True)
