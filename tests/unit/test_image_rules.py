"""Decoding's exact promises: pixel values after each conversion, the pixel limit's edge, and
messages that name the file and the setting. Found by mutation testing (bench/mutation_test.py):
each test fails for a one-line change that the broader decoding tests let through."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.config import ImageLimits
from retrieval.errors import BadInput, TooLarge
from retrieval.images import IMAGE_SUFFIXES, is_image_file, open_image, thumbnail

ROOMY = ImageLimits(max_pixels=10_000, max_mb=1)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_flat_high_bit_depth_image_is_black_not_an_error():
    flat = np.full((4, 6), 700, dtype=np.uint16)
    decoded = np.asarray(open_image(png(Image.fromarray(flat))))
    assert decoded.shape == (4, 6, 3) and decoded.max() == 0
    nan = Image.fromarray(np.full((3, 3), np.nan, dtype=np.float32), mode="F")
    assert np.asarray(open_image(nan)).max() == 0


def test_a_high_bit_depth_ramp_spans_0_to_255_evenly():
    ramp = Image.fromarray(np.array([[0, 1000, 2000, 3000, 4000]], dtype=np.int32), mode="I")
    assert np.asarray(open_image(ramp))[0, :, 0].tolist() == [0, 64, 128, 191, 255]
    floats = Image.fromarray(np.array([[-1.0, 0.0, np.inf, 1.0]], dtype=np.float32), mode="F")
    assert np.asarray(open_image(floats))[0, :, 0].tolist() == [
        0,
        128,
        0,
        255,
    ]  # inf: as the lowest


@pytest.mark.parametrize(
    "mode,pixel,expected",
    [
        ("RGBA", (200, 0, 0, 0), (255, 255, 255)),  # fully transparent: the white background
        ("RGBA", (200, 0, 0, 255), (200, 0, 0)),
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (90, 255), (90, 90, 90)),
        ("RGBa", (100, 0, 0, 255), (100, 0, 0)),
        ("La", (80, 255), (80, 80, 80)),
    ],
)
def test_transparency_is_composited_on_white(mode, pixel, expected):
    image = Image.new(mode, (2, 2), pixel)
    assert tuple(np.asarray(open_image(image))[0, 0]) == expected


def test_half_transparent_premultiplied_pixels_are_unpremultiplied_first():
    image = Image.new("RGBa", (1, 1), (100, 0, 0, 128))  # premultiplied: the colour is ~(200,0,0)
    red, green, _ = np.asarray(open_image(image))[0, 0].astype(int)
    assert abs(red - 227) <= 2 and abs(green - 127) <= 2  # 200 over white at 50%


def test_the_pixel_limit_is_inclusive_and_named():
    exact = Image.new("RGB", (100, 100))
    assert open_image(exact, ROOMY).size == (100, 100)
    assert open_image(png(exact), ROOMY).size == (100, 100)
    over = Image.new("RGB", (101, 100))
    message = "image: 101x100 pixels is more than the limit of 10,000 (SR_MAX_IMAGE_PIXELS); downscale the image and try again"
    with pytest.raises(TooLarge) as error:
        open_image(over, ROOMY)
    assert str(error.value) == message
    with pytest.raises(TooLarge, match="^uploaded image: 101x100 pixels"):
        open_image(png(over), ROOMY)


def test_byte_limits_are_inclusive_and_named():
    limit = ROOMY.max_mb * 1024 * 1024
    data = png(Image.new("RGB", (4, 4)))
    exactly = data + b"\0" * (limit - len(data))  # trailing bytes after the PNG end are ignored
    assert open_image(exactly, ROOMY).size == (4, 4)
    with pytest.raises(TooLarge) as error:
        open_image(exactly + b"\0", ROOMY)
    assert str(error.value) == "uploaded image: larger than 1 MB (SR_MAX_IMAGE_MB)"
    with pytest.raises(BadInput) as error:
        open_image(b"", ROOMY)
    assert str(error.value) == "uploaded image: the file is empty"


def test_messages_name_the_file(tmp_path):
    with pytest.raises(BadInput) as error:
        open_image(tmp_path / "gone.png")
    assert str(error.value) == "gone.png: file not found"
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(BadInput) as error:
        open_image(text)
    assert str(error.value) == "notes.png: not an image file PIL can read"
    truncated = tmp_path / "half.png"
    truncated.write_bytes(png(Image.new("RGB", (64, 64), (9, 9, 9)))[:60])
    with pytest.raises(BadInput, match=r"^half.png: corrupt or truncated image \("):
        open_image(truncated)
    with pytest.raises(BadInput, match=r"^half.png: corrupt"):
        open_image(str(truncated))  # a str path is a path too


def test_a_pil_image_that_cannot_convert_says_so(monkeypatch):
    image = Image.new("RGB", (2, 2))
    monkeypatch.setattr(
        Image.Image, "convert", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad mode"))
    )
    with pytest.raises(BadInput) as error:
        open_image(image)
    assert str(error.value) == "image could not be converted to RGB (bad mode)"


def test_an_animated_image_is_read_from_its_first_frame_even_when_left_on_another():
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((0, 0, 255), (255, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    opened.seek(1)
    assert tuple(np.asarray(open_image(opened))[0, 0]) == (0, 0, 255)


def test_thumbnails_fit_the_box_and_leave_the_original():
    image = Image.new("RGB", (300, 120), (10, 20, 30))
    small = thumbnail(image, 100)
    assert small.size == (100, 40) and image.size == (300, 120)
    assert thumbnail(Image.new("RGB", (50, 20)), 100).size == (50, 20)  # never enlarged


def test_image_files_are_known_by_suffix_in_any_case_and_hidden_ones_skipped():
    for suffix in IMAGE_SUFFIXES:
        assert is_image_file(Path(f"a{suffix}")) and is_image_file(Path(f"b{suffix.upper()}"))
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} == IMAGE_SUFFIXES
    assert not is_image_file(Path(".a.png")) and not is_image_file(Path("a.txt"))
    assert not is_image_file(Path("png"))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_every_high_bit_depth_mode_is_stretched_not_clipped(mode):
    image = Image.new(mode, (5, 1))
    image.putdata([0, 1000, 2000, 3000, 4000])
    assert np.asarray(open_image(image))[0, :, 0].tolist() == [0, 64, 128, 191, 255]


def test_a_transparent_palette_with_alpha_is_composited_on_white():
    image = Image.new("PA", (2, 1))
    image.putpalette([200, 0, 0] * 256)
    image.putdata([(0, 0), (0, 255)])
    assert np.asarray(open_image(image))[0].tolist() == [[255, 255, 255], [200, 0, 0]]


def test_a_bomb_past_pils_own_guard_gets_the_same_advice():
    from tests.helpers import png_header_only

    with pytest.raises(TooLarge) as error:
        open_image(png_header_only(30_000, 30_000))
    assert str(error.value) == (
        "uploaded image: more than 40,000,000 pixels, the limit (SR_MAX_IMAGE_PIXELS); "
        "downscale the image and try again"
    )
