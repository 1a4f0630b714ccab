"""Seeing the whole collection. A teacher's journey through "why": search, read why these
results stand out, open a result, see where it and the query lie on the collection map, place
another description, zoom in. A cataloguer's: upload a box of scans with copies in it, find the
copies (and not the look-alike), and mark a group "not duplicates"."""

from __future__ import annotations

import csv
import zipfile

from retrieval.shapes.world import ShapeObject, make_scene, render
from tests.browser.ui import (
    box,
    in_view,
    open_tab,
    shot,
    text_of,
    titles,
    upload_collection,
    visible_images,
    wait_for_results,
)
from tests.helpers import copies_of

MAP_LEGEND = "#map-plot"


def test_search_see_why_then_follow_a_result_onto_the_map(page):
    open_tab(page, "text", "Text search")
    box(page, "text-query").fill("a large red circle")
    box(page, "text-query").press("Enter")
    wait_for_results(page, "text-results", 12)
    page.wait_for_function(
        "() => document.querySelector('#text-why-note')?.innerText.includes('of 1024 items')"
    )
    why = text_of(page, "text-why-note")
    assert "The top 12 of 1024 items score" in why and "standard deviations" in why
    plot = page.locator("#text-why-plot img").first
    plot.wait_for(state="visible")
    assert plot.bounding_box()["width"] > 200  # a real plot, not an icon
    page.locator("#text-results img").first.click()
    page.locator("#show-on-map").click()
    page.wait_for_function(
        "() => document.querySelector('#map-caption')?.innerText.includes('top 12 results')"
    )
    wait_for_results(page, "map-results", 12)
    assert "a large red circle" in text_of(page, "map-caption")
    assert "UMAP" in text_of(page, "map-note")
    legend = page.locator(MAP_LEGEND)
    assert in_view(page, legend) or legend.scroll_into_view_if_needed() is None
    for group in ("top results", "your query", "selected item"):
        page.locator(MAP_LEGEND).get_by_text(group, exact=True).first.wait_for(state="visible")
    shot(page, "map-after-search")


def test_place_a_description_on_the_map_and_zoom_into_a_band(page):
    open_tab(page, "map", "Map")
    box(page, "map-query").fill("a large red circle")
    box(page, "map-query").press("Enter")
    wait_for_results(page, "map-results", 12)
    found = titles(page, "map-results")
    assert sum("red circle" in title for title in found[:5]) >= 3, found
    legend = page.locator(MAP_LEGEND).get_by_text("top results", exact=True).first
    legend.wait_for(state="visible")  # the plot is drawn again with its colours: then drag
    chart = page.locator("#map-plot svg.marks").first
    chart.scroll_into_view_if_needed()
    area = chart.bounding_box()
    y = area["y"] + area["height"] / 2
    page.mouse.move(area["x"] + area["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 0.5, y, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('#map-caption')?.innerText.includes('items in this band')"
    )
    wait_for_results(page, "map-results")
    shot(page, "map-zoomed")


def scans_zip(tmp_path):
    """(a zip: one scene, four copies of it, the same scene drawn again, two other scenes;
    its metadata.csv)."""
    scene = make_scene([ShapeObject("left", "triangle", "blue", "large"),
                        ShapeObject("right", "square", "green", "large")])  # fmt: skip
    original = render(scene, 11)[0]
    images = {"original": original, **copies_of(original), "redrawn": render(scene, 12)[0]}
    images["other"] = render(make_scene([ShapeObject("centre", "circle", "yellow", "large")]), 5)[0]
    archive, metadata = tmp_path / "scans.zip", tmp_path / "metadata.csv"
    with zipfile.ZipFile(archive, "w") as opened, open(metadata, "w", newline="") as sheet:
        writer = csv.writer(sheet)
        writer.writerow(["id", "file", "title"])
        for name, image in images.items():
            image.save(tmp_path / f"{name}.png")
            opened.write(tmp_path / f"{name}.png", f"scans/{name}.png")
            writer.writerow([name, f"{name}.png", f"scan {name}"])
    return archive, metadata


def test_find_the_copies_in_an_upload_and_mark_a_group_not_duplicates(page, tmp_path):
    upload_collection(page, *scans_zip(tmp_path), name="scans")
    open_tab(page, "duplicates", "Duplicates")
    page.locator("#find-duplicates").click()
    wait_for_results(page, "duplicate-results", 5)
    assert "1 groups of copies (5 items) among 7 items" in text_of(page, "duplicate-summary")
    shown = titles(page, "duplicate-results")
    assert sorted(shown) == sorted(
        f"scan {n}" for n in ("original", "jpeg", "rotated", "cropped", "recoloured")
    )
    assert visible_images(page, "duplicate-results") == 5
    shot(page, "duplicates")
    page.locator("#not-duplicates").click()
    page.wait_for_function(
        "() => document.querySelector('#duplicate-summary')?.innerText.includes('No copies found')"
    )
    assert page.locator("#duplicate-results img").count() == 0
