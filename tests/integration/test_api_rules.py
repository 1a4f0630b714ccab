"""The API's request checks, exactly: body caps at their edge, the key, one image per request,
and the JSON error every failure becomes. Found by mutation testing (bench/mutation_test.py):
each test fails for a one-line change that the broader API tests let through."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI, UploadFile
from fastapi.testclient import TestClient

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import BadInput, NotFound, TooLarge
from tests.integration import test_api
from tests.integration.test_api import KEY, assert_error, client_for, png
from webapp.api import create_api
from webapp.api.deps import key_checker, one_source, read_upload
from webapp.api.errors import Forbidden, Unauthorized, error_kind, validation_message
from webapp.api.limits import FORM_OVERHEAD, MB, BodySizeLimit

demo_index = test_api.demo_index  # the API tests' collection, built once per module here too


def run_apart(coroutine):
    """Run a coroutine on its own loop in its own thread: the browser tests' Playwright keeps
    an event loop running in the main thread, where asyncio.run() is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


# -- body caps ------------------------------------------------------------------------------------
def body_length_app():
    """An ASGI app that reads the whole body and answers its length: what the cap protects."""

    async def app(scope, receive, send):
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    return app


CAPPED = TestClient(BodySizeLimit(body_length_app(), Settings(max_image_mb=1, max_upload_mb=2)))
IMAGE_CAP = MB + FORM_OVERHEAD


def test_each_path_gets_its_own_cap():
    limiter = BodySizeLimit(None, Settings(max_image_mb=1, max_upload_mb=2))
    assert limiter.limit_for({"path": "/", "method": "POST"}) is None  # the UI caps its own
    assert limiter.limit_for({"path": "/gradio_api/upload", "method": "POST"}) is None
    assert limiter.limit_for({"path": "/api/collections", "method": "POST"}) == 2 * MB
    assert limiter.limit_for({"path": "/api/collections/", "method": "POST"}) == 2 * MB
    assert limiter.limit_for({"path": "/api/collections", "method": "GET"}) == IMAGE_CAP
    assert (
        limiter.limit_for({"path": "/api/collections/x/search/image", "method": "POST"})
        == IMAGE_CAP
    )


def test_a_body_may_be_exactly_the_cap():
    assert CAPPED.post("/api/x", content=b"\0" * IMAGE_CAP).text == str(IMAGE_CAP)
    refused = CAPPED.post("/api/x", content=b"\0" * (IMAGE_CAP + 1))
    assert refused.headers["content-type"] == "application/json"
    assert refused.status_code == 413 and refused.json() == {
        "error": "too_large",
        "message": "the request body is larger than 1.2 MB; send a smaller file "
        "(limits: SR_MAX_IMAGE_MB for images, SR_MAX_UPLOAD_MB for zip uploads)",
    }
    assert CAPPED.post("/elsewhere", content=b"\0" * (IMAGE_CAP + 1)).text == str(IMAGE_CAP + 1)


