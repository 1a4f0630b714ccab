"""A real browser (Debian's Chromium through Playwright) against the running app.

Types a text query and sees result images, opens an item, runs a composed search and clicks a
result to refine it, and visits every tab, saving a screenshot of each under
artifacts/screenshots/. Uses the shipped Shapes collection when it is there, else a generated one.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import pytest

from app import create_app
from retrieval.catalog import Catalog
from retrieval.config import SHAPES_INDEX_DIR, Settings
from tests.helpers import draw_scene
from tests.ui_fixtures import ServedApp, make_catalog

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs /usr/bin/chromium (apt-get install chromium); never skipped in CI",
    ),
]


def browser_catalog(root: Path, model_dir: Path) -> tuple[Catalog, str]:
    """(catalog, text query): the shipped Shapes world if it was built, else test scenes."""
    if (SHAPES_INDEX_DIR / "CURRENT").is_file():
        catalog = Catalog.from_file()
        if catalog.status("shapes") is None:
            return catalog, "a large red circle"
    return make_catalog(root, model_dir), "a red circle"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, micro_model_dir):
    root = tmp_path_factory.mktemp("browser")
    catalog, query = browser_catalog(root, micro_model_dir)
    with ServedApp(create_app(catalog, Settings(cache_dir=str(root / "cache")))) as url:
        yield url, query


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url[0])
        yield page
        context.close()
        browser.close()


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()


def gallery_images(page, gallery_id: str):
    return page.locator(f"#{gallery_id} img")


def wait_for_images(page, gallery_id: str) -> int:
    images = gallery_images(page, gallery_id)
    images.first.wait_for(state="visible")
    page.wait_for_function(
        "id => [...document.querySelectorAll(`#${id} img`)].every(i => i.complete && i.naturalWidth > 0)",
        arg=gallery_id,
    )
    return images.count()


def field(elem_id: str) -> str:
    """JavaScript for a textbox's current value ('' while it is not rendered yet)."""
    return (
        f"((document.querySelector('#{elem_id} textarea, #{elem_id} input') || {{}}).value || '')"
    )


def text_of(elem_id: str) -> str:
    return f"((document.querySelector('#{elem_id}') || {{}}).innerText || '')"


def selected_id(page) -> str:
    return page.locator("#selected-id textarea, #selected-id input").first.input_value()


def test_gallery_opens_an_item(page):
    assert wait_for_images(page, "browse-gallery") > 0
    shot(page, "1-gallery")
    gallery_images(page, "browse-gallery").nth(1).click()
    page.wait_for_function(f"() => {field('selected-id')}.length > 0")
    page.locator("#detail-panel img").first.wait_for(state="visible")
    assert "id " in page.locator("#detail-panel").inner_text()
    shot(page, "2-item-detail")


def test_text_search_shows_scored_results(page, app_url):
    open_tab(page, "Text search")
    page.locator("#text-query textarea").fill(app_url[1])
    page.locator("#text-search").click()
    assert wait_for_images(page, "text-results") > 0
    captions = page.locator("#text-results").inner_text()
    assert re.search(r"-?\d\.\d{3} · ", captions)
    gallery_images(page, "text-results").first.click()
    page.wait_for_function(f"() => {field('selected-id')}.length > 0")
    shot(page, "3-text-search")


def test_composed_search_and_refinement(page):
    page.locator("#use-as-reference").click()
    reference = page.locator("#ref-item textarea, #ref-item input").first
    page.wait_for_function(f"() => {field('ref-item')}.length > 0")
    first_reference = reference.input_value()
    page.locator("#ref-text textarea").fill("make it blue")
    page.locator("#composed-search").click()
    assert wait_for_images(page, "composed-results") > 0
    page.wait_for_function(f"() => {text_of('breadcrumbs')}.includes('make it blue')")
    shot(page, "4-composed-search")
    gallery_images(page, "composed-results").first.click()
    page.wait_for_function(f"old => {field('ref-item')} !== old", arg=first_reference)
    page.wait_for_function(f"() => {text_of('breadcrumbs')}.includes('→')")
    page.locator("#ref-text textarea").fill("make it smaller")
    page.locator("#composed-search").click()
    page.wait_for_function(
        f"() => ({text_of('breadcrumbs')}.match(/→/g) || []).length == 1"
        f" && {text_of('breadcrumbs')}.includes('make it smaller')"
    )
    wait_for_images(page, "composed-results")
    shot(page, "5-composed-refined")


