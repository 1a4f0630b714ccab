"""The launched app (REST API + mounted Gradio UI) driven through gradio_client, every public api_name."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import create_app
from retrieval.config import Settings
from tests.helpers import png_header_only
from tests.ui_fixtures import ServedApp, make_catalog, make_images

PUBLIC_ENDPOINTS = {
    "/select_collection", "/collections_overview", "/browse", "/random_sample", "/item_details",
    "/text_search", "/image_search", "/composed_search", "/composed_back", "/tag_image",
    "/explain", "/upload_collection", "/download_index", "/push_to_hub",
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, micro_model_dir):
    root = tmp_path_factory.mktemp("app-client")
    catalog = make_catalog(root, micro_model_dir)
    app = create_app(catalog, Settings(cache_dir=str(root / "cache")))
    with ServedApp(app) as url:
        yield url, catalog


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False)


def test_every_public_endpoint_is_known(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == PUBLIC_ENDPOINTS


def test_rest_api_and_ui_share_the_server(served):
    import httpx

    url, _ = served
    assert httpx.get(url + "api/health").json()["status"] == "ok"
    assert "Smart Retrieval" in httpx.get(url).text


def test_switching_collections_shows_status_and_first_page(client):
    status, gallery, items, info, page, *_ = client.predict("scenes", api_name="/select_collection")
    assert "Test scenes" in status and "9 items" in status
    assert len(gallery) == len(items) == 9 and page == 1 and "Page 1 of 1" in info
    status, gallery, *_ = client.predict("remote", api_name="/select_collection")
    assert "not available" in status and "not in the local cache" in status and gallery == []
    overview = client.predict(api_name="/collections_overview")
    assert "ready" in overview and "unavailable" in overview


def test_browse_sample_and_details(client):
    gallery, items, info, page = client.predict("scenes", 5, api_name="/browse")
    assert page == 1 and len(items) == 9  # clamped to the only page
    gallery, items, _ = client.predict("scenes", api_name="/random_sample")
    assert len({item["id"] for item in items}) == 9
    image, card, _, _ = client.predict("scenes", "green-circle", api_name="/item_details")
    assert Image.open(image).size == (48, 48) and "A green circle" in card and "Anna" in card


def test_text_search_serves_thumbnails_from_the_index_folder(served):
    url, catalog = served
    raw = Client(url, verbose=False, download_files=False)
    gallery, hits = raw.predict(
        "scenes", "a red circle", 4, -1, None, None, None, "", api_name="/text_search"
    )
    assert len(hits) == 4 and hits[0]["score"] >= hits[-1]["score"]
    thumbs = catalog.get("scenes").index.directory / "thumbs"
    assert all(Path(entry["image"]["path"]).parent == thumbs for entry in gallery)


def test_text_search_filters_and_errors(client):
    _, hits = client.predict(
        "scenes", "a shape", 9, -1, "Anna", None, None, "", api_name="/text_search"
    )
    assert len(hits) == 4
    with pytest.raises(AppError, match="empty"):
        client.predict("scenes", "  ", 5, -1, None, None, None, "", api_name="/text_search")
    with pytest.raises(AppError, match="not in the local cache"):
        client.predict("remote", "a dog", 5, -1, None, None, None, "", api_name="/text_search")


def test_image_search_by_upload_and_by_item(client, served, tmp_path):
    catalog = served[1]
    upload = tmp_path / "query.png"
    Image.open(catalog.get("scenes").index.image_path("blue-triangle")).save(upload)
    _, hits = client.predict(
        "scenes", handle_file(str(upload)), "", 3, -1, api_name="/image_search"
    )
    assert hits[0]["id"] == "blue-triangle"
    _, hits = client.predict("scenes", None, "blue-triangle", 3, -1, api_name="/image_search")
    assert "blue-triangle" not in {hit["id"] for hit in hits}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="broken.png: not an image file"):
        client.predict("scenes", handle_file(str(broken)), "", 3, -1, api_name="/image_search")
    for width in (9_000, 20_000):  # 81 Mpx: past the server's limit; 400 Mpx: past PIL's own
        huge = tmp_path / f"huge-{width}.png"
        huge.write_bytes(png_header_only(width, width))
        with pytest.raises(AppError, match=f"huge-{width}.png.*SR_MAX_IMAGE_PIXELS"):
            client.predict("scenes", handle_file(str(huge)), "", 3, -1, api_name="/image_search")


def test_composed_search_then_step_back(served):
    client = Client(served[0], verbose=False)  # a fresh session: its own refinement chain
    _, hits, crumbs = client.predict(
        "scenes", None, "red-circle", "make it green", "sum", 4, api_name="/composed_search"
    )
    assert len(hits) == 4 and "red-circle" not in {h["id"] for h in hits}
    assert "A red circle" in crumbs and "make it green" in crumbs
    _, _, crumbs = client.predict(
        "scenes", None, hits[0]["id"], "make it a square", "sum", 4, api_name="/composed_search"
    )
    assert crumbs.count("→") == 1
    image, item_id, text, method, _, hits_back, crumbs = client.predict(
        "scenes", api_name="/composed_back"
    )
    assert item_id == hits[0]["id"] and text == "make it a square" and method == "sum"
    assert [h["id"] for h in hits_back] == [h["id"] for h in hits]
    with pytest.raises(AppError, match="'combiner' is not available here"):
        client.predict(
            "scenes", None, "red-circle", "x", "combiner", 4, api_name="/composed_search"
        )


def test_tagging_and_explaining(client):
    label, tags = client.predict(
        "scenes", None, "red-square", "heritage", "single", 1, 0.1, api_name="/tag_image"
    )
    assert tags and label["label"] == tags[0]["tag"]
    overlay, note = client.predict(
        "scenes", None, "red-square", "a red square", "auto", 0.5, api_name="/explain"
    )
    assert Image.open(overlay).size == (48, 48) and "Similarity" in note


def test_uploaded_collection_is_private_to_its_session(served, tmp_path):
    url, catalog = served
    folder = make_images(tmp_path / "upload")
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in folder.iterdir():
            handle.write(file, file.name)
    owner = Client(url, verbose=False)
    message, choices = owner.predict(
        handle_file(str(archive)), None, "mine", "scenes", api_name="/upload_collection"
    )
    assert "Indexed **9** images" in message
    _, hits = owner.predict(
        "my:mine", "a red circle", 3, -1, None, None, None, "", api_name="/text_search"
    )
    assert len(hits) == 3
    zipped = owner.predict("my:mine", api_name="/download_index")
    assert "CURRENT" in zipfile.ZipFile(zipped).namelist()
    stranger = Client(url, verbose=False)
    with pytest.raises(AppError, match="another or an expired session"):
        stranger.predict(
            "my:mine", "a red circle", 3, -1, None, None, None, "", api_name="/text_search"
        )
    assert "my:mine" not in catalog.names()


def test_push_needs_a_token(client, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(AppError, match="token"):
        client.predict("scenes", "org/name", "", True, api_name="/push_to_hub")
