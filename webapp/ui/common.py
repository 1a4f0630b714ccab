"""Small helpers every tab uses: user errors as messages, result galleries, readable uploads.

The plain functions take a `Collection` and return plain data (gallery pairs, hit dicts), so they
are testable without Gradio or a browser.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from PIL import Image

from retrieval.catalog import Collection
from retrieval.errors import BadInput, RetrievalError
from retrieval.search import SearchResult

GALLERY_COLUMNS = 6
PAGE_SIZE = 24

GalleryItems = list[tuple[str, str]]

log = logging.getLogger(__name__)


# -- events ----------------------------------------------------------------------------------
def guarded(fn):
    """Errors a user can cause become a message box; anything else is logged, never a crash."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except RetrievalError as error:  # the user's to fix: one log line, no traceback
            log.info("UI %s: %s: %s", fn.__name__, type(error).__name__, error)
            raise gr.Error(str(error), title=type(error).__name__, print_exception=False) from error
        except Exception as error:
            log.exception("UI event %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong: {type(error).__name__}: {error}") from error

    return wrapper


def warn(notes: list[str]) -> None:
    for note in notes:
        gr.Warning(note)


def clicked_id(hits: list[dict] | None, evt: gr.SelectData) -> str:
    """The item id behind a clicked gallery image."""
    if not hits or evt.index is None or evt.index >= len(hits):
        raise gr.Error("that result is no longer shown; search again")
    return hits[evt.index]["id"]


# -- components ------------------------------------------------------------------------------
def readable_image(**options) -> gr.Image:
    """A file-path gr.Image whose unreadable uploads become a plain message, not a stack trace.

    image_mode=None: the file is handed over as it is (no conversion, so no full decode here);
    `retrieval.images` checks its size against SR_MAX_IMAGE_PIXELS before decoding it."""
    component = gr.Image(type="filepath", image_mode=None, **options)
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Image.DecompressionBombError as error:  # far past any limit: PIL's header check
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(
                f"{name}: too many pixels for this server (SR_MAX_IMAGE_PIXELS); downscale the "
                "image and try again"
            ) from error
        except (OSError, ValueError, SyntaxError) as error:
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(
                f"{name}: not an image file that can be read ({error.__class__.__name__})"
            ) from error

    component.preprocess = preprocess  # an instance attribute: no subclass, no generated .pyi
    return component


@contextmanager
def image_or_item(
    label: str, item_elem_id: str, webcam: bool = False
) -> Iterator[tuple[gr.Image, gr.Textbox]]:
    """An image input and beside it an item-id box; the tab's own controls go below the box."""
    sources = ["upload", "clipboard", "webcam"] if webcam else ["upload", "clipboard"]
    with gr.Row():
        image = readable_image(label=label, sources=sources, height=260)
        with gr.Column():
            item = gr.Textbox(label="…or an item of the collection (id)", elem_id=item_elem_id)
            yield image, item


def results_gallery(
    label: str, elem_id: str, json_title: str = "Results as JSON", json_label: str = "Hits"
) -> tuple[gr.Gallery, gr.JSON]:
    """A gallery of thumbnails and, folded away, the same hits as JSON."""
    gallery = gr.Gallery(
        label=label,
        columns=GALLERY_COLUMNS,
        allow_preview=False,
        elem_id=elem_id,
        elem_classes=["result-gallery"],
        height="auto",
    )
    with gr.Accordion(json_title, open=False):
        hits = gr.JSON(label=json_label)
    return gallery, hits


# -- hits and galleries ----------------------------------------------------------------------
def hit_record(collection: Collection, item_id: str, score: float | None, rank: int) -> dict:
    item = collection.index.item(item_id)
    record = {"id": item_id, "rank": rank, "title": str(item.get("title", item_id))}
    if score is not None:
        record["score"] = round(float(score), 4)
    return record


def hits_of(collection: Collection, result: SearchResult) -> list[dict]:
    return [hit_record(collection, hit.id, hit.score, hit.rank) for hit in result.hits]


def to_gallery(collection: Collection, hits: list[dict]) -> GalleryItems:
    """(thumbnail path, caption) pairs; thumbnails are served from the index folder as they are."""
    pairs = []
    for hit in hits:
        caption = hit["title"] if "score" not in hit else f"{hit['score']:.3f} · {hit['title']}"
        pairs.append((str(collection.index.thumb_path(hit["id"])), caption))
    return pairs


def empty_note(hits: list[dict], filters=None) -> list[str]:
    """Why a search found nothing, when it did not."""
    if hits:
        return []
    if filters is not None and not filters.is_empty():
        return ["no item matches the filters and the minimum score; loosen them"]
    return ["nothing scored above the minimum score; lower it"]


def minimum_score(value) -> float | None:
    """The slider's lowest value (-1) means no minimum."""
    return None if value is None or float(value) <= -1 else float(value)


def random_sample(
    collection: Collection, count: int = PAGE_SIZE, seed: int | None = None
) -> tuple[GalleryItems, list[dict]]:
    count = min(int(count), len(collection.index))
    positions = random.Random(seed).sample(range(len(collection.index)), count)
    hits = [
        hit_record(collection, collection.index.items[p]["id"], None, rank + 1)
        for rank, p in enumerate(positions)
    ]
    return to_gallery(collection, hits), hits


def pick_random(collection: Collection) -> tuple[str, str]:
    """(image path, id) of a random item, to fill an image input and its id box."""
    item_id = random_sample(collection, 1)[1][0]["id"]
    return str(collection.index.image_path(item_id)), item_id


# -- query images ----------------------------------------------------------------------------
def reference_of(image: str | None, item_id: str | None) -> str | Path:
    """An item id (str) when one is picked, else the uploaded image as a Path.

    The types follow `retrieval.search`: a string is always an item id, a file comes as a Path.
    """
    item_id = (item_id or "").strip()
    if item_id:
        return item_id
    if image:
        return Path(image)
    raise BadInput("give an image: upload one, or pick an item of the collection")
