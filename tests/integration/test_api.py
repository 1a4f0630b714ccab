"""The REST API over a small generated collection: search, items, limits, auth, uploads, CORS."""

import io
import threading
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.catalog import Catalog, CollectionSpec
from retrieval.config import Settings
from retrieval.index import build_index
from tests.helpers import draw_scene, make_collection
from webapp.api import create_api

KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("api")
    folder = make_collection(root / "images")
    build_index(folder, root / "index", micro_backbone, progress=False)
    return root


def demo_catalog(root: Path) -> Catalog:
    spec = CollectionSpec(
        name="demo", title="Demo", index=str(root / "index"), vocabulary="shapes",
        examples=["a red circle"],
    )  # fmt: skip
    return Catalog([spec])


def client_for(root: Path, tmp_path: Path, **settings) -> TestClient:
    options = {"cache_dir": str(tmp_path / "cache"), **settings}
    return TestClient(create_api(demo_catalog(root), Settings(**options)))


@pytest.fixture
def client(demo_index, tmp_path):
    return client_for(demo_index, tmp_path, api_key=KEY)


def png(colour="red", shape="circle", size=48) -> bytes:
    buffer = io.BytesIO()
    draw_scene(colour, shape, size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status: int, words: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"} and words in body["message"], body


# -- reading -------------------------------------------------------------------------------------
def test_collections_items_and_images(client):
    listing = client.get("/api/collections").json()["collections"]
    assert [c["name"] for c in listing] == ["demo"] and listing[0]["examples"] == ["a red circle"]
    info = client.get("/api/collections/demo").json()
    assert info["count"] == 8 and info["composed_methods"] == ["sum"] and not info["uploaded"]
    assert info["runtime"] == "torch"
    item = client.get("/api/collections/demo/items/red-circle").json()
    assert item["item"]["artist"] == "Bruno" and "fingerprint" not in item["item"]
    thumb = client.get(item["thumb_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    full = client.get(item["image_url"])
    assert full.headers["content-type"] == "image/png" and full.content == png_file(client)
    page = client.get("/api/collections/demo/items", params={"offset": 6, "limit": 5}).json()
    assert page["total"] == 8 and len(page["items"]) == 2


def png_file(client) -> bytes:
    return Path(client.app.state.catalog.get("demo").index.image_path("red-circle")).read_bytes()


def test_text_search_pages_filters_and_truncation_note(client):
    url = "/api/collections/demo/search/text"
    first = client.get(url, params={"q": "a red circle", "k": 8}).json()
    assert first["notes"] == [] and [h["rank"] for h in first["hits"]] == list(range(1, 9))
    scores = [h["score"] for h in first["hits"]]
    assert scores == sorted(scores, reverse=True)
    second = client.get(url, params={"q": "a red circle", "k": 3, "offset": 3}).json()
    assert [h["id"] for h in second["hits"]] == [h["id"] for h in first["hits"][3:6]]
    anna = client.get(url, params={"q": "a red circle", "artist": "anna", "k": 8}).json()
    assert len(anna["hits"]) == 4 and {h["item"]["artist"] for h in anna["hits"]} == {"Anna"}
    dated = client.get(url, params={"q": "x", "date_from": 1600, "date_to": 1700}).json()
    assert sorted(int(h["item"]["date"][3:]) for h in dated["hits"]) == [1600, 1650, 1700]
    cutoff = scores[2]
    above = client.get(url, params={"q": "a red circle", "min_score": cutoff}).json()
    assert len(above["hits"]) == 3
    long_text = client.get(url, params={"q": "a red circle " * 60}).json()
    assert long_text["hits"] and "truncated" in long_text["notes"][0]


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"q": "   "}, 400, "empty"),
        ({"q": ""}, 422, "q:"),
        ({}, 422, "q:"),
        ({"q": "x", "k": 0}, 422, "k:"),
        ({"q": "x", "k": 10_000}, 422, "k:"),
        ({"q": "x", "offset": -1}, 422, "offset"),
        ({"q": "x", "min_score": 2}, 422, "min_score"),
        ({"q": "x" * 2001}, 422, "2000"),
        ({"q": "x", "date_from": 1800, "date_to": 1700}, 400, "after"),
    ],
)
def test_bad_text_queries_get_actionable_errors(client, params, status, words):
    assert_error(client.get("/api/collections/demo/search/text", params=params), status, words)


