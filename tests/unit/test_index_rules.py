"""The index's smaller promises, each pinned down: what a manifest records, what lookups answer
for odd items, which model and runtime an index accepts, the ANN parameters it honours, and
what its messages name. Found by mutation testing (bench/mutation_test.py): each test here
fails for a one-line change that the broader tests let through."""

from __future__ import annotations

import hashlib
import json
import os
import time
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
from PIL import Image

from retrieval import __version__
from retrieval import index as index_module
from retrieval.backbone import model_fingerprint
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.index import (
    FORMAT_VERSION,
    Index,
    build_faiss,
    build_index,
    update_index,
    write_version,
)
from tests.helpers import make_collection

DIM = 16


def unit_vectors(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def manifest(**fields) -> dict:
    return {
        "format": FORMAT_VERSION, "model_spec": "x", "dim": DIM, "preprocessing": "standard",
        "index_type": "flat", "index_params": {}, **fields,
    }  # fmt: skip


def tiny_index(directory, count: int = 5, items=None, **fields) -> Index:
    items = items or [
        {"id": f"i{n}", "file": f"{n}.png", "thumb": f"i{n}.jpg"} for n in range(count)
    ]
    return write_version(directory, manifest(**fields), items, unit_vectors(len(items)))


def unreadable_build_error(tmp_path, backbone, names: str) -> str:
    """The message of building a folder of one unreadable `<name>.png` per letter of `names`."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.png").write_bytes(b"not an image")
    with pytest.raises(BadInput) as error:
        build_index(folder, tmp_path / "index", backbone, progress=False)
    return str(error.value)


@pytest.fixture
def built(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images")
    return folder, build_index(folder, tmp_path / "index", micro_backbone, progress=False)


# -- what a build records -------------------------------------------------------------------------
def test_a_build_records_how_to_read_its_vectors_again(built, micro_backbone, tmp_path):
    folder, report = built
    recorded = report.index.manifest
    assert recorded["format"] == FORMAT_VERSION and recorded["dim"] == micro_backbone.dim
    assert recorded["retrieval_version"] == __version__
    assert recorded["model_spec"] == os.path.relpath(micro_backbone.spec, tmp_path / "index")
    assert recorded["model_fingerprint"] == model_fingerprint(micro_backbone)
    assert recorded["runtimes"] == {"torch": 1.0} and recorded["normalized"] is True
    assert (recorded["index_type"], recorded["index_params"]) == ("flat", {})
    assert recorded["source_root"] == "../images" and recorded["metadata_file"] is None
    assert recorded["skipped"] == [] and recorded["count"] == 8
    assert (
        time.time() - time.mktime(time.strptime(recorded["created"], "%Y-%m-%dT%H:%M:%SZ"))
        < 86400 * 2
    )
    on_disk = Index.load(tmp_path / "index")
    assert on_disk.manifest == recorded and on_disk.source_root() == folder.resolve()
    row = on_disk.item("red-circle")
    assert (
        row["fingerprint"]
        == f"{(folder / row['file']).stat().st_size}-{(folder / row['file']).stat().st_mtime_ns}"
    )
    digest = hashlib.sha1(row["fingerprint"].encode()).hexdigest()[:10]
    assert row["thumb"] == f"red-circle-{digest}.jpg" and on_disk.thumb_path("red-circle").is_file()


def test_a_named_metadata_file_is_recorded_and_reused_by_updates(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images", with_metadata=False)
    table = tmp_path / "catalogue.csv"
    table.write_text("id,file,title\nr,round/red_circle.png,The red one\n")
    report = build_index(folder, tmp_path / "index", micro_backbone, metadata=table, progress=False)
    assert report.index.manifest["metadata_file"] == "../catalogue.csv"
    assert report.index.metadata_file() == table.resolve()
    assert report.index.item("r")["title"] == "The red one"
    table.write_text("id,file,title\nr,round/red_circle.png,Renamed\n")
    assert (
        update_index(tmp_path / "index", micro_backbone, progress=False).index.item("r")["title"]
        == "Renamed"
    )
    assert Index.load(tmp_path / "index").metadata_file() == table.resolve()
    without = tiny_index(tmp_path / "plain")
    assert (
        without.metadata_file() is None and without.source_root() == (tmp_path / "plain").resolve()
    )


def test_a_build_report_says_what_it_did_and_names_each_skip(built, tmp_path):
    _, report = built
    report.skipped = [("a.jpg", "broken"), ("b.png", "too small")]
    report.changed, report.removed, report.unchanged = 2, 3, 4
    assert report.summary() == (
        f"8 items in {tmp_path / 'index'} (8 added, 2 changed, 3 removed, 4 unchanged)"
        "\n  skipped a.jpg: broken\n  skipped b.png: too small"
    )
    assert report.as_dict() == {
        "indexed": 8, "added": 8, "changed": 2, "removed": 3, "unchanged": 4,
        "skipped": [{"file": "a.jpg", "reason": "broken"}, {"file": "b.png", "reason": "too small"}],
    }  # fmt: skip


def test_a_folder_of_unreadable_files_names_the_first_three_and_counts_the_rest(
    tmp_path, micro_backbone
):
    message = unreadable_build_error(tmp_path, micro_backbone, "abcde")
    assert message.startswith("none of the 5 images could be read: a.png: ")
    assert "; b.png: " in message and "; c.png: " in message and "d.png" not in message
    assert message.endswith("; and 2 more")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "notes.txt").write_text("x")
    with pytest.raises(BadInput, match=r"no images found in 'only-text' \(an empty folder\)"):
        build_index(tmp_path / "only-text", tmp_path / "i2", micro_backbone, progress=False)


# -- updates --------------------------------------------------------------------------------------
def test_an_update_keeps_tags_thumbnails_and_fingerprints_of_unchanged_files(
    built, micro_backbone, tmp_path
):
    _, report = built
    tagged = report.index.update_metadata({"red-circle": {"tags": ["red", "circle"]}})
    before = {row["id"]: row for row in tagged.items}
    again = update_index(tmp_path / "index", micro_backbone, progress=False)
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, 8)
    after = {row["id"]: row for row in again.index.items}
    assert after == before and after["red-circle"]["tags"] == ["red", "circle"]
    third = update_index(tmp_path / "index", micro_backbone, progress=False)
    assert third.unchanged == 8  # the kept fingerprints still match: nothing is embedded again


def test_an_update_from_another_folder_moves_the_source_root(built, micro_backbone, tmp_path):
    _, report = built
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(other / "lone.png")
    moved = update_index(tmp_path / "index", micro_backbone, folder=other, progress=False)
    assert [row["id"] for row in moved.index.items] == ["lone"] and moved.removed == 8
    assert Index.load(tmp_path / "index").source_root() == other.resolve()
    (other / "lone.png").unlink()
    with pytest.raises(BadInput, match=f"no readable images left in {other}"):
        update_index(tmp_path / "index", micro_backbone, folder=other, progress=False)


def test_an_update_refuses_another_model(built, tmp_path):
    from retrieval.backbone import load_backbone, new_model, save_backbone

    other, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    stranger = load_backbone(
        str(save_backbone(other, "ShapesCLIP-Micro", tmp_path / "m2")), device="cpu"
    )
    with pytest.raises(IndexMismatch, match="different weights"):
        update_index(tmp_path / "index", stranger, progress=False)


# -- which models and runtimes an index accepts -------------------------------------------------------
def test_the_fingerprint_tolerance_is_tight(built, micro_backbone, tmp_path):
    _, report = built
    own = np.array(model_fingerprint(micro_backbone))
    for shift, accepted in ((1e-3, True), (3e-3, False)):
        index = Index(
            tmp_path,
            {**report.index.manifest, "model_fingerprint": list(own + shift)},
            [],
            unit_vectors(0, micro_backbone.dim),
        )
        if accepted:
            index.check_backbone(micro_backbone)
        else:
            with pytest.raises(IndexMismatch) as error:
                index.check_backbone(micro_backbone)
            spec = report.index.manifest["model_spec"]
            assert f"was built with {spec} (dim {micro_backbone.dim})" in str(error.value)
            assert f"the model in use ({micro_backbone.spec})" in str(error.value)


def a_backbone(runtime: str, agreement: float, dim: int = DIM):
    """What the runtime check reads of a backbone: its runtime and that runtime's agreement."""
    return SimpleNamespace(runtime=runtime, runtime_agreement=agreement, dim=dim, spec="x")


def test_runtimes_a_version_holds_and_which_queries_meet_them(tmp_path):
    legacy = tiny_index(tmp_path / "legacy")
    assert legacy.runtimes() == {"torch": 1.0}
    legacy.check_runtime(a_backbone("onnx-int8", 0.999))
    edge = tiny_index(tmp_path / "edge", runtimes={"onnx": 0.99})
    edge.check_runtime(a_backbone("torch", 1.0))  # exactly the needed agreement is enough
    poor = tiny_index(tmp_path / "poor", runtimes={"onnx-int8": 0.97})
    poor.check_runtime(a_backbone("onnx-int8", 0.97))  # its own runtime: the vectors are its own
    with pytest.raises(IndexMismatch) as error:
        poor.check_runtime(a_backbone("torch", 1.0))
    assert "holds onnx-int8 embeddings and queries run on torch" in str(error.value)
    assert "cosine 0.9700 (needed: 0.99)" in str(error.value)


def test_an_old_format_is_named(tmp_path):
    expected = f"index format 0 is not supported \\(expected {FORMAT_VERSION}\\)"
    with pytest.raises(IndexMismatch, match=expected):
        tiny_index(tmp_path / "old", format=0)  # written whole, refused when read back
    with pytest.raises(IndexMismatch, match=expected):
        Index.load(tmp_path / "old")
    with pytest.raises(NotFound, match="no CURRENT file"):
        Index.load(tmp_path / "nothing-here")


def test_loading_reads_again_when_a_writer_prunes_the_version_being_read(tmp_path, monkeypatch):
    tiny_index(tmp_path / "index")
    real, failures = Index._load_current.__func__, []

    def pruned_twice(cls, directory, backbone):
        if len(failures) < 2:
            failures.append(1)
            raise FileNotFoundError("pruned meanwhile")
        return real(cls, directory, backbone)

    monkeypatch.setattr(Index, "_load_current", classmethod(pruned_twice))
    assert len(Index.load(tmp_path / "index")) == 5 and len(failures) == 2
    failures.clear()
    monkeypatch.setattr(
        Index,
        "_load_current",
        classmethod(lambda cls, d, b: (_ for _ in ()).throw(FileNotFoundError("gone"))),
    )
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "index")


