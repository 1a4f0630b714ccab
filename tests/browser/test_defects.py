"""Defects people met in the app (issue #15), each checked the way they met it."""

from __future__ import annotations

from tests.browser.ui import (
    FIRST_ELEMENT,
    box,
    class_zip,
    messages,
    open_tab,
    shot,
    titles,
    upload_collection,
    visible_images,
    wait_for_results,
)

TABS = {
    "gallery": "Gallery",
    "text": "Text search",
    "image": "Image search",
    "composed": "Composed search",
    "tagging": "Tagging",
    "explain": "Explain",
    "upload": "Your collection",
}


def test_every_tab_is_on_screen_and_opens(page):
    """On a phone only two tabs showed, the rest hid behind "…" (at 1400 px: "Your collection")."""
    width = page.viewport_size["width"]
    for tab_id, title in TABS.items():
        tab = page.get_by_role("tab", name=title, exact=True)
        found = tab.bounding_box()
        assert found and found["x"] >= 0 and found["x"] + found["width"] <= width, title
        open_tab(page, tab_id, title)
        shot(page, f"tab-{tab_id}")
    assert page.locator(".overflow-menu:visible, .overflow-dropdown:visible").count() == 0
    without_alt = page.locator("img:visible:not([alt]), img:visible[alt='']")
    assert without_alt.count() == 0, without_alt.evaluate_all("images => images.map(i => i.src)")


def test_the_keyboard_focus_is_always_visible(page):
    """Tabbing through the page shows where you are: an outline on every focused control."""
    for _ in range(8):
        page.keyboard.press("Tab")
        outline = page.evaluate(
            "() => { const s = getComputedStyle(document.activeElement);"
            " return [document.activeElement.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }"
        )
        if outline[0] in ("BUTTON", "INPUT", "TEXTAREA"):
            assert outline[1] != "none" and outline[2] >= 2, outline


def test_enter_runs_the_search_in_every_item_box(page):
    """Enter did nothing in the item-id boxes; it runs the tab's action, as the button does."""
    for tab_id, title, result in (
        ("image", "Image search", "#image-results img"),
        ("composed", "Composed search", "#composed-results img"),
        ("tagging", "Tagging", "#tag-label .output-class, #tag-label h2"),
        ("explain", "Explain", "#explain-output img"),
    ):
        open_tab(page, tab_id, title)
        if tab_id == "composed":
            box(page, "ref-text").fill("make the circle blue")
        if tab_id == "explain":
            box(page, "explain-text").fill("a circle")
        box(page, FIRST_ELEMENT[tab_id]).fill("test-0000-img0")
        box(page, FIRST_ELEMENT[tab_id]).press("Enter")
        page.locator(result).first.wait_for(state="visible")
    assert not messages(page)


def test_opening_filters_does_not_filter_anything(page, tmp_path):
    """Opening "Filters" and touching nothing used to set both years to 0, so every search
    answered "no item matches the filters"; a single "Year from" said "1600 is after 0".
    (Shapes has no dates, so its filters hide the years: a dated upload shows them.)"""
    upload_collection(page, *class_zip(tmp_path))
    open_tab(page, "text", "Text search")
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Year from").wait_for(state="visible")
    box(page, "text-query").fill("a circle")
    page.locator("#text-search").click()
    wait_for_results(page, "text-results", 4)
    assert visible_images(page, "text-results") == 4
    page.get_by_label("Year from").fill("1600")
    page.get_by_label("Year from").press("Enter")  # Enter in a filter box searches too
    wait_for_results(page, "text-results", 3)
    assert "Blue circle poster" not in titles(page, "text-results")  # 1590
    assert "is after" not in messages(page)


def test_filters_the_collection_cannot_answer_are_not_offered(page):
    open_tab(page, "text", "Text search")
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Keyword in title or description").wait_for(state="visible")
    assert page.get_by_label("Year from").count() == 0 and page.get_by_label("Artist").count() == 0


def test_the_api_docs_render_without_internet(page, app_url):
    """/docs and /redoc used to load their scripts from a CDN: blank pages offline (as here).

    Only ReDoc's own "API docs by Redocly" logo still comes from its CDN (a missing picture)."""
    docs = page.context.new_page()
    failed = []
    docs.on("requestfailed", lambda request: failed.append(request.url))
    for path, ready in (("docs", ".swagger-ui .opblock"), ("redoc", "[role=main] h1, h1")):
        docs.goto(app_url + path)
        docs.locator(ready).first.wait_for(state="visible")
        assert "Smart Retrieval API" in docs.locator("body").inner_text()
    outside = {url for url in failed if not url.startswith(app_url)}
    assert outside <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, failed
