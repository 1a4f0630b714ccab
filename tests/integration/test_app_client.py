"""The launched app (REST API + mounted Gradio UI) driven through gradio_client and MCP.

The public endpoints are the typed ones (`webapp.ui.endpoints`), with defaults and errors that
gradio_client raises; the UI's own events stay callable by name (undocumented) and leave their
outputs unchanged when something is wrong, as the page does.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import create_app
from retrieval.config import Settings
from tests.helpers import png_header_only
from tests.ui_fixtures import ServedApp, make_catalog, make_images

PUBLIC_ENDPOINTS = {
    "/list_collections", "/text_search", "/image_search", "/composed_search", "/tag_image",
}  # fmt: skip
UNCHANGED = {"__type__": "update"}  # what a UI event answers for an output it left as it was


def image_file(output) -> str:
    """A gr.Image output's file, whether sent as a path or as an update with alt text."""
    return output if isinstance(output, str) else output["value"]


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
    text = endpoints["/text_search"]["parameters"]
    assert [p["parameter_name"] for p in text][:3] == ["query", "collection", "k"]
    assert all(p["parameter_has_default"] for p in text[1:])  # #15.10: only the query is needed


def test_the_mcp_server_lists_the_typed_tools(served):
    """AI assistants see the typed endpoints as documented tools, and nothing else."""
    tools = httpx.get(served[0] + "gradio_api/mcp/schema").json()
    by_name = {tool["name"]: tool for tool in tools}
    assert set(by_name) == {name.strip("/") for name in PUBLIC_ENDPOINTS}
    text_tool = by_name["text_search"]
    assert text_tool["description"].startswith("Find the images of a collection")
    properties = text_tool["inputSchema"]["properties"]
    assert properties["k"]["default"] == 12 and "how many results" in properties["k"]["description"]
    assert text_tool["inputSchema"]["required"] == ["query"]


def test_rest_api_and_ui_share_the_server(served):
    url, _ = served
    assert httpx.get(url + "api/health").json()["status"] == "ok"
    assert "Smart Retrieval" in httpx.get(url).text


def test_switching_collections_shows_status_and_first_page(client):
    status, gallery, items, info, page, *_ = client.predict("scenes", api_name="/select_collection")
    assert "Test scenes" in status and "9 items" in status
    assert len(gallery) == len(items) == 9 and page == 1 and "Page 1 of 1" in info
    status, gallery, *_ = client.predict("remote", api_name="/select_collection")
    assert "cannot be opened" in status and "kept on the Hugging Face Hub" in status
    assert gallery == []
    overview, _ = client.predict(api_name="/collections_overview")
    assert "ready" in overview and "kept on the Hugging Face Hub" in overview
    collections = {c["name"]: c for c in client.predict(api_name="/list_collections")}
    assert collections["scenes"]["ready"] and not collections["remote"]["ready"]
    assert "not in the local cache" in collections["remote"]["reason"]


def test_browse_sample_and_details(client):
    gallery, items, info, page = client.predict("scenes", 5, api_name="/browse")
    assert page == 1 and len(items) == 9  # clamped to the only page
    gallery, items, _ = client.predict("scenes", api_name="/random_sample")
    assert len({item["id"] for item in items}) == 9
    image, card, _, _ = client.predict("scenes", "green-circle", api_name="/item_details")
    assert Image.open(image_file(image)).size == (48, 48)
    assert "A green circle" in card and "Anna" in card
    assert image["alt_text"] == "A green circle"  # screen readers hear what the image is


def test_ui_text_search_serves_thumbnails_from_the_index_folder(served):
    url, catalog = served
    raw = Client(url, verbose=False, download_files=False)
    gallery, hits = raw.predict(
        "scenes", "a red circle", 4, -1, None, None, None, "", api_name="/ui_text_search"
    )
    assert len(hits) == 4 and hits[0]["score"] >= hits[-1]["score"]
    thumbs = catalog.get("scenes").index.directory / "thumbs"
    assert all(Path(entry["image"]["path"]).parent == thumbs for entry in gallery)


def test_text_search_needs_only_a_query(client):
    """#15.10: /text_search needed all 8 arguments; now the query alone searches the default
    collection, and each hit links to its images."""
    hits = client.predict("a red circle", api_name="/text_search")
    assert len(hits) == 9 and [h["score"] for h in hits] == sorted(
        (h["score"] for h in hits), reverse=True
    )
    assert httpx.get(hits[0]["thumb_url"]).headers["content-type"].startswith("image/")
    anna = client.predict("a shape", k=9, artist="Anna", api_name="/text_search")
    assert len(anna) == 4
    with pytest.raises(AppError, match="empty"):
        client.predict("  ", api_name="/text_search")
    with pytest.raises(AppError, match="not in the local cache"):
        client.predict("a dog", collection="remote", api_name="/text_search")


