"""A researcher's journey: a link that reproduces results, an embed snippet for a paper's
page, the same search through gradio_client, and the MCP tools an assistant would call."""

from __future__ import annotations

import httpx
from gradio_client import Client

from tests.browser.conftest import SCREENS, TIMEOUT_MS
from tests.browser.ui import (
    box,
    captions,
    shot,
    titles,
    visible_images,
    wait_for_results,
)

SELECTED_TAB = "() => document.querySelector('[role=tab][aria-selected=true]').innerText"


def test_the_address_the_front_page_writes_opens_again(page, app_url):
    """The gallery wrote `?page=1`, a parameter Gradio keeps for itself: every reload was a 500."""
    page.wait_for_url("**gallery_page=1**")
    again = page.open_link(page.url)  # a reload
    wait_for_results(again, "browse-gallery", 24)
    second = page.open_link(app_url + "?tab=gallery&gallery_page=2")
    second.wait_for_function("() => document.body.innerText.includes('Page 2 of 43')")


def test_a_link_reproduces_the_results_and_the_address_keeps_them(page, app_url):
    page = page.open_link(app_url + "?collection=shapes&tab=text&q=a+large+red+circle")
    wait_for_results(page, "text-results", 12)
    assert page.evaluate(SELECTED_TAB) == "Text search"
    assert box(page, "text-query").input_value() == "a large red circle"
    assert visible_images(page, "text-results") == 12
    by_client = Client(app_url, verbose=False).predict(
        "a large red circle", api_name="/text_search"
    )
    assert titles(page, "text-results") == [hit["title"] for hit in by_client]
    box(page, "text-query").fill("a green triangle and a yellow circle")
    box(page, "text-query").press("Enter")
    page.wait_for_url("**q=a+green+triangle+and+a+yellow+circle**")  # the address follows
    wait_for_results(page, "text-results", 12)
    before = captions(page, "text-results")
    again = page.open_link(page.url)  # a reload, a bookmark, a link in a lesson plan
    wait_for_results(again, "text-results", 12)
    assert captions(again, "text-results") == before
    shot(page, "deep-link")


def test_a_composed_link_opens_its_reference_change_and_method(page, app_url):
    page = page.open_link(
        app_url + "?tab=composed&ref=test-0000-img0&text=make+the+circle+blue&method=sum"
    )
    wait_for_results(page, "composed-results", 12)
    assert page.evaluate(SELECTED_TAB) == "Composed search"
    assert box(page, "ref-text").input_value() == "make the circle blue"
    assert page.locator("#composed-method input").input_value() == "sum"
    assert "test-0000-img0" in page.locator("#ref-item-image img").get_attribute("src")
    assert "1. " in page.locator("#breadcrumbs").inner_text()


def test_the_share_box_gives_a_link_and_an_embed_that_works_in_a_page(page, app_url, browser):
    page = page.open_link(app_url + "?tab=image&item=test-0000-img0")
    wait_for_results(page, "image-results", 12)
    page.get_by_text("Share or embed this view").click()
    link = box(page, "share-link")
    link.wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector('#share-link textarea, #share-link input').value.includes('item=')"
    )
    assert link.input_value() == page.url and "tab=image" in page.url
    embed = box(page, "embed-code").input_value()
    assert embed.startswith(f'<iframe src="{page.url.replace("&", "&amp;")}"')
    assert page.locator(
        "#share-link button[aria-label*=opy], #share-link button[title*=opy]"
    ).count()
    host = browser.new_context(viewport={"width": 1000, "height": 900})
    paper = host.new_page()
    paper.set_default_timeout(TIMEOUT_MS)
    paper.set_content(f"<h1>Our paper</h1><div style='width: 1000px'>{embed}</div>")
    frame = paper.frame_locator("iframe")
    frame.locator("#image-results img").first.wait_for(state="visible")
    inner = next(f for f in paper.frames if f.url.startswith(app_url))
    inner.wait_for_function("() => document.querySelectorAll('#image-results img').length === 12")
    assert visible_images(inner, "image-results") == 12
    host.close()


def test_gradio_client_defaults_and_the_mcp_tools(app_url):
    hits = Client(app_url, verbose=False).predict("a large red circle", api_name="/text_search")
    assert len(hits) == 12 and "red circle" in hits[0]["title"]
    assert httpx.get(hits[0]["thumb_url"]).status_code == 200
    tools = {tool["name"] for tool in httpx.get(app_url + "gradio_api/mcp/schema").json()}
    assert {"text_search", "image_search", "composed_search", "tag_image"} <= tools


def test_the_interface_speaks_the_browser_language(browser, app_url, screen):
    """Italian is not among the languages Gradio itself ships: it needs our own switch."""
    expected = {
        "it-IT": ("Ricerca testuale", "Cerca"),
        "fr-FR": ("Recherche par texte", "Rechercher"),
        "de-DE": ("Textsuche", "Suchen"),
        "es-ES": ("Búsqueda por texto", "Buscar"),
    }
    for locale, (tab, button) in expected.items():
        context = browser.new_context(viewport=SCREENS[screen], locale=locale)
        opened = context.new_page()
        opened.set_default_timeout(TIMEOUT_MS)
        opened.goto(app_url)
        opened.get_by_role("tab", name=tab, exact=True).click()
        assert opened.locator("#text-search").inner_text().strip() == button
        if locale == "it-IT":
            opened.screen_name = screen
            shot(opened, "italian")
        context.close()
