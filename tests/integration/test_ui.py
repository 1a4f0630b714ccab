"""The functions behind every tab, called directly on a small real collection (no browser)."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from retrieval.backbone import load_backbone
from retrieval.catalog import CollectionUnavailable
from retrieval.config import Settings
from retrieval.errors import BadInput, NotFound, TooLarge
from retrieval.index import Index
from tests.ui_fixtures import make_catalog, make_images
from webapp.ui.common import guarded, keeping, random_sample
from webapp.ui.composed import (
    composed_methods,
    composed_search,
    go_to_step,
    push_step,
    step_back,
    step_choices,
)
from webapp.ui.detail import item_details
from webapp.ui.explain import explain, explain_query
from webapp.ui.gallery import browse
from webapp.ui.image_search import image_search
from webapp.ui.shell import catalog_overview, collection_summary, unavailable_message
from webapp.ui.state import (
    SESSION_PREFIX,
    collection_choices,
    delete_session,
    get_collection,
    new_session,
)
from webapp.ui.tagging import tag, vocabularies
from webapp.ui.text_search import artists, make_filters, text_search
from webapp.ui.your_collection import index_archive, index_upload, skip_note


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, micro_model_dir):
    return make_catalog(tmp_path_factory.mktemp("ui-collection"), micro_model_dir)


@pytest.fixture(scope="module")
def scenes(catalog):
    return catalog.get("scenes")


@pytest.fixture()
def settings(tmp_path):
    return Settings(cache_dir=str(tmp_path / "cache"))


def zip_of_images(path: Path) -> Path:
    """The nine test scenes and their metadata.csv, wrapped in one folder as 'compress' does."""
    folder = make_images(path.parent / f"{path.stem}-source")
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"photos/{file.name}")
    return path


# -- collections -----------------------------------------------------------------------------
def test_offline_hub_collection_reports_its_reason_and_others_still_work(catalog):
    with pytest.raises(CollectionUnavailable, match="not in the local cache"):
        get_collection(catalog, None, "remote")
    overview = catalog_overview(catalog)
    assert "Test scenes" in overview and "ready" in overview
    assert "Remote (Hub only)" in overview and "kept on the Hugging Face Hub" in overview
    assert "hf-hub:" not in overview  # #15.9: plain words, not the loader's jargon
    assert get_collection(catalog, None, "scenes").name == "scenes"
    assert collection_choices(catalog, marked=True) == [  # the dropdown marks it too
        ("Test scenes", "scenes"),
        ("Remote (Hub only) (unavailable)", "remote"),
    ]
    message = unavailable_message(catalog, "remote", catalog.status("remote"))
    assert message.count("not in the local cache") == 1 and "<details>" in message


def test_unknown_and_foreign_session_collections_are_refused(catalog):
    with pytest.raises(NotFound, match="no collection"):
        get_collection(catalog, None, "nope")
    with pytest.raises(NotFound, match="another or an expired session"):
        get_collection(catalog, None, SESSION_PREFIX + "someone-elses")
    with pytest.raises(BadInput):
        get_collection(catalog, None, "")


def test_choices_summary_and_methods(catalog, scenes, micro_model_dir, tmp_path):
    assert collection_choices(catalog) == [
        ("Test scenes", "scenes"),
        ("Remote (Hub only)", "remote"),
    ]
    assert "9 items" in collection_summary(scenes) and "ONNX" not in collection_summary(scenes)
    int8 = load_backbone(
        str(micro_model_dir), "standard", "cpu", runtime="onnx-int8", cache_dir=tmp_path
    )
    on_int8 = replace(scenes, backbone=int8)
    assert "on ONNX Runtime (int8)" in collection_summary(on_int8)
    assert artists(scenes) == ["Bruno", "Anna"]  # Bruno has 5 of the 9 items
    assert composed_methods(scenes) == ["sum"]


def test_trained_composers_are_listed_before_the_sum_baseline(scenes):
    original = dict(scenes.searcher.composers)
    try:
        scenes.searcher.composers["zero-shot"] = original["sum"]
        assert composed_methods(scenes) == ["zero-shot", "sum"]
    finally:
        scenes.searcher.composers = original


# -- gallery and detail ----------------------------------------------------------------------
def test_browse_pages_through_the_index_and_serves_thumbnails_in_place(scenes):
    gallery, hits, info, page = browse(scenes, 2, page_size=4)
    assert page == 2 and info.startswith("Page 2 of 3")
    assert [hit["id"] for hit in hits] == [item["id"] for item in scenes.index.items[4:8]]
    assert [hit["rank"] for hit in hits] == [5, 6, 7, 8]
    for (path, caption), hit in zip(gallery, hits, strict=True):
        assert Path(path).parent == scenes.index.directory / "thumbs" and Path(path).is_file()
        assert caption == hit["title"]
    assert browse(scenes, 99, page_size=4)[3] == 3  # clamped to the last page
    assert len(browse(scenes, 3, page_size=4)[1]) == 1


def test_random_sample_has_distinct_items_and_follows_the_seed(scenes):
    _, first = random_sample(scenes, 5, seed=1)
    _, again = random_sample(scenes, 5, seed=1)
    assert first == again and len({hit["id"] for hit in first}) == 5
    assert len(random_sample(scenes, 50)[1]) == 9


def test_item_details_show_metadata_and_a_source_link(scenes):
    image, card = item_details(scenes, "red-circle")
    assert Path(image).name == "red_circle.png"
    for text in ("A red circle", "Bruno", "1800", "a red circle on a pale ground"):
        assert text in card
    assert "[Source](https://example.org/items/red-circle)" in card
    with pytest.raises(NotFound):
        item_details(scenes, "no-such-item")
    with pytest.raises(BadInput):
        item_details(scenes, "  ")


def test_item_details_escape_html_and_drop_unsafe_links(scenes, monkeypatch):
    item = scenes.index.item("red-square")
    monkeypatch.setitem(item, "title", "<script>alert(1)</script>")
    monkeypatch.setitem(item, "url", "javascript:alert(1)")
    _, card = item_details(scenes, "red-square")
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert "javascript:" not in card


# -- searches --------------------------------------------------------------------------------
def test_text_search_ranks_by_score_with_captions(scenes):
    gallery, hits, notes = text_search(scenes, "a red circle", k=5)
    assert len(hits) == 5 and notes == []
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert gallery[0][1] == f"{hits[0]['score']:.3f} · {hits[0]['title']}"


def test_text_search_filters_and_minimum_score(scenes):
    _, hits, _ = text_search(scenes, "a shape", k=9, filters=make_filters(artist="anna"))
    assert hits and {scenes.index.item(h["id"])["artist"] for h in hits} == {"Anna"}
    _, hits, _ = text_search(
        scenes, "a shape", k=9, filters=make_filters(date_from=1820, date_to=1840)
    )
    assert {h["id"] for h in hits} == {"red-triangle", "green-circle", "green-square"}
    _, hits, _ = text_search(scenes, "a shape", k=9, filters=make_filters(keyword="blue"))
    assert {h["id"] for h in hits} == {"blue-circle", "blue-square", "blue-triangle"}
    _, hits, notes = text_search(scenes, "a shape", k=9, min_score=0.999)
    assert hits == [] and "minimum score" in notes[0]
    assert len(text_search(scenes, "a shape", k=9, min_score=-1)[1]) == 9


def test_text_search_rejects_bad_input(scenes):
    with pytest.raises(BadInput, match="empty"):
        text_search(scenes, "   ")
    with pytest.raises(BadInput, match="date range"):
        make_filters(date_from=1900, date_to=1800)
    with pytest.raises(BadInput, match="k must be"):
        text_search(scenes, "a red circle", k=0)


def test_image_search_by_item_excludes_it_and_by_upload_finds_the_same_image(scenes, tmp_path):
    _, hits, _ = image_search(scenes, None, "blue-square", k=8)
    assert "blue-square" not in {h["id"] for h in hits} and len(hits) == 8
    upload = tmp_path / "query.png"
    Image.open(scenes.index.image_path("blue-square")).save(upload)
    _, hits, _ = image_search(scenes, str(upload), None, k=3)
    assert hits[0]["id"] == "blue-square" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_image_search_reports_corrupt_and_missing_images(scenes, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadInput, match="broken.png"):
        image_search(scenes, str(broken), None)
    with pytest.raises(BadInput, match="give an image"):
        image_search(scenes, None, "")


def test_composed_search_excludes_the_reference_and_returns_its_query(scenes):
    gallery, hits, notes, vector = composed_search(
        scenes, None, "red-circle", "make it blue", "sum", k=4
    )
    assert len(hits) == 4 and "red-circle" not in {h["id"] for h in hits}
    assert len(vector) == scenes.backbone.dim
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(BadInput, match="not available"):
        composed_search(scenes, None, "red-circle", "make it blue", "combiner")
    with pytest.raises(BadInput, match="empty"):
        composed_search(scenes, None, "red-circle", " ", "sum")


def test_composed_search_with_an_uploaded_reference_image(scenes):
    """The upload's path used to reach the Searcher as a string and be taken for an item id."""
    upload = str(scenes.index.image_path("red-circle"))  # what Gradio hands over: a file path
    _, hits, _, _ = composed_search(scenes, upload, "", "make it blue", "sum", k=4)
    _, by_item, _, _ = composed_search(scenes, None, "red-circle", "make it blue", "sum", k=5)
    assert len(hits) == 4
    from_upload = [h["id"] for h in hits if h["id"] != "red-circle"]  # an upload is not excluded
    assert from_upload[:3] == [h["id"] for h in by_item][:3]


