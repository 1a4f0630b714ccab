"""What a person sees and does in the app, as Playwright calls: open a tab, type, count the
result images actually on screen, read the messages."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from retrieval.config import SHAPES_INDEX_DIR

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
    "map": "map-query",
    "duplicates": "find-duplicates",
}


def box(page, elem_id: str):
    """The textbox or textarea inside a component."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def wait_for_results(page, gallery_id: str, count: int | None = None) -> None:
    """Until the gallery holds loaded images (exactly `count` of them when given). Images the
    browser loads lazily are scrolled to, as a person scrolls down a phone to see them."""
    page.wait_for_function(
        """([id, count]) => {
          const images = [...document.querySelectorAll(`#${id} img`)];
          const waiting = images.find((i) => !(i.complete && i.naturalWidth > 0));
          if (waiting && waiting.loading === 'lazy') waiting.scrollIntoView({block: 'nearest'});
          return images.length > 0 && (count === null || images.length === count) && !waiting;
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


VAL = SHAPES_INDEX_DIR.parent / "val"  # Shapes scenes the shipped index has never seen
CLASS_SET = {  # file: (title, artist, year), as a teacher's metadata sheet gives them
    "dev-0001-img1.png": ("Red star print", "Anna", "1650"),
    "dev-0026-img5.png": ("Blue circle poster", "Bruno", "1590"),
    "dev-0023-img5.png": ("Green circle card", "Anna", "1720"),
    "dev-0004-img3.png": ("Blue square tile", "Bruno", "1610"),
}


def class_zip(tmp_path: Path) -> tuple[Path, Path]:
    """(a zip of four Shapes scenes, their metadata.csv with titles, artists and years)."""
    archive = tmp_path / "class-set.zip"
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "file", "title", "artist", "date"])
    with zipfile.ZipFile(archive, "w") as opened:
        for number, (file, (title, artist, year)) in enumerate(CLASS_SET.items()):
            opened.write(VAL / file, f"class-set/{file}")
            writer.writerow([f"work-{number}", file, title, artist, year])
    metadata = tmp_path / "metadata.csv"
    metadata.write_text(rows.getvalue())
    return archive, metadata


def upload_collection(page, archive: Path, metadata: Path, name: str = "class-set") -> None:
    """Index a zip in "Your collection" and wait until every tab shows it."""
    open_tab(page, "upload", "Your collection")
    page.locator("#upload-zip input[type=file]").set_input_files(str(archive))
    page.locator("#upload-metadata input[type=file]").set_input_files(str(metadata))
    box(page, "upload-name").fill(name)
    page.locator("#upload-button").click()
    page.wait_for_function(
        "() => document.querySelector('#upload-status').innerText.includes('Indexed')"
    )
    page.wait_for_function(
        "() => document.querySelector('#collection-status').innerText.includes('Your upload')"
    )
