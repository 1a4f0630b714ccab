import json

import pytest

from retrieval.catalog import Catalog, CollectionSpec, CollectionUnavailable
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