def test_refinement_chain_grows_and_steps_back(scenes):
    first = [{"id": "blue-circle", "rank": 1, "title": "A blue circle", "score": 0.5}]
    chain = push_step([], "red-circle", None, "A red circle", "make it blue", "sum", first)
    second = [{"id": "blue-square", "rank": 1, "title": "A blue square", "score": 0.4}]
    chain = push_step(chain, "blue-circle", None, "A blue circle", "square", "sum", second)
    assert step_choices(chain) == [
        ("1. A red circle + “make it blue” (sum)", 0),
        ("2. A blue circle + “square” (sum)", 1),
    ]
    shorter, last, hits = step_back(chain)
    assert len(shorter) == 1 and last["id"] == "blue-circle" and last["text"] == "square"
    assert hits == first
    shorter, last, hits = step_back(shorter)
    assert shorter == [] and last["id"] == "red-circle" and hits == []
    with pytest.raises(BadInput):
        step_back(shorter)


def test_another_try_from_the_same_reference_does_not_repeat_a_breadcrumb():
    """#15.5: changing the method and searching again added the same reference a second time."""
    hits = [{"id": "blue-circle", "rank": 1, "title": "A blue circle", "score": 0.5}]
    chain = push_step([], "red-circle", None, "A red circle", "make it blue", "sum", hits)
    chain = push_step(chain, "red-circle", None, "A red circle", "make it blue", "combiner", hits)
    assert step_choices(chain) == [("1. A red circle + “make it blue” (combiner)", 0)]
    upload = push_step([], None, "/tmp/mine.png", "your image", "make it blue", "sum", hits)
    upload = push_step(upload, None, "/tmp/mine.png", "your image", "bluer", "sum", hits)
    assert len(upload) == 1 and upload[0]["text"] == "bluer"


