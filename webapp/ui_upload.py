"""Bring your own collection: a zip of images indexed for one browser session only.

The files live under `<cache_dir>/ui-sessions/<session>/<name>/` and are removed when the
session's gr.State expires; nothing is added to the shared catalog, so other users never see it.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from retrieval.catalog import Collection, CollectionSpec
from retrieval.collection import safe_id
from retrieval.config import Settings, get_settings
from retrieval.errors import BadInput, NotFound, TooLarge
from retrieval.index import Index, build_index
from retrieval.search import Searcher
from webapp.ui_logic import SESSION_PREFIX, SessionCollections

MAX_SESSION_COLLECTIONS = 5


def sessions_root(settings: Settings | None = None) -> Path:
    return Path((settings or get_settings()).cache_dir) / "ui-sessions"


def new_session(settings: Settings | None = None) -> SessionCollections:
    return SessionCollections(sessions_root(settings) / uuid.uuid4().hex)


def delete_session(session: SessionCollections | None) -> None:
    """gr.State's delete_callback: an expired session takes its files with it."""
    if session is not None:
        shutil.rmtree(session.folder, ignore_errors=True)


def _uploads():
    try:
        from retrieval import uploads
    except ImportError:
        raise BadInput("uploads are not available in this installation") from None
    return uploads


def index_upload(
    session: SessionCollections | None,
    zip_path: str | None,
    name: str,
    base: Collection,
    metadata_path: str | None = None,
    settings: Settings | None = None,
    progress: bool = True,
) -> tuple[SessionCollections, Collection]:
    """Extract safely (retrieval.uploads), embed with `base`'s model, register in the session."""
    settings = settings or get_settings()
    if not zip_path:
        raise BadInput("choose a .zip of images to upload")
    slug = safe_id((name or Path(zip_path).stem).strip().lower())[:64]
    session = session or new_session(settings)
    key = SESSION_PREFIX + slug
    if key not in session.collections and len(session.collections) >= MAX_SESSION_COLLECTIONS:
        raise TooLarge(f"a session holds at most {MAX_SESSION_COLLECTIONS} uploaded collections")
    target = session.folder / slug
    shutil.rmtree(target, ignore_errors=True)  # uploading under the same name replaces it
    try:
        folder = _uploads().import_zip(zip_path, target / "images", settings)
        metadata = _copy_metadata(metadata_path, target) if metadata_path else None
        build_index(folder, target / "index", base.backbone, metadata=metadata, progress=progress)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    index = Index.load(target / "index", base.backbone)
    spec = CollectionSpec(
        name=key,
        title=f"Your upload: {slug} ({len(index):,} images)",
        index=str(target / "index"),
        model=base.backbone.spec,
        description=f"Uploaded in this session; embedded with {base.spec.title or base.name}'s model.",
        vocabulary=base.spec.vocabulary,
    )
    searcher = Searcher(index, base.backbone, dict(base.searcher.composers))
    collection = Collection(spec, index, base.backbone, searcher)
    session.collections[key] = collection
    return session, collection


def _copy_metadata(metadata_path: str, target: Path) -> Path:
    source = Path(metadata_path)
    if source.suffix.lower() not in {".csv", ".jsonl"}:
        raise BadInput("metadata must be a .csv or .jsonl file")
    target.mkdir(parents=True, exist_ok=True)
    copy = target / f"metadata{source.suffix.lower()}"
    shutil.copyfile(source, copy)
    return copy


def index_archive(collection: Collection, out_dir: Path) -> Path:
    """A zip of the index folder (vectors, metadata, thumbnails) that `Index.load` reads back.

    Built once per index version (named after CURRENT) and reused; written under a temporary
    name and renamed, so two users asking at once never see a half-written zip.
    """
    directory = collection.index.directory
    current = directory / "CURRENT"
    if not current.is_file():
        raise NotFound(f"{collection.name} has no index folder to download")
    version = current.read_text().strip()
    final = out_dir / f"{safe_id(collection.name)}-{safe_id(version)}-index.zip"
    if final.is_file():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".{uuid.uuid4().hex}"
    made = Path(shutil.make_archive(str(staging), "zip", root_dir=directory))
    made.replace(final)
    return final


def push_to_hub(collection: Collection, repo: str, token: str | None, private: bool) -> str:
    """Upload the index folder to a Hub dataset repo; needs a token (field or HF_TOKEN)."""
    import os

    from retrieval.hub import push_index

    repo = (repo or "").strip().removeprefix("hf-hub:")
    if repo.count("/") != 1:
        raise BadInput("give the Hub repo as org/name")
    token = (token or "").strip() or os.environ.get("HF_TOKEN")
    if not token:
        raise BadInput("pushing needs a Hub token: paste one or set HF_TOKEN for the app")
    return push_index(collection.index.directory, repo, token=token, private=bool(private))
