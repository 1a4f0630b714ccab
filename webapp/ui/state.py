"""Per-session state: the collections one browser session uploaded, and finding one by name.

A session's uploads live in gr.State, never in the shared catalog, so users never see each
other's; their files live under `<cache_dir>/ui-sessions/<session>/` and go with the session.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.catalog import Catalog, Collection
from retrieval.config import Settings
from retrieval.errors import BadInput, NotFound

SESSION_PREFIX = "my:"
UNAVAILABLE = "unavailable"


@dataclass
class SessionCollections:
    """Collections one browser session uploaded; kept in gr.State, never shared between users."""

    folder: Path
    collections: dict[str, Collection] = field(default_factory=dict)


def sessions_root(settings: Settings) -> Path:
    return Path(settings.cache_dir) / "ui-sessions"


def new_session(settings: Settings) -> SessionCollections:
    return SessionCollections(sessions_root(settings) / uuid.uuid4().hex)


def delete_session(session: SessionCollections | None) -> None:
    """gr.State's delete_callback: an expired session takes its files with it."""
    if session is not None:
        shutil.rmtree(session.folder, ignore_errors=True)


def get_collection(
    catalog: Catalog, session: SessionCollections | None, name: str | None
) -> Collection:
    """A session's own upload first, else the shared catalog (which loads once and caches)."""
    if not name:
        raise BadInput("choose a collection first")
    if session is not None and name in session.collections:
        return session.collections[name]
    if name.startswith(SESSION_PREFIX):
        raise NotFound(
            f"the uploaded collection {name[len(SESSION_PREFIX) :]!r} belongs to another or an "
            "expired session; upload it again"
        )
    return catalog.get(name)


def collection_choices(
    catalog: Catalog, session: SessionCollections | None = None, marked: bool = False
) -> list[tuple[str, str]]:
    """(label, value) pairs for the collection dropdown: shared ones, then this session's.

    `marked`: collections that failed to open say so in their label (nothing is loaded here)."""
    choices = []
    for name, spec in catalog.specs.items():
        failed = marked and catalog.state(name) not in ("loaded", "not loaded")
        label = spec.title or name
        choices.append((f"{label} ({UNAVAILABLE})" if failed else label, name))
    if session is not None:
        choices += [
            (collection.spec.title, name) for name, collection in session.collections.items()
        ]
    return choices