# -- lookups --------------------------------------------------------------------------------------
def test_lookups_name_the_missing_item_and_never_leave_their_folders(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    items = [
        {"id": "escape", "file": "../secret.png", "thumb": "escape.jpg"},
        {"id": "deleted", "file": "gone.png", "thumb": "deleted.jpg"},
        {"id": "thumb-escape", "file": "gone.png", "thumb": "../../secret.png"},
    ]
    index = tiny_index(tmp_path / "index", items=items, source_root="../images")
    (tmp_path / "images").mkdir()
    thumbs = (tmp_path / "index" / "thumbs").resolve()
    assert index.image_path("escape") == thumbs / "escape.jpg"  # not the file outside the root
    assert index.image_path("deleted") == thumbs / "deleted.jpg"  # the original is gone
    with pytest.raises(NotFound, match="item 'thumb-escape' has no thumbnail inside the index"):
        index.thumb_path("thumb-escape")
    with pytest.raises(NotFound, match="no item 'nope' in this collection"):
        index.position("nope")


# -- search ---------------------------------------------------------------------------------------
def test_search_within_allowed_positions_and_on_an_empty_index(tmp_path):
    index = tiny_index(tmp_path / "index", count=20)
    query = np.asarray(index.vectors[7], dtype=np.float64)  # callers may hand over float64
    scores, positions = index.search(query, 3, allowed=[2, 7, 9, 11])
    expected = sorted([2, 7, 9, 11], key=lambda p: -float(index.vectors[p] @ query))[:3]
    assert list(positions[0]) == expected and expected[0] == 7
    assert positions.dtype == np.int64 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert index.search(query, 9, allowed=[2, 7])[1].shape == (1, 2)
    assert index.search(query, 1, allowed=[5])[1].tolist() == [[5]]
    for nothing in (index.search(query, 3, allowed=[]), index.search(query, 0)):
        assert nothing[0].shape == nothing[1].shape == (1, 0)
        assert (nothing[0].dtype, nothing[1].dtype) == (np.float32, np.int64)
    assert index.search(query, 50)[1].shape == (1, 20)
    assert index.search(query, 1)[1].tolist() == [[7]]
    empty = write_version(tmp_path / "empty", manifest(), [], np.zeros((0, DIM), np.float32))
    assert empty.search(query, 5)[1].shape == (1, 0) and empty.ann is None


def test_ann_structures_take_their_parameters(tmp_path):
    vectors = unit_vectors(600)
    hnsw = build_faiss(vectors, "hnsw", {"m": 12, "ef_construction": 50})
    assert hnsw.hnsw.efConstruction == 50 and hnsw.hnsw.nb_neighbors(1) == 12
    default_hnsw = build_faiss(vectors, "hnsw", {})
    assert default_hnsw.hnsw.efConstruction == 200 and default_hnsw.hnsw.nb_neighbors(1) == 32
    ivf = build_faiss(vectors, "ivfpq", {"nlist": 8, "m": 4})
    assert (ivf.nlist, ivf.pq.M, ivf.pq.nbits, ivf.ntotal) == (8, 4, 8, 600)
    auto = build_faiss(unit_vectors(600, dim=64), "ivfpq", {})
    assert (auto.nlist, auto.pq.M) == (int(4 * np.sqrt(600)), 32)
    with pytest.raises(
        BadInput, match="IVF-PQ needs at least 256 vectors to train; use flat or hnsw"
    ):
        build_faiss(unit_vectors(255), "ivfpq", {"nlist": 8})
    with pytest.raises(BadInput, match="IVF-PQ needs at least 300 vectors"):
        build_faiss(unit_vectors(299), "ivfpq", {"nlist": 300})
    with pytest.raises(BadInput, match="unknown index type 'lsh'; choose one of"):
        build_faiss(vectors, "lsh", {})
    searched = write_version(
        tmp_path / "hnsw",
        manifest(index_type="hnsw", index_params={"ef_search": 21}),
        [{"id": str(n)} for n in range(600)],
        vectors,
    )
    assert faiss.downcast_index(searched.ann).hnsw.efSearch == 21
    probed = write_version(
        tmp_path / "ivf",
        manifest(index_type="ivfpq", index_params={"nlist": 8, "nprobe": 3}),
        [{"id": str(n)} for n in range(600)],
        vectors,
    )
    assert faiss.extract_index_ivf(probed.ann).nprobe == 3
    plain_hnsw = write_version(
        tmp_path / "hnsw2",
        manifest(index_type="hnsw"),
        [{"id": str(n)} for n in range(600)],
        vectors,
    )
    assert faiss.downcast_index(plain_hnsw.ann).hnsw.efSearch == 64
    defaults = write_version(
        tmp_path / "ivf2",
        manifest(index_type="ivfpq", index_params={"nlist": 8}),
        [{"id": str(n)} for n in range(600)],
        vectors,
    )
    assert faiss.extract_index_ivf(defaults.ann).nprobe == 16


@pytest.mark.parametrize(
    "dim,m", [(512, 64), (96, 48), (64, 32), (40, 8), (20, 4), (12, 4), (6, 2), (3, 1)]
)
def test_pq_splits_each_vector_into_at_least_two_dimensions_per_code(dim, m):
    assert index_module._pq_subquantizers(dim) == m


# -- versions -------------------------------------------------------------------------------------
def test_old_versions_and_leftovers_are_pruned(tmp_path):
    directory = tmp_path / "index"
    for _ in range(4):
        tiny_index(directory)
    (directory / "versions" / ".crashed.tmp").mkdir()
    tiny_index(directory)
    kept = sorted(p.name for p in (directory / "versions").iterdir())
    assert len(kept) == index_module.KEEP_VERSIONS
    assert (directory / "CURRENT").read_text() in kept
    assert (
        json.loads((directory / "versions" / kept[0] / "manifest.json").read_text())["count"] == 5
    )


def test_exactly_three_unreadable_files_are_all_named_with_no_remainder(tmp_path, micro_backbone):
    message = unreadable_build_error(tmp_path, micro_backbone, "abc")
    assert "c.png" in message and "more" not in message


def test_the_settings_reach_the_embedding_of_a_build(tmp_path, micro_backbone):
    from retrieval.config import Settings

    folder = make_collection(tmp_path / "images")
    built = build_index(
        folder, tmp_path / "index", micro_backbone, progress=False, settings=Settings(thumb_size=20)
    )
    assert max(Image.open(built.index.thumb_path("red-circle")).size) == 20


def test_an_update_records_the_runtime_of_new_vectors_only_when_it_embeds(
    built, micro_backbone, tmp_path
):
    folder, report = built
    index = report.index
    recorded = {**index.manifest, "runtimes": {"onnx": 0.999}}
    write_version(tmp_path / "index", recorded, index.items, np.asarray(index.vectors))
    unchanged = update_index(tmp_path / "index", micro_backbone, progress=False)
    assert unchanged.index.manifest["runtimes"] == {"onnx": 0.999}  # nothing embedded
    Image.new("RGB", (30, 30), (9, 9, 9)).save(folder / "new.png")
    grown = update_index(tmp_path / "index", micro_backbone, progress=False)
    assert grown.index.manifest["runtimes"] == {"onnx": 0.999, "torch": 1.0}


def test_a_metadata_rewrite_keeps_the_ann_structure_and_its_measured_recall(tmp_path, monkeypatch):
    """Tags or a new map leave the vectors as they were: the version reuses the live HNSW graph
    and the recall measured at build time instead of rebuilding and re-measuring."""
    vectors = unit_vectors(600)
    items = [{"id": str(n)} for n in range(600)]
    built = write_version(tmp_path / "hnsw", manifest(index_type="hnsw"), items, vectors)
    recall = built.manifest["recall"]

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("the vectors did not change: nothing to rebuild or measure")

    monkeypatch.setattr(index_module, "build_faiss", must_not_rebuild)
    monkeypatch.setattr(index_module, "measure_recall", must_not_rebuild)
    tagged = built.update_metadata({"3": {"tags": "red"}})
    redrawn = tagged.redraw_map("pca")
    assert tagged.item("3")["tags"] == "red" and redrawn.manifest["map"]["method"] == "pca"
    assert redrawn.manifest["recall"] == recall
    query = vectors[5]
    assert redrawn.search(query, 5)[1].tolist() == built.search(query, 5)[1].tolist()
    assert faiss.downcast_index(redrawn.ann).hnsw.efSearch == 64  # reloaded with its settings
