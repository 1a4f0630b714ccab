"""What the number on a composed result means, as a person reads it under the results, at a
phone's and a desktop's width: the Combiner's first, then the baseline's once it is chosen."""

from __future__ import annotations

from tests.browser.ui import (
    box,
    captions,
    in_view,
    open_tab,
    shot,
    text_of,
    wait_for_results,
)

NOTE = "composed-score-note"


def choose_method(page, name: str) -> None:
    page.locator("#composed-method input").click()
    page.get_by_role("option", name=name, exact=True).click()


def visible_note(page) -> str:
    note = page.locator(f"#{NOTE}")
    note.scroll_into_view_if_needed()
    assert note.is_visible() and in_view(page, note)
    return text_of(page, NOTE)


def wait_for_note(page, words: str) -> None:
    page.wait_for_function(
        "([id, words]) => document.querySelector(`#${id}`)?.innerText.includes(words)",
        arg=[NOTE, words],
    )


def test_the_note_says_what_the_combiners_number_means_then_the_baselines(page):
    open_tab(page, "composed", "Composed search")
    page.get_by_role("button", name="Pick a random reference").click()
    page.wait_for_function(  # the picked item's id fills the box, its image the reference
        "() => document.querySelector('#ref-item textarea, #ref-item input')?.value.length > 0"
    )
    assert page.locator("#composed-method input").input_value() == "combiner"
    box(page, "ref-text").fill("make it blue")
    page.locator("#composed-search").click()
    wait_for_results(page, "composed-results", 12)
    wait_for_note(page, "Combiner")
    combiner = visible_note(page)
    for words in ("cosine similarity", "fusing the reference image with your change"):
        assert words in combiner, combiner
    assert "from -1 to 1" in combiner and "higher means closer" in combiner
    assert "own scale" in combiner and "within one Combiner search" in combiner
    combiner_scores = captions(page, "composed-results")
    shot(page, "composed-score-note-combiner")

    choose_method(page, "sum")
    wait_for_note(page, "baseline")
    baseline = visible_note(page)
    assert "Combiner" not in baseline and "added" in baseline, baseline
    assert "from -1 to 1" in baseline and "within one baseline search" in baseline
    page.locator("#composed-search").click()  # after the baseline's own search it still says so
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('#composed-results img')]"
        ".map((image) => image.alt).join('|') !== before",
        arg="|".join(combiner_scores),
    )
    wait_for_results(page, "composed-results", 12)
    assert visible_note(page) == baseline
    shot(page, "composed-score-note-baseline")
