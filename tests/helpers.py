"""Small builders shared by tests: generated image folders in the formats the project reads."""

from __future__ import annotations

import atexit
import csv
import io
import json
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}


def draw_scene(colour: str, shape: str, size: int = 48, jitter: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    box = (8 + jitter, 8 + jitter, size - 8 + jitter, size - 8 + jitter)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.rectangle(box, fill=COLOURS[colour])
    return image


def make_collection(root: Path, with_metadata: bool = True) -> Path:
    """Eight images in two sub-folders plus a CSV with artists and dates."""
    rows = []
    for number, (colour, shape) in enumerate(
        [(c, s) for c in COLOURS for s in ("circle", "square")]
    ):
        folder = root / ("round" if shape == "circle" else "angular")
        folder.mkdir(parents=True, exist_ok=True)
        file = f"{folder.name}/{colour}_{shape}.png"
        draw_scene(colour, shape, jitter=number % 3).save(root / file)
        rows.append(
            {
                "id": f"{colour}-{shape}",
                "file": file,
                "title": f"A {colour} {shape}",
                "artist": "Anna" if number % 2 else "Bruno",
                "date": f"c. {1500 + 50 * number}",
                "description": f"painting of a {colour} {shape} on a pale ground",
                "museum_room": f"room {number}",
            }
        )
    if with_metadata:
        with open(root / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def shipped_shapes_recall(
    method: str, runtime: str | None = None, language: str = "en"
) -> dict[str, dict[str, float]]:
    """CIRR metrics of `shipped_shapes_results`."""
    results = shipped_shapes_results(method, runtime, language)
    return {name: result.metrics for name, result in results.items()}


def shipped_shapes_results(method: str, runtime: str | None = None, language: str = "en") -> dict:
    """CIRR results (metrics and per-query target ranks) on the shipped Shapes test split for
    image-only, text-only, sum and one composed method of the shipped Shapes collection, as the
    app serves it: the index's PyTorch vectors for the gallery and the references, the
    collection's runtime (or `runtime`) for the query texts, the edit requests in `language`."""
    from retrieval.catalog import Catalog, composers_for
    from retrieval.composed.baselines import image_only_composer, sum_composer, text_only_composer
    from retrieval.config import ROOT
    from retrieval.data.composed import read_cirr
    from retrieval.data.features import split_features
    from retrieval.eval.composed import evaluate_split

    spec = Catalog.from_file(ROOT / "collections.json").specs["shapes"]
    from retrieval.shapes.languages import split_in_language
    from retrieval.shapes.world import read_scenes

    test = read_cirr(ROOT / "precomputed" / "shapes", "test")
    if language != "en":
        test = split_in_language(test, read_scenes(ROOT / "precomputed" / "shapes"), language)
    features = split_features(test, shipped_backbone("torch"), cache=False, progress=False)
    backbone = shipped_backbone(runtime or spec.runtime)
    composers = {
        "image": image_only_composer,
        "text": text_only_composer,
        "sum": sum_composer,
        method: composers_for(spec)[method],
    }
    return {
        name: evaluate_split(test, backbone, composer, features, progress=False)
        for name, composer in composers.items()
    }


def shipped_description_recall(runtime: str, language: str = "en") -> dict[str, float]:
    """Text -> image R@1/R@10 of every shipped test scene's canonical description in `language`,
    over the shipped index's vectors, the texts encoded on `runtime`."""
    import numpy as np
    import torch

    from retrieval.config import ROOT
    from retrieval.eval.metrics import feature_ranks, recall_at_k
    from retrieval.index import Index
    from retrieval.shapes.languages import describe
    from retrieval.shapes.world import read_metadata_rows, scene_of_row

    root = ROOT / "precomputed" / "shapes"
    index = Index.load(root / "index")
    rows = read_metadata_rows(root, "test")
    positions = [index.position(row["id"]) for row in rows]
    gallery = torch.from_numpy(np.asarray(index.vectors)[positions])
    descriptions = [describe(scene_of_row(row), language) for row in rows]
    texts = torch.from_numpy(shipped_backbone(runtime).encode_texts(descriptions))
    return recall_at_k(feature_ranks(texts, gallery, torch.arange(len(positions))), ks=(1, 10))


def shipped_backbone(runtime: str = "torch"):
    """The shipped Shapes CLIP; ONNX exports go to one folder per test session."""
    from retrieval.backbone import load_backbone
    from retrieval.config import SHAPES_MODEL_DIR

    return load_backbone(str(SHAPES_MODEL_DIR), device="cpu", runtime=runtime, cache_dir=EXPORTS)


EXPORTS = tempfile.mkdtemp(prefix="sr-test-onnx-")
atexit.register(shutil.rmtree, EXPORTS, True)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- copies of an image, as a collection gets them (for the near-duplicate tests) ------------
def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def centre_crop(image: Image.Image, share: float) -> Image.Image:
    width, height = image.size
    w, h = round(width * share), round(height * share)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h)).resize(image.size, Image.Resampling.BICUBIC)


def recoloured(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(1.15)
    image = ImageEnhance.Contrast(image).enhance(0.85)
    return ImageEnhance.Color(image).enhance(1.2)


def copies_of(image: Image.Image) -> dict[str, Image.Image]:
    """Four copies of one image: re-encoded, turned, cropped, recoloured."""
    return {
        "jpeg": jpeg(image, 30),
        "rotated": image.rotate(10, Image.Resampling.BICUBIC, fillcolor=image.getpixel((0, 0))),
        "cropped": centre_crop(image, 0.85),
        "recoloured": recoloured(image),
    }


SEARLE_LICENCE = "CC BY-NC 4.0"


def licensed_collections(folder: Path) -> Path:
    """A collections.json serving the shipped Shapes collection as "licensed", its phi recorded
    as converted weights under SEARLE's licence (what `convert searle` writes)."""
    root = Path(__file__).resolve().parents[1]
    phi = folder / "phi"
    shutil.copytree(root / "precomputed/shapes-phi", phi)
    config = json.loads((phi / "phi_config.json").read_text())
    (phi / "phi_config.json").write_text(json.dumps({**config, "licence": SEARLE_LICENCE}))
    entry = {
        "name": "licensed",
        "title": "Shapes, licensed zero-shot",
        "index": str(root / "precomputed/shapes/index"),
        "combiner": str(root / "precomputed/shapes-combiner"),
        "phi": str(phi),
    }
    (folder / "collections.json").write_text(json.dumps({"collections": [entry]}))
    return folder / "collections.json"
