import json

import pytest

from retrieval.collection import read_metadata, safe_id, scan_folder
from retrieval.errors import BadInput, NotFound
from tests.helpers import make_collection


def test_scan_joins_metadata_and_keeps_extra_columns(tmp_path):
    make_collection(tmp_path)
    items, skipped = scan_folder(tmp_path)
    assert len(items) == 8 and skipped == []
    red = next(item for item in items if item.id == "red-circle")
    assert red.meta["artist"] in {"Anna", "Bruno"}
    assert red.meta["museum_room"].startswith("room")
    assert red.path == tmp_path / "round" / "red_circle.png"


def test_scan_without_metadata_uses_relative_paths_as_ids(tmp_path):
    make_collection(tmp_path, with_metadata=False)
    (tmp_path / "notes.txt").write_text("not an image")
    items, _ = scan_folder(tmp_path)
    assert sorted(item.id for item in items)[0] == "angular_blue_square"
    assert all(item.meta["title"] for item in items)


def test_jsonl_metadata_and_duplicate_ids(tmp_path):
    make_collection(tmp_path, with_metadata=False)
    rows = [
        {"file": "round/red_circle.png", "id": "same", "title": "One"},
        {"file": "round/blue_circle.png", "id": "same", "title": "Two"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items, skipped = scan_folder(tmp_path)
    assert [item.id for item in items].count("same") == 1
    assert any("already used by round/" in reason for _, reason in skipped)


def test_bad_metadata_and_missing_folder(tmp_path):
    (tmp_path / "meta.jsonl").write_text("[1, 2]\n")
    with pytest.raises(BadInput):
        read_metadata(tmp_path / "meta.jsonl")
    with pytest.raises(NotFound):
        scan_folder(tmp_path / "nope")


def test_safe_id_removes_traversal():
    assert "/" not in safe_id("../../etc/passwd") and ".." not in safe_id("../../etc/passwd")


def test_files_that_share_a_stem_all_get_ids_and_unmatched_rows_are_reported(tmp_path):
    make_collection(tmp_path, with_metadata=False)
    same = tmp_path / "round" / "red_circle"
    (tmp_path / "round" / "red_circle.png").rename(same.with_suffix(".jpg"))
    make_collection(tmp_path / "copy", with_metadata=False)
    (tmp_path / "copy" / "round" / "red_circle.png").rename(same.with_suffix(".png"))
    (tmp_path / "metadata.csv").write_text("file,title\nphotos/round/red_circle.png,Lost\n")
    items, skipped = scan_folder(tmp_path)
    ids = {item.id for item in items}
    assert {"round_red_circle.jpg", "round_red_circle.png"} <= ids  # neither is dropped
    assert len(ids) == len(items) == 16
    assert skipped == [
        ("metadata.csv row 1", "matches no image (file 'photos/round/red_circle.png', id None)")
    ]
    known = {"round/red_circle.jpg": "round_red_circle"}  # the id it had before the .png came
    again, _ = scan_folder(tmp_path, known_ids=known)
    assert "round_red_circle" in {item.id for item in again}