def test_a_streamed_body_is_cut_at_the_cap_not_read_whole():
    read = []

    def chunks():
        for _ in range(40):
            read.append(1)
            yield b"\0" * (64 * 1024)

    assert CAPPED.post("/api/x", content=chunks()).status_code == 413
    exact = [b"\0" * (IMAGE_CAP // 2), b"\0" * (IMAGE_CAP - IMAGE_CAP // 2)]
    assert CAPPED.post("/api/x", content=iter(exact)).text == str(IMAGE_CAP)


def test_a_declared_length_that_is_not_a_number_is_refused():
    async def call(headers):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/api/x", "method": "POST", "headers": headers}
        await BodySizeLimit(body_length_app(), Settings(max_image_mb=1))(scope, receive, send)
        return sent[0]["status"]

    assert run_apart(call([(b"content-length", b"12x")])) == 413
    assert run_apart(call([(b"content-length", str(IMAGE_CAP + 1).encode())])) == 413
    assert run_apart(call([(b"content-length", str(IMAGE_CAP).encode())])) == 200
    assert run_apart(call([])) == 200


def test_other_protocols_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    run_apart(BodySizeLimit(app, Settings())({"type": "lifespan", "path": "/api/x"}, None, None))
    assert seen == ["lifespan"]


def test_an_error_raised_after_the_cap_is_the_413_and_other_errors_propagate():
    async def reads_then_fails(scope, receive, send):
        await receive()
        raise RuntimeError("the app choked on the cut-off body")

    capped = TestClient(BodySizeLimit(reads_then_fails, Settings(max_image_mb=1)))
    assert capped.post("/api/x", content=b"\0" * (IMAGE_CAP + 1)).status_code == 413
    with pytest.raises(RuntimeError, match="choked"):
        capped.post("/api/x", content=b"\0" * 10)


# -- uploads and sources --------------------------------------------------------------------------
def upload(data: bytes, name: str | None = "a.png") -> UploadFile:
    return UploadFile(io.BytesIO(data), filename=name, size=len(data))


def test_an_upload_may_be_exactly_the_image_limit_and_no_more_is_read():
    assert len(read_upload(upload(b"\0" * MB), 1)) == MB
    huge = upload(b"\0" * (3 * MB))
    with pytest.raises(TooLarge):
        read_upload(huge, 1)
    assert huge.file.tell() == MB + 1  # one byte past the limit tells; the rest stays unread
    with pytest.raises(TooLarge) as error:
        read_upload(upload(b"\0" * (MB + 1)), 1)
    assert str(error.value) == "the image is larger than 1 MB (SR_MAX_IMAGE_MB)"
    with pytest.raises(BadInput) as error:
        read_upload(upload(b""), 1)
    assert str(error.value) == "the uploaded file is empty"


def test_exactly_one_source_and_an_empty_file_input_is_none():
    message = (
        "send the reference either as an uploaded image (form field 'file') or as an item id "
        "(form field 'item_id'), exactly one of the two"
    )
    for file, item in ((None, None), (None, ""), (upload(b"x"), "a-1"), (upload(b"", ""), "")):
        with pytest.raises(BadInput) as error:
            one_source(file, item, "reference")
        assert str(error.value) == message
    given = upload(b"x")
    assert one_source(given, None, "reference") is given
    assert one_source(upload(b"", ""), "a-1", "reference") is None  # what a browser sends
    assert one_source(upload(b"", "x.png"), None, "reference") is not None  # named: an (empty) file
    assert one_source(upload(b"x", ""), None, "reference") is not None  # unnamed but not empty


def test_the_key_check_says_how_to_enable_writing_and_how_to_send_the_key():
    with pytest.raises(Forbidden) as error:
        key_checker(Settings(api_key=""))(key=KEY)
    assert str(error.value) == (
        "writing is disabled on this server: start it with SR_API_KEY set to a secret, "
        "then send that secret in the X-API-Key header"
    )
    require = key_checker(Settings(api_key=KEY))
    assert require(key=KEY) is None
    for wrong in (None, "", KEY[:-1], KEY + " "):
        with pytest.raises(Unauthorized) as error:
            require(key=wrong)
        assert str(error.value) == "missing or wrong API key: send it in the X-API-Key header"


def test_the_key_travels_in_the_header_and_a_refusal_says_how(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path, api_key=KEY)
    refused = client.delete("/api/collections/demo")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "APIKey"
    assert refused.json()["error"] == "unauthorized"
    shipped = client.delete("/api/collections/demo", headers={"X-API-Key": KEY})
    assert shipped.status_code == 409 and shipped.json()["error"] == "conflict"


def test_a_second_file_part_is_refused_with_its_count(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path)
    three = [("file", (f"{n}.png", png(), "image/png")) for n in range(3)]
    response = client.post("/api/collections/demo/search/image", files=three)
    assert_error(response, 400, "send one image in the form field 'file', not 3")
    one = client.post("/api/collections/demo/search/image", files=three[:1], params={"k": 1})
    assert one.status_code == 200 and one.json()["hits"][0]["id"] == "red-circle"


# -- the error shape ------------------------------------------------------------------------------
def test_error_kinds_are_the_class_names_in_snake_case():
    assert error_kind(NotFound("x")) == "not_found" and error_kind(BadInput("x")) == "bad_input"
    assert (
        error_kind(TooLarge("x")) == "too_large" and error_kind(Unauthorized("x")) == "unauthorized"
    )


def test_validation_messages_name_each_field_up_to_five():
    errors = [
        {"loc": ["query", "k"], "msg": "too big"},
        {"loc": ["body", "file", 0], "msg": "missing"},
    ]
    assert validation_message(errors) == "k: too big; file.0: missing"
    assert (
        validation_message([{"loc": ["path"], "msg": "bad"}, {}])
        == "request: bad; request: invalid"
    )
    many = [{"loc": ["query", f"f{n}"], "msg": "x"} for n in range(7)]
    assert validation_message(many) == "; ".join(f"f{n}: x" for n in range(5))
    assert validation_message([]) == "the request is not valid"


def test_routing_errors_and_faults_answer_in_the_same_shape(demo_index, tmp_path, caplog):
    client = client_for(demo_index, tmp_path)
    invalid = client.get("/api/collections/demo/search/text", params={"q": "x", "k": 0})
    assert invalid.status_code == 422 and invalid.json()["error"] == "invalid_request"
    assert invalid.json()["message"].startswith("k: ") and invalid.json()["detail"][0]["loc"] == [
        "query",
        "k",
    ]
    assert client.put("/api/collections").json()["error"] == "method_not_allowed"
    assert client.get("/api/nothing").json()["error"] == "not_found"

    app = FastAPI()
    from webapp.api.errors import install_error_handlers

    install_error_handlers(app)

    @app.get("/teapot")
    def teapot():
        from fastapi import HTTPException

        raise HTTPException(418, "short and stout")

    @app.get("/bug")
    def bug():
        raise ZeroDivisionError("a bug")

    plain = TestClient(app, raise_server_exceptions=False)
    assert plain.get("/teapot").json() == {"error": "http_error", "message": "short and stout"}
    with caplog.at_level(logging.ERROR):
        fault = plain.get("/bug")
    assert fault.status_code == 500 and fault.json() == {
        "error": "internal", "message": "an unexpected error happened on the server; it was logged",
    }  # fmt: skip
    assert any(record.exc_info for record in caplog.records)


def test_the_api_lists_no_collection_it_was_not_given(tmp_path):
    settings = Settings(cache_dir=str(tmp_path))
    listed = TestClient(create_api(Catalog([], settings), settings)).get("/api/collections")
    assert listed.json()["collections"] == []


def test_openapi_states_this_servers_names_limits_and_fields(tmp_path):
    """The published schema is what an integrator codes against: it must say the real limits."""
    from retrieval.catalog import CollectionSpec
    from webapp.api.deps import COLLECTION_PATTERN

    settings = Settings(cache_dir=str(tmp_path), max_k=30, max_image_mb=3)
    catalog = Catalog([CollectionSpec(name="demo", title="Demo", index=str(tmp_path / "none"))])
    spec = TestClient(create_api(catalog, settings)).get("/openapi.json").json()
    paths = spec["paths"]
    found = {
        (path, p["name"]): p for path, ops in paths.items() for op in ops.values()
        for p in op.get("parameters", [])
    }  # fmt: skip
    collection = found[("/api/collections/{collection}/items", "collection")]
    assert collection["schema"]["pattern"] == COLLECTION_PATTERN
    assert collection["schema"]["examples"] == ["demo"]
    assert collection["description"] == "collection name (see GET /api/collections)"
    k = found[("/api/collections/{collection}/search/text", "k")]
    assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, 30)
    assert k["description"] == "number of results in this page"
    limit = found[("/api/collections/{collection}/items", "limit")]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 30)
    empty = Catalog([], settings)
    fallback = TestClient(create_api(empty, settings)).get("/openapi.json").json()
    assert '"examples": ["shapes"]' in json.dumps(fallback)
    assert "an image (at most 3 MB)" in json.dumps(spec)


def test_bad_collection_names_and_limits_are_refused_before_any_lookup(demo_index, tmp_path):
    client = client_for(demo_index, tmp_path, max_k=30)
    assert client.get("/api/collections/bad%20name/items").status_code == 422
    for limit in (0, 31):
        refused = client.get("/api/collections/demo/items", params={"limit": limit})
        assert refused.status_code == 422 and refused.json()["message"].startswith("limit: ")
    assert client.get("/api/collections/demo/items", params={"limit": 30}).status_code == 200
