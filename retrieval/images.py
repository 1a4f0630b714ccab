"""Safe image decoding: every image that enters the system (files, uploads, bytes) passes here.

Odd but valid images (CMYK, 16-bit, palette, animated) are converted to RGB; corrupt ones,
decompression bombs and non-images raise `BadInput` with a message a person can act on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from retrieval.config import get_settings
from retrieval.errors import BadInput, TooLarge

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
ImageFile.LOAD_TRUNCATED_IMAGES = False

ImageSource = str | Path | bytes | Image.Image


def _to_rgb(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated: the first frame stands for the image
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        span = float(array.max() - array.min()) or 1.0
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    if image.mode in ("P", "LA", "PA") or (image.mode == "RGBA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Decode to RGB, refusing bombs and broken files."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    settings = get_settings()
    max_pixels = max_pixels or settings.max_image_pixels
    name = "uploaded image" if isinstance(source, bytes) else Path(source).name
    if isinstance(source, bytes):
        if len(source) > settings.max_image_mb * 1024 * 1024:
            raise TooLarge(f"{name}: larger than {settings.max_image_mb} MB")
        if not source:
            raise BadInput(f"{name}: the file is empty")
        stream = io.BytesIO(source)
    else:
        stream = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise TooLarge(
                        f"{name}: {width}x{height} pixels is more than the limit of {max_pixels:,}"
                    )
                image.load()
                return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise TooLarge(f"{name}: too many pixels ({error})") from error
    except UnidentifiedImageError as error:
        raise BadInput(f"{name}: not an image file PIL can read") from error
    except FileNotFoundError as error:
        raise BadInput(f"{name}: file not found") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, BadInput):
            raise
        raise BadInput(f"{name}: corrupt or truncated image ({error})") from error


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.BICUBIC)
    return copy


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
