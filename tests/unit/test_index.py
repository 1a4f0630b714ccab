import json
import shutil

import numpy as np
import pytest
from PIL import Image

from retrieval.backbone import load_backbone, new_model, save_backbone
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.index import Index, build_index, update_index, write_version
from tests.helpers import make_collection


@pytest.fixture
def built(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = build_index(folder, tmp_path / "index", micro_backbone, progress=False)
    return folder, tmp_path / "index", report


def test_build_writes_a_complete_artifact(built, micro_backbone):
    folder, index_dir, report = built
    assert len(report.index) == 8
    assert [file for file, _ in report.skipped] == ["broken.jpg"]
    index = Index.load(index_dir, micro_backbone)
    assert index.manifest["dim"] == 64 and index.manifest["count"] == 8
    assert index.manifest["preprocessing"] == "standard" and index.manifest["normalized"] is True
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    assert index.thumb_path("red-circle").is_file()
    assert index.image_path("red-circle") == (folder / "round" / "red_circle.png").resolve()
    assert index.item("red-circle")["artist"] in {"Anna", "Bruno"}
    with pytest.raises(NotFound):
        index.item("nope")


def test_vectors_match_direct_encoding(built, micro_backbone):
    folder, index_dir, _ = built
    index = Index.load(index_dir)
    direct = micro_backbone.encode_images([folder / "round" / "red_circle.png"])[0]
    assert np.allclose(index.vectors[index.position("red-circle")], direct, atol=1e-5)


def test_mismatched_model_is_refused(built, tmp_path):
    _, index_dir, _ = built
    other, _, _ = new_model("ShapesCLIP-Tiny", device="cpu")
    wrong_dim = load_backbone(
        str(save_backbone(other, "ShapesCLIP-Tiny", tmp_path / "tiny")), device="cpu"
    )
    with pytest.raises(IndexMismatch, match="dimensions"):
        Index.load(index_dir, wrong_dim)
    same_arch, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    other_weights = load_backbone(
        str(save_backbone(same_arch, "ShapesCLIP-Micro", tmp_path / "m2")), device="cpu"
    )
    with pytest.raises(IndexMismatch, match="different weights"):
        Index.load(index_dir, other_weights)


def test_incremental_update_embeds_only_what_changed(built, micro_backbone):
    folder, index_dir, _ = built
    (folder / "round" / "red_circle.png").unlink()
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder / "angular" / "green_square.png")  # changed
    Image.new("RGB", (30, 60), (9, 9, 9)).save(folder / "new.png")
    before = Index.load(index_dir)
    kept = np.array(before.vectors[before.position("blue-circle")])
    report = update_index(index_dir, micro_backbone, progress=False)
    assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 6)
    after = Index.load(index_dir, micro_backbone)
    assert "red-circle" not in {item["id"] for item in after.items}
    assert np.array_equal(after.vectors[after.position("blue-circle")], kept)
    fresh = micro_backbone.encode_images([folder / "angular" / "green_square.png"])[0]
    assert np.allclose(after.vectors[after.position("green-square")], fresh, atol=1e-5)


