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

from retrieval.catalog import Collection
from retrieval.errors import BadInput, RetrievalError
from retrieval.search import SearchResult
from webapp.ui.i18n import t
from webapp.ui.image_input import ImageInput

GALLERY_COLUMNS = 6
PAGE_SIZE = 24

GalleryItems = list[tuple[str, str]]
# no "share": it posts to Spaces discussions and fails everywhere else
IMAGE_BUTTONS = ["download", "fullscreen"]

log = logging.getLogger(__name__)


# -- events ----------------------------------------------------------------------------------
def _explained(fn_name: str, error: Exception) -> tuple[str, str]:
    """(title, message) for a failed event: a user's mistake is one log line, a bug a traceback."""
    if isinstance(error, RetrievalError):
        log.info("UI %s: %s: %s", fn_name, type(error).__name__, error)
        return ERROR_TITLES.get(type(error).__name__, "Cannot do that"), str(error)
    log.exception("UI event %s failed", fn_name)
    return "Error", f"Something went wrong: {type(error).__name__}: {error}"


ERROR_TITLES = {"BadInput": "Check the input", "NotFound": "Not found", "TooLarge": "Too large"}


def guarded(fn):
    """For API endpoints: errors become gr.Error, which gradio_client raises as AppError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            title, message = _explained(fn.__name__, error)
            raise gr.Error(message, title=title, print_exception=False) from error

    return wrapper


def keeping(fn, outputs: int):
    """For UI events: an error becomes a message and every output keeps what it showed.

    (A raised gr.Error would cover each output with "Error" and hide the last good results.)"""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if isinstance(error, gr.Error):
                title, message = error.title or "Cannot do that", error.message
                log.info("UI %s: %s", fn.__name__, message)  # which event warned, for the logs
            else:
                title, message = _explained(fn.__name__, error)
            gr.Warning(message, title=title)
            return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))

    return wrapper


def listen(triggers, fn, inputs, outputs, api_name: str, **options):
    """Wire a UI event: `keeping` its outputs on errors, callable by gradio_client but left out
    of the API page and the MCP tools (the typed endpoints of `webapp.ui.endpoints` are those)."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    triggers = triggers if isinstance(triggers, list) else [triggers]
    options.setdefault("api_visibility", "undocumented")
    return gr.on(triggers, keeping(fn, len(outputs)), inputs, outputs, api_name=api_name, **options)


def updates(components: list, values) -> dict:
    """{component: value}: what a link's `open_view` shows, by component."""
    return dict(zip(components, values, strict=True))


def clearing(stale: dict):
    """A follower (see `webapp.ui.shell`) that empties these components for a new collection."""
    return list(stale), lambda _collection: tuple(stale.values())


def warn(notes: list[str]) -> None:
    for note in notes:
        gr.Warning(note)


def clicked_id(hits: list[dict] | None, evt: gr.SelectData) -> str:
    """The item id behind a clicked gallery image."""
    if not hits or evt.index is None or evt.index >= len(hits):
        raise gr.Error("that result is no longer shown; search again")
    return hits[evt.index]["id"]


# -- components ------------------------------------------------------------------------------
def readable_image(**options) -> ImageInput:
    """An image input whose upload the handler reads (see `webapp.ui.image_input`)."""
    return ImageInput(type="filepath", image_mode=None, buttons=IMAGE_BUTTONS, **options)


def large_image(label, elem_id: str, height: int = 360, **options) -> gr.Image:
    """An output image that fills its frame (64 px thumbnails and heatmaps included)."""
    return gr.Image(
        label=label,
        interactive=False,
        height=height,
        buttons=IMAGE_BUTTONS,
        elem_classes=["large-image"],
        elem_id=elem_id,
        **options,
    )


@contextmanager
def image_or_item(
    label, item_elem_id: str, webcam: bool = False
) -> Iterator[tuple[gr.Image, gr.Textbox]]:
    """An image input and beside it an item-id box; the tab's own controls go below the box."""
    sources = ["upload", "clipboard", "webcam"] if webcam else ["upload", "clipboard"]
    with gr.Row():
        image = readable_image(
            label=label,
            sources=sources,
            height=300,
            min_width=260,
            alt_text="the query image",
            elem_classes=["large-image"],
            elem_id=f"{item_elem_id}-image",
        )
        with gr.Column(min_width=260):
            item = gr.Textbox(label=t("or_item"), elem_id=item_elem_id)
            yield image, item


def item_image(collection: Collection, item_id: str | None):
    """What a tab's image box shows after a query: the item's image for an item id; for an
    upload, the box is left as it is."""
    item_id = (item_id or "").strip()
    return str(collection.index.image_path(item_id)) if item_id else gr.skip()


def wire_item_box(shell, image: gr.Image, item: gr.Textbox, name: str) -> None:
    """A typed item id shows that item in the image box (so you see what you query); an
    uploaded image clears the id (so the upload is what gets searched)."""

    def preview(collection_name, item_id, session):
        try:
            return item_image(shell.resolve(session, collection_name), item_id)
        except RetrievalError:  # half-typed or unknown: the search itself says so, once
            return gr.skip()

    listen(
        item.blur,
        preview,
        [shell.collection, item, shell.session],
        image,
        api_name=f"preview_{name}_item",
        api_visibility="private",
    )
    image.upload(lambda _: "", image, item, api_name=f"clear_{name}_item", api_visibility="private")


def results_gallery(
    label, elem_id: str, json_title=None, json_label=None
) -> tuple[gr.Gallery, gr.JSON]:
    """A gallery of thumbnails and, folded away, the same hits as JSON."""
    gallery = gr.Gallery(
        label=label,
        show_label=False,  # a label box would cover the first result (screen readers still read it)
        columns=GALLERY_COLUMNS,
        allow_preview=False,
        elem_id=elem_id,
        elem_classes=["result-gallery"],
        height="auto",
        buttons=["download_all", "fullscreen"],
    )
    with gr.Accordion(json_title or t("results_as_json"), open=False):
        hits = gr.JSON(label=json_label or t("hits"))
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