def test_a_clicked_breadcrumb_goes_back_to_its_step():
    chain = []
    for number, item in enumerate(("red-circle", "blue-circle", "blue-square")):
        chain = push_step(chain, item, None, item, f"change {number}", "sum", [])
    shorter, step = go_to_step(chain, 1)
    assert [s["id"] for s in shorter] == ["red-circle", "blue-circle"] and step[
        "text"
    ] == "change 1"
    with pytest.raises(BadInput, match="no longer in the trail"):
        go_to_step(chain, 3)


# -- tagging and explanations ----------------------------------------------------------------
def test_tagging_an_item_matches_tagging_its_image(scenes):
    names, default = vocabularies(scenes)
    assert "heritage" in names and default == "heritage"
    by_item = tag(scenes, None, "green-square", "heritage", "single", 1)
    image = str(scenes.index.image_path("green-square"))
    by_image = tag(scenes, image, None, "heritage", "single", 1)
    assert [t["tag"] for t in by_item] == [t["tag"] for t in by_image]
    groups = [t["group"] for t in by_item]
    assert len(groups) == len(set(groups))  # single mode: one tag per group
    with pytest.raises(BadInput, match="vocabulary"):
        tag(scenes, None, "green-square", "")


def test_explain_draws_a_heatmap_for_an_item_and_for_a_search_query(scenes):
    overlay, note = explain(scenes, None, "red-circle", "a red circle", "auto", 0.5)
    assert overlay.size == Image.open(scenes.index.image_path("red-circle")).size
    assert "Similarity" in note
    vector_query = explain_query(scenes, {"type": "item", "id": "blue-circle"})
    assert vector_query.shape == (scenes.backbone.dim,)
    overlay, _ = explain(scenes, None, "red-circle", vector_query)
    assert overlay.mode == "RGB"
    with pytest.raises(BadInput, match="run a search"):
        explain_query(scenes, None)
    with pytest.raises(BadInput, match="type the text"):
        explain(scenes, None, "red-circle", "  ")


