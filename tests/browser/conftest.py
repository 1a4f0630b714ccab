"""A real browser (Debian's Chromium through Playwright) against the running app.

The app serves the shipped catalog: the Shapes collection with its trained models (so results
can be checked for relevance) and the Hub collections, which cannot open offline. Every test
runs at a phone's and a desktop's size, in a fresh browser context; a console error fails it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import create_app
from retrieval.catalog import Catalog
from retrieval.config import Settings
from tests.ui_fixtures import ServedApp

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000
SCREENS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1400, "height": 900}}


def pytest_collection_modifyitems(items):
    skip = pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs /usr/bin/chromium (apt-get install chromium); never skipped in CI",
    )
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    settings = Settings(cache_dir=str(root / "cache"))
    catalog = Catalog.from_file(settings.collections_file, settings)
    with ServedApp(create_app(catalog, settings)) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(params=list(SCREENS))
def screen(request) -> str:
    return request.param


@pytest.fixture
def page(browser, screen, app_url):
    """A fresh visitor (no cookies, no session) on the app's front page at `screen`'s size.

    `page.open_link(url)` opens another address in a new page of the same browser, as following
    a link does (navigating the page itself would log the old page's aborted requests)."""
    context = browser.new_context(viewport=SCREENS[screen], accept_downloads=True)
    errors: list[str] = []

    def watched(url: str):
        opened = context.new_page()
        opened.set_default_timeout(TIMEOUT_MS)
        opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)  # fmt: skip
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.screen_name = screen
        opened.open_link = watched
        opened.goto(url)
        opened.wait_for_function(  # the page is up: it says which collection it shows
            "() => document.querySelector('#collection-status')?.innerText.includes('items')"
        )
        return opened

    yield watched(app_url)
    context.close()
    assert not errors, f"console errors: {errors}"
