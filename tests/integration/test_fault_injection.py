"""Every step of an index write fails in turn, deterministically: the previous version still
loads and serves, and the next write succeeds. One more failure lands inside the CURRENT flip
itself (a disk that fills mid-write), which only an atomic flip survives.
The upload paths get the same treatment in test_upload_faults.py."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from pathlib import Path

import numpy as np
import pytest

from retrieval import index as index_module
from retrieval.index import Index
from tests.integration.test_atomic_writes import check_consistent, generation


class InjectedFault(OSError):
    """What the test makes a step raise: a disk error, as a real one would be."""


def fail(*_args, **_kwargs):
    raise InjectedFault("injected")


def fail_for(name: str, original):
    """`original`, except for paths named `name`."""

    def call(path, *args, **kwargs):
        if Path(path).name == name:
            raise InjectedFault(f"injected on {name}")
        return original(path, *args, **kwargs)

    return call


def fail_replacing_into_versions(original):
    def call(source, target, *args, **kwargs):
        if Path(target).parent.name == "versions":
            raise InjectedFault("injected on the version rename")
        return original(source, target, *args, **kwargs)

    return call


STEPS = {
    "vectors": lambda mp: mp.setattr(np, "save", fail),
    "items": lambda mp: mp.setattr(Path, "write_text", fail_for("items.jsonl", Path.write_text)),
    "manifest": lambda mp: mp.setattr(
        Path, "write_text", fail_for("manifest.json", Path.write_text)
    ),
    "fsync": lambda mp: mp.setattr(os, "fsync", fail),
    "version rename": lambda mp: mp.setattr(
        os, "replace", fail_replacing_into_versions(os.replace)
    ),
    "CURRENT flip": lambda mp: mp.setattr(index_module, "write_atomic", fail),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_write_failing_at_any_step_keeps_the_previous_version(tmp_path, monkeypatch, step):
    directory = tmp_path / "index"
    generation(directory, 1)
    with monkeypatch.context() as patched:
        STEPS[step](patched)
        with pytest.raises(InjectedFault):
            generation(directory, 2)
    assert check_consistent(directory) == 1
    served = Index.load(directory)
    assert [item["id"] for item in served.items][:2] == ["g1-0", "g1-1"]
    generation(directory, 3)  # what the failure left behind does not block the next write
    assert check_consistent(directory) == 3
    visible = [p for p in (directory / "versions").iterdir() if not p.name.startswith(".")]
    assert len(visible) <= index_module.KEEP_VERSIONS


def test_a_failure_after_the_flip_leaves_the_new_version_live(tmp_path, monkeypatch):
    directory = tmp_path / "index"
    generation(directory, 1)
    monkeypatch.setattr(index_module, "_prune_versions", fail)
    with pytest.raises(InjectedFault):
        generation(directory, 2)
    assert check_consistent(directory) == 2


def test_failing_to_store_tags_keeps_the_untagged_version(tmp_path, monkeypatch):
    from retrieval.tags import Tag, store_tags

    directory = tmp_path / "index"
    generation(directory, 1)
    index = Index.load(directory)
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(InjectedFault):
        store_tags(index, [("g1-0", [Tag("red", 0.9, "colour")])])
    monkeypatch.undo()
    assert "tags" not in Index.load(directory).item("g1-0")
    store_tags(index, [("g1-0", [Tag("red", 0.9, "colour")])])
    assert Index.load(directory).item("g1-0")["tags"] == ["red"]


def write_with_a_full_disk_at_the_flip(directory: Path) -> None:
    """Child process: version 2 is written whole, then the disk 'fills' (RLIMIT_FSIZE: 8 bytes a
    file) just before CURRENT is written. A flip that truncates CURRENT in place leaves 8 bytes of
    a version name in it; an atomic one leaves CURRENT as it was."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    replace = os.replace

    def replace_then_fill_the_disk(source, target, *args, **kwargs):
        replace(source, target, *args, **kwargs)
        if Path(target).parent.name == "versions":
            resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))

    os.replace = replace_then_fill_the_disk
    try:
        generation(directory, 2)
    except OSError:
        os._exit(3)
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_disk_filling_during_the_flip_keeps_the_previous_version(tmp_path):
    directory = tmp_path / "index"
    generation(directory, 1)
    child = multiprocessing.get_context("fork").Process(
        target=write_with_a_full_disk_at_the_flip, args=(directory,)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 3  # the flip's write failed, as arranged
    assert check_consistent(directory) == 1
