"""Every step of an upload fails in turn, deterministically: the collections already there still
load and serve, nothing half-made is left visible, and the next upload succeeds. Covers a
collection uploaded through the API and a browser session's re-upload under the name of its
earlier upload (the swap of the two folders)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrieval import uploads as uploads_module
from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import BadInput, Conflict
from retrieval.index import Index
from retrieval.uploads import create_collection_from_zip, uploaded_specs
from tests.helpers import make_collection
from tests.integration.test_fault_injection import InjectedFault, fail, fail_for
from tests.ui_fixtures import make_catalog


def fail_renaming(prefix: str, original):
    """`original` (os.rename), except for a source folder whose name starts with `prefix`."""

    def call(source, target, *args, **kwargs):
        if Path(source).name.startswith(prefix):
            raise InjectedFault(f"injected on renaming {Path(source).name}")
        return original(source, target, *args, **kwargs)

    return call


def fail_extracting_the_second_member():
    original, calls = uploads_module._extract_member, []

    def call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise InjectedFault("injected while extracting")
        return original(*args, **kwargs)

    return call


UPLOAD_STEPS = {
    "extract": lambda mp: mp.setattr(
        uploads_module, "_extract_member", fail_extracting_the_second_member()
    ),
    "embed": lambda mp: mp.setattr(np, "save", fail),
    "collection.json": lambda mp: mp.setattr(
        Path, "write_text", fail_for("collection.json", Path.write_text)
    ),
    "final rename": lambda mp: mp.setattr(os, "rename", fail_renaming(".incoming-", os.rename)),
}


@pytest.fixture(scope="module")
def scenes_zip(tmp_path_factory) -> bytes:
    from tests.integration.test_uploads import zip_of_folder

    root = tmp_path_factory.mktemp("upload-faults")
    return zip_of_folder(make_collection(root / "scenes"))


def assert_serves(collection) -> None:
    hits = collection.searcher.similar("red-circle", k=1).hits
    assert hits and hits[0].id != "red-circle"


@pytest.mark.parametrize("step", list(UPLOAD_STEPS))
def test_an_api_upload_failing_at_any_step_leaves_nothing_and_keeps_the_others(
    tmp_path, monkeypatch, micro_backbone, scenes_zip, step
):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    create_collection_from_zip(scenes_zip, "kept", micro_backbone, settings)
    with monkeypatch.context() as patched:
        UPLOAD_STEPS[step](patched)
        with pytest.raises((InjectedFault, BadInput)):
            create_collection_from_zip(scenes_zip, "new", micro_backbone, settings)
    root = tmp_path / "cache" / "uploads"
    assert sorted(p.name for p in root.iterdir()) == ["kept"]  # no half-made or hidden folder
    assert [spec.name for spec in uploaded_specs(settings)] == ["kept"]
    assert_serves(Catalog(uploaded_specs(settings), settings).get("kept"))
    assert len(create_collection_from_zip(scenes_zip, "new", micro_backbone, settings).index) == 8


@pytest.mark.parametrize("step", ["extract", "embed", "swap"])
def test_a_session_reupload_failing_at_any_step_keeps_the_old_upload(
    tmp_path, monkeypatch, micro_model_dir, step
):
    from tests.integration.test_uploads import zip_of_folder
    from webapp.ui.your_collection import index_upload

    settings = Settings(cache_dir=str(tmp_path / "cache"))
    base = make_catalog(tmp_path / "base", micro_model_dir).get("scenes")
    first = tmp_path / "first.zip"
    first.write_bytes(zip_of_folder(make_collection(tmp_path / "first")))
    session, mine = index_upload(None, str(first), "mine", base, settings=settings, progress=False)
    steps = {
        **UPLOAD_STEPS,
        "swap": lambda mp: mp.setattr(os, "rename", fail_renaming(".incoming-", os.rename)),
    }
    with monkeypatch.context() as patched:
        steps[step](patched)
        with pytest.raises((InjectedFault, BadInput)):
            index_upload(session, str(first), "mine", base, settings=settings, progress=False)
    assert sorted(p.name for p in session.folder.iterdir()) == ["mine"]
    assert session.collections["my:mine"] is mine
    assert len(Index.load(session.folder / "mine" / "index")) == 8
    assert_serves(mine)


def test_an_upload_that_loses_the_name_at_the_last_moment_says_so(
    tmp_path, monkeypatch, micro_backbone, scenes_zip
):
    """Another upload of the same name finishes between the check and the final rename."""
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    rename = os.rename

    def taken_meanwhile(source, target, *args, **kwargs):
        if Path(source).name.startswith(".incoming-"):
            Path(target).mkdir()
            (Path(target) / "collection.json").write_text("{}")
        return rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", taken_meanwhile)
    with pytest.raises(Conflict) as error:
        create_collection_from_zip(scenes_zip, "race", micro_backbone, settings)
    assert str(error.value) == "a collection named 'race' already exists; choose another name"
    assert sorted(p.name for p in (tmp_path / "cache" / "uploads").iterdir()) == ["race"]
