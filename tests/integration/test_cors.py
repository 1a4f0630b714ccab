"""Cross-origin access to /api in the full app (REST API + Gradio UI mounted together): only the
origins in SR_CORS_ORIGINS, although the UI framework brings its own, permissive CORS handling."""

import pytest
from fastapi.testclient import TestClient

import app
from retrieval.catalog import Catalog
from retrieval.config import Settings

PREFLIGHT = {
    "Access-Control-Request-Method": "DELETE",
    "Access-Control-Request-Headers": "X-API-Key",
}


def full_app(tmp_path, origins=()) -> TestClient:
    settings = Settings(cors_origins=origins, cache_dir=str(tmp_path))
    return TestClient(app.create_app(Catalog([], settings), settings))


def cors_headers(response) -> dict:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.mark.parametrize("origins", [(), ("https://museum.example",)])
def test_a_foreign_origin_gets_no_cross_origin_access(tmp_path, origins):
    client = full_app(tmp_path, origins)
    preflight = client.options(
        "/api/collections/mine", headers={"Origin": "https://evil.example", **PREFLIGHT}
    )
    assert preflight.status_code == 403 and not cors_headers(preflight)
    assert "SR_CORS_ORIGINS" in preflight.json()["message"]
    read = client.get("/api/collections", headers={"Origin": "https://evil.example"})
    assert read.status_code == 200 and not cors_headers(read)


def test_a_listed_origin_may_call_the_api_and_only_the_api(tmp_path):
    client = full_app(tmp_path, ("https://museum.example",))
    preflight = client.options(
        "/api/collections/mine", headers={"Origin": "https://museum.example", **PREFLIGHT}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://museum.example"
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers
    read = client.get("/api/collections", headers={"Origin": "https://museum.example"})
    assert read.headers["access-control-allow-origin"] == "https://museum.example"
    assert client.get("/", headers={"Origin": "https://evil.example"}).status_code == 200
