"""A museum choosing a composed method whose weights come from elsewhere sees their licence
before it builds on them: SEARLE's phi is CC BY-NC 4.0 (non-commercial), the Combiner has none."""

from __future__ import annotations

import pytest

from app import create_app
from retrieval.catalog import Catalog
from retrieval.config import Settings
from tests.browser.ui import open_tab
from tests.helpers import SEARLE_LICENCE, licensed_collections
from tests.ui_fixtures import ServedApp

LICENCE_BOX = "#composed-licence"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app serving only the licensed collection (overrides the shipped catalog's app)."""
    folder = tmp_path_factory.mktemp("licensed-app")
    settings = Settings(cache_dir=str(folder / "cache"))
    catalog = Catalog.from_file(licensed_collections(folder), settings)
    with ServedApp(create_app(catalog, settings)) as url:
        yield url


def choose_method(page, name: str) -> None:
    page.locator("#composed-method input").click()
    page.get_by_role("option", name=name, exact=True).click()


def test_the_licence_shows_for_the_zero_shot_method_only(page):
    open_tab(page, "composed", "Composed search")
    assert page.locator("#composed-method input").input_value() == "combiner"
    assert not page.locator(LICENCE_BOX).is_visible()
    choose_method(page, "zero-shot")
    box = page.locator(f"{LICENCE_BOX} textarea, {LICENCE_BOX} input").first
    box.wait_for(state="visible")
    box.scroll_into_view_if_needed()
    assert box.input_value() == SEARLE_LICENCE
    assert "Licence of this method's weights" in page.locator(LICENCE_BOX).inner_text()
    choose_method(page, "sum")
    page.locator(LICENCE_BOX).wait_for(state="hidden")
