"""API request rules that mutation testing found unpinned: the key as the schema documents it,
a body counted across all its parts, an app's own answer kept when it began answering before
the body overflowed, and the cap of a path that only resembles the upload route. Each test
fails for one surviving mutant of webapp/api (bench/mutation_survivors.toml names which)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from retrieval.catalog import Catalog
from retrieval.config import Settings
from tests.integration.test_api_rules import IMAGE_CAP, body_length_app, run_apart
from webapp.api import create_api
from webapp.api.limits import BodySizeLimit

CAPS = Settings(max_image_mb=1, max_upload_mb=2)


def test_the_schema_says_where_the_api_key_comes_from(tmp_path):
    settings = Settings(cache_dir=str(tmp_path))
    spec = TestClient(create_api(Catalog([], settings), settings)).get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"].values()
    assert [(s["type"], s["in"], s["name"], s["description"]) for s in schemes] == [
        ("apiKey", "header", "X-API-Key", "the key set in SR_API_KEY")
    ]


async def serve(app, messages: list[dict], path: str = "/api/x") -> list[dict]:
    """One HTTP request through the limiter: the body as `messages`, what went out returned."""
    pending, sent = list(messages), []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    await BodySizeLimit(app, CAPS)(scope, receive, send)
    return sent


def body_in_parts(count: int, size: int) -> list[dict]:
    return [
        {"type": "http.request", "body": b"\0" * size, "more_body": n < count - 1}
        for n in range(count)
    ]


def test_a_body_streamed_in_small_parts_is_counted_whole():
    sent = run_apart(serve(body_length_app(), body_in_parts(40, 64 * 1024)))
    assert sent[0]["status"] == 413  # no part is over the cap; all of them together are
    within = run_apart(serve(body_length_app(), body_in_parts(4, IMAGE_CAP // 4)))
    assert within[0]["status"] == 200 and within[1]["body"] == str(IMAGE_CAP // 4 * 4).encode()


async def answers_first(scope, receive, send):
    """An app that starts its answer before it reads the body (a streaming echo, say)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    try:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        body = b"complete"
    except Exception:
        body = b"cut off"
    await send({"type": "http.response.body", "body": body})


def test_an_answer_begun_before_the_body_overflowed_is_the_apps_own():
    sent = run_apart(serve(answers_first, body_in_parts(4, IMAGE_CAP // 2)))
    assert [(m["type"], m.get("status"), m.get("body")) for m in sent] == [
        ("http.response.start", 200, None),
        ("http.response.body", None, b"cut off"),
    ]  # a 413 now would be a second response start on the same request


def test_only_the_upload_route_itself_gets_the_upload_cap():
    limiter = BodySizeLimit(None, CAPS)
    for path in ("/api/collectionsX", "/api/collectionsXX/", "/api/collections/X"):
        assert limiter.limit_for({"path": path, "method": "POST"}) == IMAGE_CAP