# -- your own collection ---------------------------------------------------------------------
def test_upload_is_indexed_for_this_session_only(catalog, scenes, tmp_path, settings):
    archive = zip_of_images(tmp_path / "mine.zip")
    session, added = index_upload(
        None, str(archive), "My Photos", scenes, settings=settings, progress=False
    )
    assert added.name == SESSION_PREFIX + "my_photos"
    assert len(added.index) == 9 and added.backbone is scenes.backbone
    assert get_collection(catalog, session, added.name) is added
    assert added.name not in catalog.names()
    with pytest.raises(NotFound):
        get_collection(catalog, new_session(settings), added.name)
    _, hits, _ = text_search(added, "a red circle", k=3)
    assert len(hits) == 3
    assert (added.name, added.name) not in collection_choices(catalog)
    assert (added.spec.title, added.name) in collection_choices(catalog, session)
    delete_session(session)
    assert not session.folder.exists()


def test_a_refused_reupload_leaves_the_collection_it_would_replace(scenes, tmp_path, settings):
    """A zip bomb (or any refused zip) under the name of an upload must not destroy that upload."""
    session, mine = index_upload(
        None,
        str(zip_of_images(tmp_path / "mine.zip")),
        "mine",
        scenes,
        settings=settings,
        progress=False,
    )
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("huge.png", b"\0" * (50 * 1024 * 1024))
    with pytest.raises(TooLarge, match="zip bomb"):
        index_upload(session, str(bomb), "mine", scenes, settings=settings, progress=False)
    assert session.collections[mine.name] is mine and len(mine.index) == 9
    assert all(mine.index.thumb_path(item["id"]).is_file() for item in mine.index.items)
    assert Index.load(mine.index.directory, scenes.backbone).item("red-circle")
    assert [p.name for p in session.folder.iterdir()] == ["mine"]  # nothing half-built is left
    fewer = tmp_path / "fewer.zip"
    with zipfile.ZipFile(fewer, "w") as archive:
        for file in sorted((tmp_path / "mine-source").glob("*.png"))[:4]:
            archive.write(file, file.name)
    _, replaced = index_upload(
        session, str(fewer), "mine", scenes, settings=settings, progress=False
    )
    assert len(replaced.index) == 4 and session.collections[mine.name] is replaced
    assert [p.name for p in session.folder.iterdir()] == ["mine"]


def test_the_upload_message_names_what_was_left_out(scenes, tmp_path, settings):
    archive = zip_of_images(tmp_path / "mine.zip")
    with zipfile.ZipFile(archive, "a") as opened:
        opened.writestr("photos/broken.png", b"not a png")
    _, added = index_upload(None, str(archive), "mine", scenes, settings=settings, progress=False)
    note = skip_note(added.index.manifest["skipped"])
    assert len(added.index) == 9 and "**1** left out" in note and "`broken.png`" in note
    assert skip_note([]) == ""


def test_upload_with_separate_metadata_csv(scenes, tmp_path, settings):
    archive = zip_of_images(tmp_path / "plain.zip")
    metadata = tmp_path / "extra.csv"
    metadata.write_text("file,title,artist\nred_circle.png,Sunrise,Claude\n")
    _, added = index_upload(
        None, str(archive), "plain", scenes, str(metadata), settings, progress=False
    )
    assert added.index.item("red_circle")["artist"] == "Claude"


def test_upload_limits_and_broken_zips(scenes, tmp_path):
    archive = zip_of_images(tmp_path / "many.zip")
    small = Settings(cache_dir=str(tmp_path / "cache"), max_zip_images=3)
    with pytest.raises(TooLarge, match="limit is 3"):
        index_upload(None, str(archive), "many", scenes, settings=small, progress=False)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BadInput, match="zip"):
        index_upload(None, str(broken), "broken", scenes, settings=small, progress=False)
    with pytest.raises(BadInput, match="choose a .zip"):
        index_upload(None, None, "nothing", scenes, settings=small, progress=False)