def test_unknown_collection_item_and_traversal_attempts(client):
    assert_error(client.get("/api/collections/nope"), 404, "available: demo")
    assert_error(client.get("/api/collections/demo/items/nope"), 404, "no item")
    for item_id in ("..", "app.py", "conftest.py", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        response = client.get(f"/api/collections/demo/items/{item_id}/image?size=full")
        assert response.status_code in (404, 422), (item_id, response.status_code)
        assert response.headers["content-type"] == "application/json"
    # an item id that names a server file is still only an item id
    response = client.post(
        "/api/collections/demo/search/composed", data={"item_id": "app.py", "text": "blue"}
    )
    assert_error(response, 404, "no item")
    assert_error(client.get("/api/collections/..%2Fetc/items/x"), 404, "no API endpoint")


def test_image_search_by_upload_and_by_item(client):
    url = "/api/collections/demo/search/image"
    by_file = client.post(url, files={"file": ("q.png", png_file(client), "image/png")}).json()
    assert by_file["hits"][0]["id"] == "red-circle" and by_file["hits"][0]["score"] > 0.99
    by_item = client.post(url, data={"item_id": "red-circle"}, params={"k": 7}).json()
    assert len(by_item["hits"]) == 7 and "red-circle" not in {h["id"] for h in by_item["hits"]}
    assert_error(
        client.post(url, files={"file": ("q.png", b"GIF89a-broken", "image/gif")}), 400, "image"
    )
    assert_error(
        client.post(url, files={"file": ("q.txt", b"hello", "text/plain")}), 400, "not an image"
    )
    assert_error(client.post(url, data={"item_id": "nope"}), 404, "no item")
    two = [
        ("file", ("a.png", png_file(client), "image/png")),
        ("file", ("b.png", png_file(client), "image/png")),
    ]
    assert_error(client.post(url, files=two), 400, "not 2")  # one of them used to be ignored
    tags = "/api/collections/demo/tags"
    assert_error(client.post(tags, files=two), 400, "send one image")
    assert_error(client.post(url), 400, "exactly one")
    both = client.post(
        url, data={"item_id": "red-circle"}, files={"file": ("q.png", png(), "image/png")}
    )
    assert_error(both, 400, "exactly one")


def test_odd_uploads_are_decoded(client):
    """A CMYK JPEG and an animated GIF of an item are read as that item: it ranks first."""
    url = "/api/collections/demo/search/image"
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(png())).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    frames = [draw_scene("red", "circle"), draw_scene("blue", "square")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    for data in (cmyk.getvalue(), gif.getvalue()):
        found = client.post(url, files={"file": ("x", data, "image/jpeg")})
        assert found.status_code == 200 and found.json()["hits"][0]["id"] == "red-circle"


def test_composed_search(client):
    url = "/api/collections/demo/search/composed"
    result = client.post(url, data={"item_id": "red-circle", "text": "make it blue"}).json()
    assert result["query"] == {"type": "composed", "text": "make it blue", "method": "sum"}
    assert len(result["hits"]) == 7 and "red-circle" not in {h["id"] for h in result["hits"]}
    uploaded = client.post(
        url, data={"text": "blue"}, files={"file": ("r.png", png(), "image/png")}
    )
    assert uploaded.status_code == 200 and len(uploaded.json()["hits"]) == 8
    assert_error(
        client.post(url, data={"item_id": "red-circle", "text": "x", "method": "magic"}), 400, "sum"
    )
    assert_error(client.post(url, data={"item_id": "red-circle", "text": "  "}), 400, "empty")


def test_tags_and_explain(client):
    tags = client.post("/api/collections/demo/tags", data={"item_id": "red-circle"}).json()
    assert tags["vocabulary"] == "shapes" and {t["group"] for t in tags["tags"]} >= {
        "colour",
        "shape",
    }
    custom = client.post(
        "/api/collections/demo/tags", params={"mode": "single", "top_k": 2},
        files={"file": ("a.png", png(), "image/png")}, data={"terms": "red, blue\ngreen"},
    ).json()  # fmt: skip
    assert len(custom["tags"]) == 2 and {t["tag"] for t in custom["tags"]} <= {
        "red",
        "blue",
        "green",
    }
    unknown = client.post(
        "/api/collections/demo/tags",
        params={"vocabulary": "../../etc/passwd"},
        data={"item_id": "red-circle"},
    )
    assert_error(unknown, 404, "choose one of")
    overlay = client.post(
        "/api/collections/demo/explain", data={"item_id": "red-circle", "query": "red"}
    )
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (48, 48)
    raw = client.post(
        "/api/collections/demo/explain", params={"format": "json"},
        files={"file": ("a.png", png(size=40), "image/png")}, data={"query": "a red circle"},
    ).json()  # fmt: skip
    assert (raw["width"], raw["height"]) == (40, 40) and len(raw["heatmap"]) == 40
    assert all(0.0 <= v <= 1.0 for row in raw["heatmap"] for v in row)


# -- limits --------------------------------------------------------------------------------------
def test_oversized_bodies_are_refused_by_length_and_while_streaming(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path, max_image_mb=1)
    url = "/api/collections/demo/search/image"
    big = client.post(url, files={"file": ("big.png", b"\0" * (2 * 1024 * 1024), "image/png")})
    assert_error(big, 413, "larger than")
    sent = []

    def chunks():  # no Content-Length: the cap must hold while the body streams in
        for _ in range(64):
            sent.append(1)
            yield b"\0" * (64 * 1024)

    streamed = client.post(
        url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_error(streamed, 413, "larger than")
    lying = client.post(url, content=b"x", headers={"content-length": "abc"})
    assert lying.status_code in (400, 413)


# -- writing -------------------------------------------------------------------------------------
def zipped_collection(tmp_path: Path) -> bytes:
    folder = make_collection(tmp_path / "zip-src")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.rglob("*"):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_writes_are_disabled_without_a_configured_key(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path, api_key="")
    response = client.post(
        "/api/collections",
        params={"name": "x"},
        files={"file": ("a.zip", b"PK", "application/zip")},
    )
    assert_error(response, 403, "SR_API_KEY")
    assert_error(client.delete("/api/collections/demo"), 403, "SR_API_KEY")


def test_upload_search_restart_and_delete_with_the_key(client, demo_index, tmp_path):
    data = zipped_collection(tmp_path)
    upload = {"file": ("museum.zip", data, "application/zip")}
    params = {"name": "museum", "title": "Our museum"}
    assert_error(client.post("/api/collections", params=params, files=upload), 401, "X-API-Key")
    wrong = client.post(
        "/api/collections", params=params, files=upload, headers={"X-API-Key": "nope"}
    )
    assert_error(wrong, 401, "X-API-Key")
    headers = {"X-API-Key": KEY}
    created = client.post("/api/collections", params=params, files=upload, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["count"] == 8 and created.json()["uploaded"] is True
    assert created.json()["vocabulary"] == "shapes"  # inherited from the model's collection
    assert "museum" in [c["name"] for c in client.get("/api/collections").json()["collections"]]
    hits = client.get("/api/collections/museum/search/text", params={"q": "blue"}).json()["hits"]
    assert len(hits) == 8
    again = client.post("/api/collections", params=params, files=upload, headers=headers)
    assert_error(again, 409, "already exists")
    restarted = client_for(demo_index, tmp_path, api_key=KEY)  # same cache folder, new process
    assert restarted.get("/api/collections/museum").json()["count"] == 8
    bad = client.post(
        "/api/collections", params={"name": "evil"}, headers=headers,
        files={"file": ("e.zip", make_evil_zip(), "application/zip")},
    )  # fmt: skip
    assert_error(bad, 400, "leaving its folder")
    assert_error(
        client.post("/api/collections", params={"name": "Bad Name!"}, headers=headers), 422, "name"
    )
    assert_error(
        client.delete("/api/collections/demo", headers=headers), 409, "ships with the server"
    )
    assert client.delete("/api/collections/museum", headers=headers).json() == {"deleted": "museum"}
    assert_error(client.get("/api/collections/museum"), 404, "no collection")
    assert not (tmp_path / "cache" / "uploads" / "museum").exists()


def test_an_upload_reports_every_file_it_left_out(client):
    """Same-stem files both become items; a corrupt file and a CSV row naming no image are listed
    in the response with their reason (they used to vanish: "count 61" for a zip of 75)."""

    def encoded(colour, shape, fmt):
        buffer = io.BytesIO()
        draw_scene(colour, shape).save(buffer, format=fmt)
        return buffer.getvalue()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/vase.jpg", encoded("red", "circle", "JPEG"))
        archive.writestr("photos/vase.webp", encoded("blue", "square", "WEBP"))
        archive.writestr("photos/broken.png", b"\x89PNG\r\n\x1a\n cut short")
        archive.writestr(
            "photos/metadata.csv", "file,title\nvase.jpg,Red vase\nphotos/gone.png,Lost\n"
        )
    created = client.post(
        "/api/collections", params={"name": "reported"}, headers={"X-API-Key": KEY},
        files={"file": ("photos.zip", buffer.getvalue(), "application/zip")},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["count"] == 2
    ids = [item["id"] for item in client.get("/api/collections/reported/items").json()["items"]]
    assert sorted(ids) == ["vase.jpg", "vase.webp"]
    reasons = {record["file"]: record["reason"] for record in body["skipped"]}
    assert set(reasons) == {"broken.png", "metadata.csv row 2"}
    assert "gone.png" in reasons["metadata.csv row 2"]
    assert client.get("/api/collections/reported").json()["skipped"] == body["skipped"]


def make_evil_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", png())
        archive.writestr("../../outside.png", png())
    return buffer.getvalue()


# -- service ---------------------------------------------------------------------------------
def test_cors_only_for_configured_origins(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path, cors_origins=("https://museum.example",))
    preflight = {"Access-Control-Request-Method": "GET"}
    allowed = client.options(
        "/api/collections", headers={"Origin": "https://museum.example", **preflight}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://museum.example"
    other = client.get("/api/collections", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    closed = client_for(demo_index, tmp_path / "b").get(
        "/api/collections", headers={"Origin": "https://museum.example"}
    )
    assert "access-control-allow-origin" not in closed.headers


def test_openapi_documents_examples_errors_and_the_key(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    text_search = schema["paths"]["/api/collections/{collection}/search/text"]["get"]
    q = next(p for p in text_search["parameters"] if p["name"] == "q")
    assert q["schema"]["examples"] or q.get("examples")
    assert {"400", "404", "422"} <= set(text_search["responses"])
    assert "ErrorBody" in schema["components"]["schemas"]


def test_concurrent_requests_share_the_model_and_get_their_own_answers(client):
    """Many threads at once (text, image and composed, which takes no lock): each answer equals
    the one the same request gets alone."""
    queries = ["a red circle", "a blue square", "green", "yellow circle"]
    alone = {
        q: client.get("/api/collections/demo/search/text", params={"q": q}).json() for q in queries
    }
    reference = client.post(
        "/api/collections/demo/search/image", data={"item_id": "blue-square"}
    ).json()
    composed_form = {"item_id": "blue-square", "text": "make it red"}
    composed = client.post("/api/collections/demo/search/composed", data=composed_form).json()
    results, errors = [], []

    def worker(number: int):
        try:
            for step in range(6):
                if (number + step) % 3 == 0:
                    got = client.post(
                        "/api/collections/demo/search/image", data={"item_id": "blue-square"}
                    ).json()
                    results.append(got == reference)
                elif (number + step) % 3 == 1:
                    got = client.post(
                        "/api/collections/demo/search/composed", data=composed_form
                    ).json()
                    results.append(got == composed)
                else:
                    q = queries[(number + step) % len(queries)]
                    got = client.get("/api/collections/demo/search/text", params={"q": q}).json()
                    results.append(got == alone[q])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 72 and all(results)


def test_unknown_endpoints_and_methods_answer_json(client):
    assert_error(client.get("/api/nope/deeper"), 404, "/docs")
    assert_error(client.get("/api"), 404, "/docs")  # was a bare {"detail": "Not Found"}
    assert_error(client.put("/api/collections"), 405, "not allowed")
    assert_error(client.delete("/api/collections/demo/search/text"), 405, "not allowed")
