"""An educator's journey: switch collections, meet one that cannot open, upload a class's own
images with their metadata, search them and take the index away."""

from __future__ import annotations

import zipfile

from tests.browser.ui import (
    box,
    class_zip,
    messages,
    open_tab,
    shot,
    text_of,
    titles,
    visible_images,
    wait_for_results,
)


def choose_collection(page, label: str) -> None:
    page.locator("#collection input").click()
    page.get_by_role("option", name=label).click()


def test_an_unavailable_collection_says_why_in_plain_words(page):
    open_tab(page, "text", "Text search")
    box(page, "text-query").fill("a red circle")
    box(page, "text-query").press("Enter")
    wait_for_results(page, "text-results", 12)
    choose_collection(page, "NoisyArt (artworks, ViT-B/32) (unavailable)")
    page.wait_for_function(
        "() => document.querySelector('#collection-status').innerText.includes('cannot be opened')"
    )
    status = text_of(page, "collection-status")
    assert "kept on the Hugging Face Hub" in status and "hf-hub:" not in status
    assert not messages(page)  # said once, where the collection is chosen, not again in a popup
    assert page.get_by_text("Examples", exact=True).count() == 0  # no empty "Examples" header
    assert page.locator("#text-results img").count() == 0  # no Shapes results under NoisyArt
    shot(page, "unavailable-collection")
    choose_collection(page, "Shapes world (offline demo)")
    page.wait_for_function(
        "() => document.querySelector('#collection-status').innerText.includes('1,024 items')"
    )
    page.get_by_text("a large red circle", exact=True).first.wait_for(state="visible")


def test_upload_a_zip_with_metadata_search_it_and_download_its_index(page, tmp_path):
    archive, metadata = class_zip(tmp_path)
    open_tab(page, "upload", "Your collection")
    assert "shapes-clip-small" in text_of(page, "upload-model-note")  # which model will embed it
    page.locator("#upload-zip input[type=file]").set_input_files(str(archive))
    page.locator("#upload-metadata input[type=file]").set_input_files(str(metadata))
    box(page, "upload-name").fill("class-set")
    page.locator("#upload-button").click()
    page.wait_for_function(
        "() => document.querySelector('#upload-status').innerText.includes('Indexed')"
    )
    assert "Indexed 4 images" in text_of(page, "upload-status")
    page.wait_for_function(
        "() => document.querySelector('#collection-status').innerText.includes('4 items')"
    )
    shot(page, "upload")
    open_tab(page, "text", "Text search")
    box(page, "text-query").fill("a red star")
    box(page, "text-query").press("Enter")
    wait_for_results(page, "text-results", 4)
    assert visible_images(page, "text-results") == 4
    assert titles(page, "text-results")[0] == "Red star print"
    open_tab(page, "upload", "Your collection")
    page.locator("#download-index").click()
    link = page.locator("#index-file a").first
    link.wait_for(state="visible")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "index.zip"
    download.value.save_as(saved)
    assert "CURRENT" in zipfile.ZipFile(saved).namelist()
