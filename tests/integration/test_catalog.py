import json
from dataclasses import replace

import pytest

from retrieval.catalog import Catalog, CollectionSpec, CollectionUnavailable
from retrieval.config import Settings
from retrieval.errors import NotFound
from retrieval.index import build_index
from tests.helpers import make_collection


@pytest.fixture
def catalog_file(tmp_path, micro_backbone):
    make_collection(tmp_path / "images")
    build_index(tmp_path / "images", tmp_path / "index", micro_backbone, progress=False)
    config = {
        "collections": [
            {"name": "local", "title": "Local", "index": "index", "examples": ["a red circle"]},
            {
                "name": "remote",
                "title": "Remote",
                "index": "hf-hub:museum/not-cached",
                "model": "ShapesCLIP-Micro",
            },
            {"name": "missing", "title": "Missing", "index": "nowhere/index"},
        ]
    }
    path = tmp_path / "collections.json"
    path.write_text(json.dumps(config))
    return path


def test_relative_paths_resolve_against_the_config_file(catalog_file, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path.parent)
    catalog = Catalog.from_file(catalog_file)
    local = catalog.get("local")
    assert len(local.index) == 8 and local.spec.examples == ["a red circle"]
    assert local.searcher.text("a red circle", k=2).hits
    assert catalog.get("local") is local  # loaded once, shared


def test_broken_collections_report_reasons_without_affecting_others(catalog_file):
    catalog = Catalog.from_file(catalog_file)
    assert "cannot be reached" in catalog.status("remote")
    assert "does not exist" in catalog.status("missing")
    assert catalog.status("local") is None
    with pytest.raises(CollectionUnavailable):
        catalog.get("remote")
    with pytest.raises(NotFound, match="available: local, remote, missing"):
        catalog.get("unknown")


def test_session_collections_can_be_added_and_removed(catalog_file):
    catalog = Catalog.from_file(catalog_file)
    local = catalog.get("local")
    spec = CollectionSpec(name="mine", title="Mine", index=str(local.index.directory))
    catalog.add(type(local)(spec, local.index, local.backbone, local.searcher))
    assert catalog.get("mine").index is local.index
    catalog.remove("mine")
    with pytest.raises(NotFound):
        catalog.get("mine")


def test_state_does_not_load(catalog_file):
    catalog = Catalog.from_file(catalog_file)
    assert catalog.state("local") == "not loaded"
    catalog.get("local")
    assert catalog.state("local") == "loaded"
    catalog.status("missing")
    assert "does not exist" in catalog.state("missing")


def test_a_collection_runs_on_its_own_runtime_unless_the_server_sets_one(catalog_file, tmp_path):
    config = json.loads(catalog_file.read_text())
    config["collections"][0]["runtime"] = "onnx-int8"
    catalog_file.write_text(json.dumps(config))
    settings = Settings(device="cpu", cache_dir=str(tmp_path / "cache"))
    local = Catalog.from_file(catalog_file, settings).get("local")
    assert local.backbone.runtime == "onnx-int8"
    assert local.searcher.similar("red-circle", k=1).hits  # a torch index, int8 queries
    assert (
        Catalog.from_file(catalog_file, replace(settings, runtime="torch"))
        .get("local")
        .backbone.runtime
        == "torch"
    )
    assert "SR_RUNTIME" in Catalog.from_file(
        catalog_file, replace(settings, runtime="fast")
    ).status("local")
    config["collections"][0]["runtime"] = "fast"
    catalog_file.write_text(json.dumps(config))
    reason = Catalog.from_file(catalog_file, settings).status("local")
    assert "\"runtime\" of collection 'local'" in reason and "onnx-int8" in reason
