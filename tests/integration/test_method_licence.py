"""Weights made elsewhere carry their licence to every place that offers the method: SEARLE's
released phi is CC BY-NC 4.0, so a museum must see "non-commercial" before it builds on it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from retrieval.catalog import Catalog
from retrieval.config import Settings
from tests.helpers import SEARLE_LICENCE, licensed_collections
from webapp.api import create_api
from webapp.ui.composed import licence_box


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("licensed")
    settings = Settings(cache_dir=str(folder / "cache"))
    return Catalog.from_file(licensed_collections(folder), settings), settings


def test_the_api_names_the_licence_of_the_method_that_has_one(catalog):
    api = TestClient(create_api(*catalog))
    info = api.get("/api/collections/licensed").json()
    assert info["composed_methods"] == ["combiner", "sum", "zero-shot"]
    assert info["method_licences"] == {"zero-shot": SEARLE_LICENCE}


def test_the_composed_tab_shows_it_only_for_that_method(catalog):
    collection = catalog[0].get("licensed")
    assert licence_box(collection, "zero-shot") == {
        "__type__": "update", "value": SEARLE_LICENCE, "visible": True
    }  # fmt: skip
    for method in ("combiner", "sum"):
        assert licence_box(collection, method)["visible"] is False


def test_the_shipped_collection_has_no_licence_notice(api):
    assert api.get("/api/collections/shapes").json()["method_licences"] == {}
