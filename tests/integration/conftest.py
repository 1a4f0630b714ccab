"""The shipped Shapes collection as the app serves it (trained ShapesCLIP-Tiny on ONNX int8, the
trained Combiner), for tests that check what a person would: relevance, not only counts.
Test files that need another collection define their own `settings`, `shapes` or `api`."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from retrieval.catalog import Catalog
from retrieval.config import Settings
from webapp.api import create_api


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(cache_dir=str(tmp_path_factory.mktemp("shipped-cache")))


@pytest.fixture(scope="module")
def shapes(settings):
    return Catalog.from_file(settings.collections_file, settings).get("shapes")


@pytest.fixture(scope="module")
def api(settings):
    catalog = Catalog.from_file(settings.collections_file, settings)
    return TestClient(create_api(catalog, settings))