def test_ui_events_leave_their_outputs_unchanged_on_errors(client):
    """The page's own events answer "unchanged" for a bad input (the page shows a message and
    keeps its results) instead of failing."""
    answer = client.predict("scenes", "  ", 5, -1, None, None, None, "", api_name="/ui_text_search")
    assert answer == (UNCHANGED, UNCHANGED)


def test_image_search_by_upload_and_by_item(client, served, tmp_path):
    catalog = served[1]
    upload = tmp_path / "query.png"
    Image.open(catalog.get("scenes").index.image_path("blue-triangle")).save(upload)
    hits = client.predict(handle_file(str(upload)), k=3, api_name="/image_search")
    assert hits[0]["id"] == "blue-triangle"
    hits = client.predict(item_id="blue-triangle", k=3, api_name="/image_search")
    assert "blue-triangle" not in {hit["id"] for hit in hits}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="broken.png: not an image file"):
        client.predict(handle_file(str(broken)), api_name="/image_search")
    for width in (9_000, 20_000):  # 81 Mpx: past the server's limit; 400 Mpx: past PIL's own
        huge = tmp_path / f"huge-{width}.png"
        huge.write_bytes(png_header_only(width, width))
        with pytest.raises(AppError, match=f"huge-{width}.png.*SR_MAX_IMAGE_PIXELS"):
            client.predict(handle_file(str(huge)), api_name="/image_search")


def test_composed_search_typed_and_in_the_ui_with_step_back(served):
    client = Client(served[0], verbose=False)  # a fresh session: its own refinement chain
    hits = client.predict("make it green", item_id="red-circle", k=4, api_name="/composed_search")
    assert len(hits) == 4 and "red-circle" not in {h["id"] for h in hits}
    with pytest.raises(AppError, match="'combiner' is not available here"):
        client.predict("x", item_id="red-circle", method="combiner", api_name="/composed_search")
    image, _, ui_hits, crumbs = client.predict(
        "scenes", None, "red-circle", "make it green", "sum", 4, api_name="/ui_composed_search"
    )
    assert [h["id"] for h in ui_hits] == [h["id"] for h in hits]
    assert [label for label, _ in crumbs["choices"]] == ["1. A red circle + “make it green” (sum)"]
    assert Image.open(image).size == (48, 48)  # the typed id is shown as the reference
    client.predict(
        "scenes", None, hits[0]["id"], "make it a square", "sum", 4, api_name="/ui_composed_search"
    )
    image, item_id, text, method, _, hits_back, _ = client.predict(
        "scenes", api_name="/composed_back"
    )
    assert item_id == hits[0]["id"] and text == "make it a square" and method == "sum"
    assert [h["id"] for h in hits_back] == [h["id"] for h in hits]


def test_tagging_and_explaining(client):
    tags = client.predict(item_id="red-square", top_k=1, api_name="/tag_image")
    assert tags and tags[0]["score"] > 0
    _, label, ui_tags = client.predict(
        "scenes", None, "red-square", "heritage", "single", 1, 0.1, api_name="/ui_tag_image"
    )
    assert label["label"] == ui_tags[0]["tag"] == tags[0]["tag"]
    _, overlay, note = client.predict(
        "scenes", None, "red-square", "a red square", "auto", 0.5, api_name="/ui_explain"
    )
    assert Image.open(image_file(overlay)).size == (48, 48) and "Similarity" in note


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
        "my:mine", "a red circle", 3, -1, None, None, None, "", api_name="/ui_text_search"
    )
    assert len(hits) == 3
    zipped = owner.predict("my:mine", api_name="/download_index")
    assert "CURRENT" in zipfile.ZipFile(zipped).namelist()
    stranger = Client(url, verbose=False)
    answer = stranger.predict(
        "my:mine", "a red circle", 3, -1, None, None, None, "", api_name="/ui_text_search"
    )
    assert answer == (UNCHANGED, UNCHANGED)  # the stranger sees nothing of it
    with pytest.raises(AppError, match="no collection 'my:mine'"):
        stranger.predict("a red circle", collection="my:mine", api_name="/text_search")
    assert "my:mine" not in catalog.names()
