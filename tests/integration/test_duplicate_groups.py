"""Near-duplicate groups in a collection, end to end: a folder with an image, four copies of it
(re-encoded, turned, cropped, recoloured), the same scene drawn again and other scenes, indexed
with the shipped Shapes CLIP; then found through the library, the CLI, the REST API and the UI's
functions, and a cataloguer's "not duplicates" kept across updates."""

from __future__ import annotations

import csv

import pytest
from fastapi.testclient import TestClient

from retrieval import duplicates as duplicates_module
from retrieval.backbone import load_backbone
from retrieval.catalog import Catalog, CollectionSpec
from retrieval.cli.main import main
from retrieval.config import SHAPES_MODEL_DIR, Settings
from retrieval.duplicates import (
    CALIBRATED,
    DECISIONS_FILE,
    collection_duplicates,
    mark_not_duplicates,
)
from retrieval.errors import BadInput, NotFound
from retrieval.index import Index, build_index, update_index
from retrieval.shapes.world import ShapeObject, make_scene, render
from tests.helpers import copies_of
from webapp.api import create_api
from webapp.ui import duplicates as duplicates_tab

SCENE = make_scene(
    [
        ShapeObject("left", "triangle", "blue", "large"),
        ShapeObject("right", "square", "green", "large"),
    ]
)
OTHERS = [
    make_scene([ShapeObject("centre", "circle", "yellow", "large")]),
    make_scene(
        [
            ShapeObject("top", "star", "red", "small"),
            ShapeObject("bottom", "circle", "pink", "large"),
        ]
    ),
]
COPIES = {"original", "jpeg", "rotated", "cropped", "recoloured"}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(str(SHAPES_MODEL_DIR), device="cpu")


@pytest.fixture
def index_dir(tmp_path, backbone):
    folder = tmp_path / "images"
    folder.mkdir()
    original = render(SCENE, 11)[0]
    original.save(folder / "original.png")
    for name, copy in copies_of(original).items():
        copy.save(folder / f"{name}.png")
    render(SCENE, 12)[0].save(folder / "redrawn.png")  # same description, new pixels
    for number, scene in enumerate(OTHERS):
        render(scene, 20 + number)[0].save(folder / f"other-{number}.png")
    build_index(folder, tmp_path / "index", backbone, progress=False)
    return tmp_path / "index"


def test_copies_form_one_group_and_the_redrawn_scene_stays_out(index_dir, monkeypatch):
    index = Index.load(index_dir)
    groups = collection_duplicates(index)
    assert [set(group["ids"]) for group in groups] == [COPIES]
    assert CALIBRATED.min_copy_score <= groups[0]["score"] <= 1
    assert (index.version_dir() / duplicates_module.SIGNATURES_FILE).is_file()

    def no_recompute(image):
        raise AssertionError("signatures are read back, not computed again")

    monkeypatch.setattr(duplicates_module, "image_signature", no_recompute)
    assert collection_duplicates(index) == groups


def test_not_duplicates_is_kept_across_updates_and_checks_its_ids(index_dir, backbone):
    index = Index.load(index_dir)
    mark_not_duplicates(index, ["original", "jpeg", "rotated", "cropped", "recoloured"])
    assert collection_duplicates(index) == []
    report = update_index(index_dir, backbone, progress=False)
    assert (index_dir / DECISIONS_FILE).is_file() and collection_duplicates(report.index) == []
    with pytest.raises(NotFound, match="no item 'nope'"):
        mark_not_duplicates(index, ["original", "nope"])
    with pytest.raises(BadInput, match="at least two items"):
        mark_not_duplicates(index, ["original", "original"])


def test_the_cli_lists_groups_writes_csv_and_records_decisions(index_dir, tmp_path, capsys):
    out = tmp_path / "groups.csv"
    assert main(["duplicates", str(index_dir), "--out", str(out)]) == 0
    assert "1 groups of copies (5 items) among 8 items" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert {row["id"] for row in rows} == COPIES and {row["group"] for row in rows} == {"1"}
    marked = "original,jpeg,rotated,cropped,recoloured"
    assert main(["duplicates", str(index_dir), "--not-duplicates", marked]) == 0
    assert "0 groups of copies (0 items) among 8 items" in capsys.readouterr().out
    assert main(["duplicates", str(index_dir), "--not-duplicates", "original,ghost"]) == 1


@pytest.fixture
def api(index_dir, tmp_path):
    settings = Settings(cache_dir=str(tmp_path / "cache"), api_key="secret")
    spec = CollectionSpec(name="copies", title="Copies", index=str(index_dir))
    return TestClient(create_api(Catalog([spec], settings), settings))


def test_the_api_lists_groups_and_needs_the_key_to_record_a_decision(api):
    body = api.get("/api/collections/copies/duplicates").json()
    assert [{item["id"] for item in group["items"]} for group in body["groups"]] == [COPIES]
    assert body["groups"][0]["items"][0]["thumb_url"].endswith("size=thumb")
    strict = api.get("/api/collections/copies/duplicates", params={"min_copy_score": 1.0})
    assert strict.json()["groups"] == []
    ids = {"ids": ["original", "jpeg", "rotated", "cropped", "recoloured"]}
    refused = api.post("/api/collections/copies/duplicates/not-duplicates", json=ids)
    assert refused.status_code == 401
    saved = api.post(
        "/api/collections/copies/duplicates/not-duplicates",
        json=ids,
        headers={"X-API-Key": "secret"},
    )
    assert saved.status_code == 200 and saved.json()["not_duplicates"] == [sorted(ids["ids"])]
    assert api.get("/api/collections/copies/duplicates").json()["groups"] == []
    unknown = api.post(
        "/api/collections/copies/duplicates/not-duplicates",
        json={"ids": ["original", "ghost"]},
        headers={"X-API-Key": "secret"},
    )
    assert unknown.status_code == 404 and "ghost" in unknown.json()["message"]


def test_the_tab_shows_groups_and_keeps_a_shared_collections_decision_in_the_session(
    index_dir, tmp_path
):
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    collection = Catalog(
        [CollectionSpec(name="copies", title="Copies", index=str(index_dir))], settings
    ).get("copies")
    found = duplicates_tab.find_groups(collection, CALIBRATED.min_copy_score)
    gallery, hits, summary, choices = duplicates_tab.shown_groups(
        collection, found, CALIBRATED.min_copy_score
    )
    assert "**1 groups of copies** (5 items) among 8 items" in summary
    assert len(gallery) == 5 and all(caption.startswith("Group 1 · ") for _, caption in gallery)
    assert {hit["id"] for hit in hits} == COPIES
    session_only = [found[0]["ids"]]
    assert duplicates_tab.find_groups(collection, CALIBRATED.min_copy_score, session_only) == []
    assert not (index_dir / DECISIONS_FILE).exists()  # a shared index is not written to
    assert (
        "No copies found among 8 items"
        in duplicates_tab.shown_groups(collection, [], CALIBRATED.min_copy_score)[2]
    )
