"""A visitor who types in their own language: the Italian example, and a change asked in German.

The shipped Shapes model reads English, Italian, French, German and Spanish; result titles stay
the collection's English metadata, so the checks read the titles of what was found.
"""

from __future__ import annotations

from tests.browser.ui import box, open_tab, shot, titles, wait_for_results


def test_an_italian_example_finds_red_circles(page):
    open_tab(page, "text", "Text search")
    page.get_by_text("un grande cerchio rosso a sinistra", exact=True).first.click()
    wait_for_results(page, "text-results", 12)
    found = titles(page, "text-results")
    assert sum("red circle" in title for title in found[:5]) >= 4, found
    shot(page, "text-search-italian")


def test_a_change_asked_in_german_changes_the_colour(page):
    """The test split's first colour edit, its request in German as the generator writes it: the
    stored target (the circle turned yellow, the triangle kept) is among the first three."""
    open_tab(page, "composed", "Composed search")
    box(page, "ref-item").fill("test-0000-img0")  # an orange triangle and an orange circle
    box(page, "ref-text").fill("male den Kreis gelb an")
    box(page, "ref-text").press("Enter")
    wait_for_results(page, "composed-results", 12)
    found = titles(page, "composed-results")
    assert "orange triangle, yellow circle" in found[:3], found
    assert all("yellow" in title for title in found[:3]), found
    shot(page, "composed-german")
