"""Per-query ANN effort over the REST API: ef_search / nprobe reach the search, bad values are
refused with a message naming the parameter, and a flat index says it ignored them."""

import pytest
from fastapi.testclient import TestClient

from retrieval.catalog import Catalog, CollectionSpec
from retrieval.config import Settings
from retrieval.index import build_index
from tests.helpers import make_collection
from webapp.api import create_api


@pytest.fixture(scope="module")
def client(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("ann-api")
    folder = make_collection(root / "images")
    specs = []
    for index_type in ("hnsw", "flat"):
        build_index(folder, root / index_type, micro_backbone, index_type, progress=False)
        specs.append(
            CollectionSpec(name=index_type, title=index_type, index=str(root / index_type))
        )
    return TestClient(create_api(Catalog(specs), Settings(cache_dir=str(root / "cache"))))


def test_ef_search_is_taken_per_query(client):
    answer = client.get("/api/collections/hnsw/search/text", params={"q": "red", "ef_search": 16})
    assert answer.status_code == 200 and answer.json()["hits"] and answer.json()["notes"] == []
    posted = client.post(
        "/api/collections/hnsw/search/image?ef_search=16", data={"item_id": "red-circle"}
    )
    assert posted.status_code == 200 and posted.json()["hits"]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "5000"])
@pytest.mark.parametrize("name", ["ef_search", "nprobe"])
def test_bad_effort_is_refused_naming_the_parameter(client, name, value):
    answer = client.get("/api/collections/hnsw/search/text", params={"q": "red", name: value})
    assert answer.status_code in (400, 422)
    assert answer.json()["message"].startswith(f"{name}:"), answer.json()


def test_a_flat_index_notes_that_it_ignored_ef_search(client):
    answer = client.get("/api/collections/flat/search/text", params={"q": "red", "ef_search": 8})
    assert answer.status_code == 200
    assert any("ef_search was ignored" in note for note in answer.json()["notes"])