def test_update_counts_what_the_new_version_holds_and_reports_every_skip(built, micro_backbone):
    """Two files corrupted, one deleted, one added: the counts add up to the new index's size and
    the corrupted files are named with their reason (they used to count as added and changed)."""
    folder, index_dir, first = built
    assert [record["file"] for record in first.as_dict()["skipped"]] == ["broken.jpg"]
    for name in ("round/red_circle.png", "angular/blue_square.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "round" / "blue_circle.png").unlink()
    Image.new("RGB", (30, 60), (9, 9, 9)).save(folder / "new.png")
    report = update_index(index_dir, micro_backbone, progress=False)
    counts = {k: v for k, v in report.as_dict().items() if k != "skipped"}
    assert counts == {"indexed": 6, "added": 1, "changed": 0, "removed": 3, "unchanged": 5}
    skipped = {record["file"]: record["reason"] for record in report.as_dict()["skipped"]}
    unreadable = {"broken.jpg", "round/red_circle.png", "angular/blue_square.png"}
    assert set(skipped) == unreadable | {"metadata.csv row 5"}  # the deleted file's row
    assert "matches no image" in skipped["metadata.csv row 5"]
    assert Index.load(index_dir).manifest["skipped"] == report.as_dict()["skipped"]


def test_ids_of_files_sharing_a_stem_survive_updates(tmp_path, micro_backbone):
    """vase.jpg and vase.webp are two items; deleting one leaves the other under its own id
    (it used to take over the bare id 'vase', silently pointing old links at another image)."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 20, 20)).save(folder / "vase.jpg")
    Image.new("RGB", (40, 40), (20, 20, 200)).save(folder / "vase.webp")
    Image.new("RGB", (40, 40), (20, 200, 20)).save(folder / "bowl.png")
    build_index(folder, tmp_path / "index", micro_backbone, progress=False)
    assert sorted(i["id"] for i in Index.load(tmp_path / "index").items) == [
        "bowl", "vase.jpg", "vase.webp"
    ]  # fmt: skip
    (folder / "vase.jpg").unlink()
    report = update_index(tmp_path / "index", micro_backbone, progress=False)
    assert sorted(i["id"] for i in report.index.items) == ["bowl", "vase.webp"]
    assert (report.removed, report.unchanged, report.added) == (1, 2, 0)


def test_a_folder_of_unreadable_images_names_them_not_the_server_path(tmp_path, micro_backbone):
    folder = tmp_path / "uploads" / "secret-server-path"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(BadInput) as error:
        build_index(folder, tmp_path / "index", micro_backbone, progress=False)
    assert "a.jpg" in str(error.value) and "b.png" in str(error.value)
    assert str(tmp_path) not in str(error.value)


def test_previous_version_survives_a_failed_write(built, monkeypatch):
    _, index_dir, _ = built
    before = Index.load(index_dir)
    import retrieval.index as module

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module.np, "save", explode)
    with pytest.raises(OSError):
        write_version(index_dir, before.manifest, before.items[:2], np.asarray(before.vectors[:2]))
    after = Index.load(index_dir)
    assert len(after) == len(before)


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_indexes_agree_with_exact(tmp_path, index_type):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    items = [{"id": f"i{n}", "file": f"{n}.png", "thumb": ""} for n in range(3000)]
    manifest = {
        "format": 1,
        "model_spec": "x",
        "dim": 32,
        "preprocessing": "standard",
        "index_type": "flat",
        "index_params": {},
    }
    exact = write_version(tmp_path / "flat", manifest, items, vectors)
    approx = write_version(
        tmp_path / index_type,
        {**manifest, "index_type": index_type, "index_params": {"nprobe": 8}},
        items,
        vectors,
    )
    queries = vectors[:50]
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall > 0.6
    assert approx.ann is not None and exact.ann is None
    assert (
        json.loads(
            (
                tmp_path
                / index_type
                / "versions"
                / (tmp_path / index_type / "CURRENT").read_text()
                / "manifest.json"
            ).read_text()
        )["index_type"]
        == index_type
    )


def test_empty_folder_and_unknown_type(tmp_path, micro_backbone):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no images"):
        build_index(tmp_path / "empty", tmp_path / "i", micro_backbone, progress=False)
    with pytest.raises(BadInput, match="unknown index type"):
        build_index(
            tmp_path / "empty", tmp_path / "i", micro_backbone, index_type="lsh", progress=False
        )


def test_copied_index_still_finds_model_and_images(built, tmp_path, micro_model_dir):
    folder, index_dir, _ = built
    tree = tmp_path / "copy"
    shutil.copytree(folder, tree / "images")
    shutil.copytree(micro_model_dir, tree / "model")
    backbone = load_backbone(str(tree / "model"), device="cpu")
    build_index(tree / "images", tree / "index", backbone, progress=False)
    moved = tmp_path / "moved"
    shutil.move(tree, moved)
    index = Index.load(moved / "index")
    assert index.model_spec() == str((moved / "model").resolve())
    assert index.image_path("red-circle").is_file()