def test_index_archive_loads_back(scenes, tmp_path):
    archive = index_archive(scenes, tmp_path / "archives")
    assert archive == index_archive(scenes, tmp_path / "archives")  # built once per version
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "unpacked")
    loaded = Index.load(tmp_path / "unpacked", scenes.backbone)
    assert [item["id"] for item in loaded.items] == [item["id"] for item in scenes.index.items]


def test_guarded_turns_user_errors_into_messages():
    def fails():
        raise BadInput("the text query is empty")

    with pytest.raises(gr.Error, match="the text query is empty"):
        guarded(fails)()

    def crashes():
        raise ZeroDivisionError("boom")

    with pytest.raises(gr.Error, match="Something went wrong: ZeroDivisionError"):
        guarded(crashes)()


def test_a_failed_ui_event_keeps_what_was_shown(monkeypatch):
    """#15.5: a raised gr.Error covered every output with "Error" and hid the last results; a
    UI event now says why in a message and leaves each output as it was."""
    shown = []
    monkeypatch.setattr(gr, "Warning", lambda message, **options: shown.append(message))

    def fails(_text):
        raise BadInput("the text query is empty")

    kept = keeping(fails, 3)("  ")
    assert len(kept) == 3 and all(value == gr.skip() for value in kept)
    assert shown == ["the text query is empty"]
    assert keeping(lambda: "fine", 1)() == "fine"


def test_space_binds_every_interface(monkeypatch):
    from app import bind_address

    monkeypatch.delenv("SR_HOST", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert bind_address(Settings())[0] == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "org/space")
    assert bind_address(Settings()) == ("0.0.0.0", 7860)
    monkeypatch.delenv("SR_PORT", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7901")  # Gradio's own variable is honoured too
    assert bind_address(Settings()) == ("0.0.0.0", 7901)


def test_a_taken_port_is_a_one_line_hint(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "SR_PORT": str(port),
            "SR_CACHE_DIR": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        }
        done = subprocess.run(
            [sys.executable, "app.py"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "SR_PORT" in done.stderr


def test_item_details_list_tags_from_metadata_strings_and_lists(scenes, monkeypatch):
    item = scenes.index.item("red-square")
    monkeypatch.setitem(item, "tags", "red; square; left")  # as a metadata CSV column holds them
    _, card = item_details(scenes, "red-square")
    assert "**Tags:** red, square, left" in card
    # as `tag --store` writes
    monkeypatch.setitem(item, "tags", ["baroque", {"tag": "oil paint", "score": 0.5}])
    _, card = item_details(scenes, "red-square")
    assert "**Tags:** baroque, oil paint" in card


def test_pushing_needs_a_token(scenes, monkeypatch):
    from webapp.ui import your_collection

    monkeypatch.setattr(your_collection, "get_token", lambda: None)
    with pytest.raises(BadInput, match="token"):
        your_collection.push_to_hub(scenes, "org/name", "", True)
    with pytest.raises(BadInput, match="org/name"):
        your_collection.push_to_hub(scenes, "just-a-name", "hf_x", True)


def test_an_unreadable_upload_reaches_the_handler_which_names_it(scenes, tmp_path):
    """An unreadable upload failed in Gradio's preprocessing, before any handler, so the page
    marked every output "Error" (#15.5); it now reaches the handler, whose message names it.
    An oversized one is refused from its header, never decoded (#15.10)."""
    from gradio.data_classes import FileData

    from tests.helpers import png_header_only
    from webapp.ui.common import readable_image

    with gr.Blocks():
        first = readable_image(label="query")
    # Gradio rebuilds a session's copy of a component from its class after any update to it
    component = type(first)(**{**first.constructor_args, "render": False})
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"not a picture")
    huge = tmp_path / "scan-13000.png"
    huge.write_bytes(png_header_only(13_000, 13_000))
    for upload, refusal in ((broken, "holiday.png: not an image file"), (huge, "scan-13000.png: 13000x13000 pixels")):  # fmt: skip
        handed_over = component.preprocess(FileData(path=str(upload), orig_name=upload.name))
        assert handed_over == str(upload)
        with pytest.raises((BadInput, TooLarge), match=refusal):
            image_search(scenes, handed_over, None)
