"""What a person sees and does in the app, as Playwright calls: open a tab, type, count the
result images actually on screen, read the messages."""

from __future__ import annotations

from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

# Counts the images a person can see: each is scrolled to, and must then be the element under
# its own centre (not clipped by a scrolling box, covered, or pushed off the side of the page).
_VISIBLE_IMAGES = """(selector) => {
  let seen = 0;
  for (const image of document.querySelectorAll(selector)) {
    image.scrollIntoView({block: 'center', inline: 'center'});
    const box = image.getBoundingClientRect();
    if (box.width < 24 || box.height < 24) continue;
    const x = box.left + box.width / 2, y = box.top + box.height / 2;
    if (x < 0 || y < 0 || x > window.innerWidth || y > window.innerHeight) continue;
    if (box.left < -1 || box.right > document.documentElement.clientWidth + 1) continue;
    const under = document.elementFromPoint(x, y);
    const item = image.closest('button, .thumbnail-item, .gallery-item') || image;
    if (under && (under === image || item.contains(under))) seen += 1;
  }
  window.scrollTo(0, 0);
  return seen;
}"""


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{page.screen_name}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def open_tab(page, tab_id: str, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).click()
    page.locator(f"#{FIRST_ELEMENT[tab_id]}").first.wait_for(state="visible")


FIRST_ELEMENT = {
    "gallery": "browse-gallery",
    "text": "text-query",
    "image": "image-item",
    "composed": "ref-item",
    "tagging": "tag-item",
    "explain": "explain-item",
    "upload": "upload-button",
}


def box(page, elem_id: str):
    """The textbox or textarea inside a component."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def wait_for_results(page, gallery_id: str, count: int | None = None) -> None:
    """Until the gallery holds loaded images (exactly `count` of them when given)."""
    page.wait_for_function(
        """([id, count]) => {
          const images = [...document.querySelectorAll(`#${id} img`)];
          return images.length > 0 && (count === null || images.length === count)
            && images.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=[gallery_id, count],
    )


def visible_images(page, gallery_id: str) -> int:
    return page.evaluate(_VISIBLE_IMAGES, f"#{gallery_id} img")


def captions(page, gallery_id: str) -> list[str]:
    """The results' alt texts, in order: "score · title" for searches, the title otherwise."""
    return page.locator(f"#{gallery_id} img").evaluate_all("images => images.map(i => i.alt)")


def titles(page, gallery_id: str) -> list[str]:
    return [caption.split(" · ", 1)[-1] for caption in captions(page, gallery_id)]


def messages(page) -> str:
    """The text of every message (toast) on screen."""
    return " | ".join(page.locator(".toast-body").all_inner_texts())


def wait_for_message(page, text: str) -> None:
    page.locator(".toast-body", has_text=text).first.wait_for(state="visible")


def text_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def in_view(page, locator) -> bool:
    """Whether some of the element lies within the window (after any scrolling the app did)."""
    found = locator.bounding_box()
    size = page.viewport_size
    return bool(found) and found["y"] < size["height"] and found["y"] + found["height"] > 0
