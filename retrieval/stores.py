"""Where a collection lives: local FAISS versions, or Milvus when its folder holds `milvus.json`.

Kept apart from `index.py` so the Milvus backend (which builds on the local index's pieces) is
imported only here, and only when a folder asks for it: no import cycle, no pymilvus by default.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.backbone import Backbone
from retrieval.config import DEFAULTS, Settings
from retrieval.index import MILVUS_MANIFEST, BuildReport, Index, update_index


def in_milvus(directory: str | Path) -> bool:
    return (Path(directory) / MILVUS_MANIFEST).is_file()


def open_index(directory: str | Path, backbone: Backbone | None = None, milvus_uri: str = ""):
    """The collection at `directory`: its live local version, or the Milvus collection it points
    at (`milvus_uri`, SR_MILVUS_URI, overrides the URI the folder recorded)."""
    if in_milvus(directory):
        from retrieval.milvus_store import MilvusIndex

        return MilvusIndex.open(directory, backbone, milvus_uri)
    return Index.load(directory, backbone)


def update_collection(
    out_dir: str | Path,
    backbone: Backbone,
    folder: str | Path | None = None,
    metadata: str | Path | None = None,
    progress: bool = True,
    settings: Settings = DEFAULTS,
) -> BuildReport:
    """`update_index` for either backend: only new or changed files are embedded."""
    if in_milvus(out_dir):
        from retrieval.milvus_store import update_milvus_index

        return update_milvus_index(out_dir, backbone, folder, metadata, progress, settings)
    return update_index(out_dir, backbone, folder, metadata, progress, settings)