def test_find_similar_tagging_and_explain_tabs(page):
    item_id = selected_id(page)
    assert item_id
    page.locator("#find-similar").click()
    assert wait_for_images(page, "image-results") > 0
    shot(page, "6-image-search")
    open_tab(page, "Tagging")
    page.locator("#tag-item textarea, #tag-item input").first.fill(item_id)
    page.locator("#tag-button").click()
    page.locator("#tag-label").get_by_text(re.compile(r"\d+%")).first.wait_for()
    shot(page, "7-tagging")
    open_tab(page, "Explain")
    page.locator("#explain-item textarea, #explain-item input").first.fill(item_id)
    page.locator("#explain-text textarea").fill("a circle")
    page.locator("#explain-button").click()
    page.locator("#explain-output img").first.wait_for(state="visible")
    shot(page, "8-explain")
    open_tab(page, "Your collection")
    page.get_by_text("Index my collection").wait_for()
    shot(page, "9-your-collection")


def test_an_upload_says_what_it_left_out(page, tmp_path):
    """A visitor uploads a zip with one broken file: the collection is indexed and the message
    names the file that was left out, instead of a silently smaller count."""
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for number, colour in enumerate(("red", "blue", "green")):
            buffer = io.BytesIO()
            draw_scene(colour, "circle").save(buffer, format="PNG")
            opened.writestr(f"photos/{number}-{colour}.png", buffer.getvalue())
        opened.writestr("photos/broken.png", b"not a picture")
    open_tab(page, "Your collection")
    page.locator("#upload-zip input[type=file]").set_input_files(str(archive))
    page.locator("#upload-name input, #upload-name textarea").first.fill("broken-test")
    page.locator("#upload-button").click()
    page.wait_for_function(f"() => {text_of('upload-status')}.includes('left out')")
    status = page.locator("#upload-status").inner_text()
    assert "Indexed 3 images" in status and "broken.png" in status
    shot(page, "7-upload-report")


def test_opening_filters_does_not_filter_anything(page, app_url):
    """Opening "Filters" and touching nothing used to set both years to 0, so every search
    answered "no item matches the filters"; a single "Year from" said "1600 is after 0"."""
    open_tab(page, "Text search")
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Year from").wait_for(state="visible")
    page.locator("#text-query textarea").fill(app_url[1])
    page.locator("#text-search").click()
    assert wait_for_images(page, "text-results") > 0
    page.get_by_label("Year from").fill("1600")
    page.locator("#text-search").click()
    page.wait_for_timeout(1500)
    assert "is after" not in page.locator("body").inner_text()


def test_the_api_docs_render_without_internet(page, app_url):
    """/docs and /redoc used to load their scripts from a CDN: blank pages offline (as here)."""
    for path, ready in (("/docs", ".swagger-ui .opblock"), ("/redoc", "[role=main] h1, h1")):
        page.goto(app_url[0].rstrip("/") + path)
        page.locator(ready).first.wait_for(state="visible")
        assert "Smart Retrieval API" in page.locator("body").inner_text()
    page.goto(app_url[0])


def test_every_result_is_visible_on_a_phone(page, app_url):
    """At 390 px the galleries kept 6 columns and clipped the overflow: half the results were
    out of reach. Every result image must lie within the screen's width."""
    context = page.context.browser.new_context(viewport={"width": 390, "height": 844})
    phone = context.new_page()
    phone.set_default_timeout(TIMEOUT_MS)
    phone.goto(app_url[0])
    phone.get_by_role("tab", name="Text search").click()
    phone.locator("#text-query textarea").fill(app_url[1])
    phone.locator("#text-search").click()
    count = wait_for_images(phone, "text-results")
    boxes = [gallery_images(phone, "text-results").nth(i).bounding_box() for i in range(count)]
    shot(phone, "8-phone-text-search")
    context.close()
    assert count == 12
    on_screen = [b for b in boxes if b and b["x"] >= 0 and b["x"] + b["width"] <= 390]
    assert len(on_screen) == count and all(b["width"] > 40 for b in on_screen), boxes


def test_enter_and_example_clicks_run_the_search(page, app_url):
    """Enter in the modification box used to do nothing, and an example only filled the box."""
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 900})
    fresh = context.new_page()
    fresh.set_default_timeout(TIMEOUT_MS)
    fresh.goto(app_url[0])
    open_tab(fresh, "Text search")
    fresh.get_by_text("a large red circle", exact=True).first.click()  # an example of Shapes
    fresh.wait_for_function(f"() => {field('text-query')} === 'a large red circle'")
    assert wait_for_images(fresh, "text-results") > 0
    gallery_images(fresh, "text-results").first.click()
    fresh.wait_for_function(f"() => {field('selected-id')}.length > 0")
    item_id = selected_id(fresh)
    open_tab(fresh, "Composed search")
    fresh.locator("#ref-item textarea, #ref-item input").first.fill(item_id)
    modification = fresh.locator("#ref-text textarea, #ref-text input").first
    modification.fill("make it blue")
    modification.press("Enter")
    assert wait_for_images(fresh, "composed-results") > 0
    context.close()
