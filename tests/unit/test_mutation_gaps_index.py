"""The index's promises that mutation testing found unpinned: which old version a write prunes,
what a version records and how it is read back whatever the locale or time zone, and what the
ANN structures are built and trained with. Each test fails for one surviving mutant of
retrieval/index.py (bench/mutation_survivors.toml names which)."""

from __future__ import annotations

import calendar
import json
import locale
import os
import shutil
import time
from contextlib import contextmanager

import faiss
import numpy as np
import pytest

from retrieval.index import Index, build_faiss, write_version
from tests.unit.test_index_rules import manifest, tiny_index, unit_vectors


def version_names(directory) -> set[str]:
    return {p.name for p in (directory / "versions").iterdir() if not p.name.startswith(".")}


def aged_copy(directory, source: str, name: str, age_s: float) -> None:
    """A copy of version `source` named `name`, last modified `age_s` seconds ago (negative: in
    the future), like a version copied with its times from a machine whose clock differs."""
    target = directory / "versions" / name
    shutil.copytree(directory / "versions" / source, target)
    stamp = time.time() - age_s
    os.utime(target, (stamp, stamp))


# -- pruning --------------------------------------------------------------------------------------
def test_a_write_prunes_the_oldest_version_by_age_not_by_name(tmp_path):
    directory = tmp_path / "index"
    first = tiny_index(directory).version
    aged_copy(directory, first, "v99991231235959-ffffffff", age_s=3600)  # oldest, sorts last
    newest = tiny_index(directory).version
    assert version_names(directory) == {first, newest}


def test_a_write_never_prunes_the_version_it_just_wrote(tmp_path):
    directory = tmp_path / "index"
    first = tiny_index(directory).version
    for n, age in enumerate((-3600, -7200)):  # two versions dated in the future
        aged_copy(directory, first, f"v0000000000000{n}-00000000", age_s=age)
    written = tiny_index(directory)
    assert (directory / "CURRENT").read_text() == written.version
    assert written.version in version_names(directory)
    assert len(Index.load(directory)) == 5


def test_a_stray_file_among_the_versions_does_not_fail_a_write(tmp_path):
    directory = tmp_path / "index"
    tiny_index(directory)
    stray = directory / "versions" / "Thumbs.db"  # what a file browser may leave there
    stray.write_bytes(b"x")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    for _ in range(2):
        written = tiny_index(directory)  # prunes: the stray file is the oldest entry
    assert (directory / "CURRENT").read_text() == written.version


# -- what a version records -----------------------------------------------------------------------
@contextmanager
def time_zone(zone: str):
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_the_creation_time_is_utc_whatever_the_local_time_zone(tmp_path):
    with time_zone("XYZ-5"):  # five hours ahead of UTC (a POSIX zone: no tz database needed)
        created = tiny_index(tmp_path / "index").manifest["created"]
    stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(stamp - time.time()) < 3600  # local time would be five hours off


def test_vectors_are_stored_as_float32_whatever_they_come_as(tmp_path):
    vectors = unit_vectors(5).astype(np.float64)
    items = [{"id": f"i{n}"} for n in range(5)]
    written = write_version(tmp_path / "index", manifest(), items, vectors)
    assert written.vectors.dtype == np.float32
    stored = np.load(written.version_dir() / "vectors.npy")
    assert stored.dtype == np.float32 and np.allclose(stored, vectors)


@contextmanager
def ascii_locale():
    """The C locale: text files opened without an encoding are ASCII (as under any locale that
    is not UTF-8, e.g. a server started with LANG=en_US.ISO-8859-1)."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_items_are_written_and_read_as_utf8_whatever_the_locale(tmp_path):
    items = [{"id": "i0", "title": "Café ☕ Zoë"}, {"id": "i1", "title": "東京"}]
    with ascii_locale():
        write_version(tmp_path / "a", manifest(), items, unit_vectors(2))
    assert Index.load(tmp_path / "a").items == items
    write_version(tmp_path / "b", manifest(), items, unit_vectors(2))
    with ascii_locale():
        assert Index.load(tmp_path / "b").items == items


def test_an_empty_version_of_an_ivfpq_collection_needs_no_training(tmp_path):
    empty = write_version(
        tmp_path / "index", manifest(index_type="ivfpq"), [], np.zeros((0, 16), np.float32)
    )
    assert len(empty) == 0 and empty.ann is None


# -- ANN structures -------------------------------------------------------------------------------
def ids(count: int) -> list[dict]:
    return [{"id": str(n)} for n in range(count)]


def test_the_build_parameters_of_a_manifest_reach_the_ann_structure(tmp_path):
    written = write_version(
        tmp_path / "hnsw",
        manifest(index_type="hnsw", index_params={"m": 12, "ef_construction": 50}),
        ids(300),
        unit_vectors(300),
    )
    graph = faiss.downcast_index(written.ann).hnsw
    assert graph.nb_neighbors(1) == 12 and graph.efConstruction == 50


def test_a_manifest_without_index_params_builds_and_loads_with_the_defaults(tmp_path):
    bare = manifest(index_type="hnsw")
    del bare["index_params"]
    written = write_version(tmp_path / "hnsw", bare, ids(300), unit_vectors(300))
    graph = faiss.downcast_index(written.ann).hnsw
    assert graph.nb_neighbors(1) == 32 and graph.efSearch == 64
    assert "index_params" not in json.loads((written.version_dir() / "manifest.json").read_text())


@pytest.mark.parametrize("index_type,params", [("hnsw", {}), ("ivfpq", {"nlist": 8})])
def test_ann_scores_are_cosine_similarities_not_distances(index_type, params):
    vectors = unit_vectors(600)
    ann = build_faiss(vectors, index_type, params)
    if index_type == "ivfpq":
        ann.nprobe = 8
    scores, positions = ann.search(vectors[7:8], 3)
    assert positions[0][0] == 7
    assert scores[0][0] > 0.8 and scores[0][0] > scores[0][1] > scores[0][2]  # L2 would be ~0


def test_ivfpq_trains_on_exactly_the_vectors_it_needs_and_no_more():
    assert build_faiss(unit_vectors(256), "ivfpq", {"nlist": 8}).ntotal == 256
    assert build_faiss(unit_vectors(300), "ivfpq", {"nlist": 300}).nlist == 300


def test_ivfpq_builds_are_reproducible():
    vectors = unit_vectors(600)
    first = faiss.serialize_index(build_faiss(vectors, "ivfpq", {"nlist": 8}))
    again = faiss.serialize_index(build_faiss(vectors, "ivfpq", {"nlist": 8}))
    assert np.array_equal(first, again)


def test_ivfpq_trains_each_list_on_the_points_faiss_asks_for(capfd):
    """faiss wants 39 training points per list; the sample is 40 per list (10,000 at least)."""
    capfd.readouterr()
    index = build_faiss(unit_vectors(13_000, dim=4), "ivfpq", {"nlist": 300})
    assert index.is_trained and index.ntotal == 13_000
    assert "WARNING clustering" not in capfd.readouterr().err
