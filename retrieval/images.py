"""Safe image decoding: every image that enters the system (files, uploads, bytes) passes here.

Odd but valid images (CMYK, 16-bit, palette, animated) are converted to RGB; corrupt ones,
decompression bombs and non-images raise `BadInput` with a message a person can act on.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from retrieval.config import DEFAULTS, ImageLimits
from retrieval.errors import BadInput, TooLarge

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
ImageFile.LOAD_TRUNCATED_IMAGES = False

ImageSource = str | Path | bytes | Image.Image


# Errors Pillow's decoders raise on malformed files besides OSError/ValueError (found by fuzzing).
_DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images: map the finite value range onto 0..255."""
    array = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.any():
        return Image.new("L", image.size, 0)
    low, high = float(array[finite].min()), float(array[finite].max())
    span = (high - low) or 1.0
    scaled = (np.where(finite, array, low) - low) / span * 255.0
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated: the first frame stands for the image
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _stretch_to_8bit(image)
    if image.mode in ("La", "RGBa"):  # premultiplied alpha: undo it before compositing
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    if image.mode in ("P", "LA", "PA") or (image.mode == "RGBA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def open_image(source: ImageSource, limits: ImageLimits = DEFAULTS.image_limits) -> Image.Image:
    """Decode to RGB, refusing bombs and broken files."""
    max_pixels = limits.max_pixels
    if isinstance(source, Image.Image):
        _check_pixels("image", source.size, max_pixels)
        try:
            return _to_rgb(source)
        except _DECODER_ERRORS as error:
            raise BadInput(f"image could not be converted to RGB ({error})") from error
    name = "uploaded image" if isinstance(source, bytes) else Path(source).name
    if isinstance(source, bytes):
        if len(source) > limits.max_mb * 1024 * 1024:
            raise TooLarge(f"{name}: larger than {limits.max_mb} MB (SR_MAX_IMAGE_MB)")
        if not source:
            raise BadInput(f"{name}: the file is empty")
        stream = io.BytesIO(source)
    else:
        stream = source
    try:
        # No warnings.catch_warnings() here: it swaps global state and is not thread-safe;
        # _check_pixels refuses bombs from the header before anything is decoded.
        with Image.open(stream) as image:
            _check_pixels(name, image.size, max_pixels)
            image.load()
            return _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise TooLarge(  # PIL refuses beyond twice its own limit, before our check can run
            f"{name}: more than {limits.max_pixels:,} pixels, the limit (SR_MAX_IMAGE_PIXELS); "
            "downscale the image and try again"
        ) from error
    except UnidentifiedImageError as error:
        raise BadInput(f"{name}: not an image file PIL can read") from error
    except FileNotFoundError as error:
        raise BadInput(f"{name}: file not found") from error
    except BadInput:
        raise
    except _DECODER_ERRORS as error:
        raise BadInput(f"{name}: corrupt or truncated image ({error})") from error


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse before decoding: the header's size is all a decompression bomb needs to reveal."""
    width, height = size
    if width * height > max_pixels:
        raise TooLarge(
            f"{name}: {width}x{height} pixels is more than the limit of {max_pixels:,} "
            "(SR_MAX_IMAGE_PIXELS); downscale the image and try again"
        )


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.BICUBIC)
    return copy


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
