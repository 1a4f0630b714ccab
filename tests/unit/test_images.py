"""Safe decoding: odd but valid images become RGB; broken, hostile or huge ones raise BadInput."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retrieval.config import ImageLimits, Settings
from retrieval.errors import BadInput, TooLarge
from retrieval.images import open_image
from tests.helpers import draw_scene, png_header_only


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


SCENE = draw_scene("red", "circle", size=32)
VALID = {
    "png": encode(SCENE, "PNG"),
    "jpeg": encode(SCENE, "JPEG"),
    "gif": encode(SCENE.convert("P"), "GIF"),
    "bmp": encode(SCENE, "BMP"),
    "tiff": encode(SCENE, "TIFF"),
    "webp": encode(SCENE, "WEBP"),
}


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours():
    decoded = open_image(encode(SCENE.convert("CMYK"), "JPEG", quality=95))
    assert decoded.mode == "RGB" and decoded.size == SCENE.size
    centre = np.asarray(decoded)[16, 16].astype(int)
    assert abs(centre - np.array([220, 30, 30])).max() < 40


def test_an_exif_rotated_jpeg_is_upright():
    """Phones store pixels as the sensor saw them plus an orientation tag: honour the tag."""
    upright = np.zeros((16, 32, 3), np.uint8)
    upright[:, :16] = (220, 30, 30)  # red on the left, blue on the right
    upright[:, 16:] = (40, 60, 220)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = np.asarray(open_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes())))
    assert decoded.shape == (16, 32, 3)
    assert decoded[8, 4, 0] > 180 and decoded[8, 4, 2] < 80  # red left
    assert decoded[8, 28, 2] > 180 and decoded[8, 28, 0] < 80  # blue right


def test_sixteen_bit_png_keeps_its_contrast():
    ramp = (np.arange(64 * 8, dtype=np.uint16).reshape(8, 64) * 120).astype(np.uint16)
    decoded = np.asarray(open_image(encode(Image.fromarray(ramp), "PNG")))
    assert decoded.shape == (8, 64, 3)
    assert decoded[..., 0].min() == 0 and decoded[..., 0].max() == 255  # stretched, not clipped


def test_float_tiff_with_nan_does_not_produce_garbage():
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    decoded = np.asarray(open_image(encode(Image.fromarray(values, mode="F"), "TIFF")))
    assert decoded.dtype == np.uint8 and decoded[7, 7, 0] == 255 and decoded[0, 1, 0] <= 5


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    data = encode(image, "PNG", transparency=0)
    decoded = np.asarray(open_image(data))
    assert tuple(decoded[0, 0]) == (255, 0, 0) and tuple(decoded[0, 7]) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 0, 255), (255, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = np.asarray(open_image(data))
    assert decoded[4, 4, 2] > 200 and decoded[4, 4, 0] < 60


def test_premultiplied_and_grey_alpha_modes_convert():
    for mode in ("LA", "La", "RGBa", "PA", "I;16", "1"):
        assert open_image(Image.new(mode, (4, 4))).mode == "RGB"


def test_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(TooLarge, match="40,000,000 pixels, the limit .SR_MAX_IMAGE_PIXELS"):
        open_image(png_header_only(30_000, 30_000))  # 900 Mpx: past PIL's own guard too
    with pytest.raises(TooLarge, match="limit"):
        open_image(VALID["png"], ImageLimits(max_pixels=100, max_mb=20))


def test_oversized_and_empty_bytes():
    one_mb = Settings(max_image_mb=1).image_limits
    with pytest.raises(TooLarge, match="1 MB"):
        open_image(b"\0" * (1024 * 1024 + 1), one_mb)
    assert open_image(VALID["png"], one_mb).mode == "RGB"
    with pytest.raises(BadInput, match="empty"):
        open_image(b"")


def test_non_images_and_truncated_files_raise_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not an image"):
        open_image(b"%PDF-1.4 not a picture")
    with pytest.raises(BadInput, match="corrupt or truncated"):
        open_image(VALID["jpeg"][: len(VALID["jpeg"]) // 2])
    with pytest.raises(BadInput, match="not found"):
        open_image(tmp_path / "missing.png")
    pickle_like = tmp_path / "evil.png"
    pickle_like.write_bytes(b"\x80\x04\x95cos\nsystem\n")
    with pytest.raises(BadInput):
        open_image(pickle_like)


def _assert_rgb_or_bad_input(data: bytes) -> None:
    try:
        image = open_image(data, ImageLimits(max_pixels=1_000_000, max_mb=20))
    except BadInput:
        return
    assert image.mode == "RGB" and image.width * image.height <= 1_000_000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _assert_rgb_or_bad_input(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(VALID)),
    cut=st.integers(min_value=0, max_value=4096),
    flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
)
def test_fuzz_truncated_and_mutated_valid_files(fmt, cut, flips):
    data = bytearray(VALID[fmt][: max(1, len(VALID[fmt]) - cut % len(VALID[fmt]))])
    for position, value in flips:
        data[position % len(data)] = value
    _assert_rgb_or_bad_input(bytes(data))
