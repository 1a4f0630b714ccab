"""A small collection for the UI tests: generated scenes, a random micro CLIP, a real index.

The phi/combiner weights are not needed: "sum" composed search is always there, which is what
the UI's method selector must list at minimum.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageDraw

from retrieval.backbone import load_backbone
from retrieval.catalog import Catalog, CollectionSpec
from retrieval.index import build_index

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, size: int = 48) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    box = (8, 8, size - 8, size - 8)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(size // 2, 6), (size - 6, size - 6), (6, size - 6)], fill=COLOURS[colour])
    return image


def make_images(folder: Path) -> Path:
    """Nine scenes with a metadata CSV (artists, dates, a source link)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        file = f"{colour}_{shape}.png"
        draw(colour, shape).save(folder / file)
        rows.append(
            {
                "id": f"{colour}-{shape}",
                "file": file,
                "title": f"A {colour} {shape}",
                "artist": "Anna" if number % 2 else "Bruno",
                "date": str(1800 + 10 * number),
                "description": f"a {colour} {shape} on a pale ground",
                "url": f"https://example.org/items/{colour}-{shape}",
            }
        )
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def make_catalog(root: Path, model_dir: Path) -> Catalog:
    """A catalog with one local collection and one Hub entry that cannot load offline."""
    backbone = load_backbone(str(model_dir), device="cpu")
    images = make_images(root / "images")
    build_index(images, root / "index", backbone, progress=False)
    return Catalog(
        [
            CollectionSpec(
                name="scenes",
                title="Test scenes",
                index=str(root / "index"),
                description="generated for the UI tests",
                vocabulary="heritage",
                examples=["a red circle", "a blue square"],
            ),
            CollectionSpec(
                name="remote",
                title="Remote (Hub only)",
                index="hf-hub:smart-retrieval/does-not-exist-index",
            ),
        ]
    )


class ServedApp:
    """The full app (REST API + Gradio UI) served by uvicorn in a thread, on a free local port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="warning",
                ws="none",
                # clients (gradio_client, browsers) keep event streams open: do not wait for them
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = None

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the app's server thread did not stop"
