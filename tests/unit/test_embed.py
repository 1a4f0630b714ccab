"""Reduced-scale JPEG decoding in the embedding workers: same images, same errors, fewer pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retrieval.config import ImageLimits
from retrieval.embed import _ImageFiles, embed_files, open_reduced
from retrieval.errors import BadInput, TooLarge
from retrieval.images import open_image


def _photo(path, size=(1200, 900), fmt="JPEG"):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, format=fmt)
    return path


def test_large_jpeg_is_decoded_smaller_but_big_enough(tmp_path):
    path = _photo(tmp_path / "big.jpg")
    image = open_reduced(path, min_short=224, min_long=256)
    assert image.mode == "RGB"
    assert image.size[0] < 1200 and min(image.size) >= 224 and max(image.size) >= 256
    assert image.size[0] / image.size[1] == pytest.approx(1200 / 900, rel=0.01)


def test_small_jpeg_and_other_formats_are_decoded_in_full(tmp_path):
    small = _photo(tmp_path / "small.jpg", size=(300, 240))
    png = _photo(tmp_path / "big.png", size=(1200, 900), fmt="PNG")
    assert open_reduced(small, 224, 256).size == (300, 240)
    assert open_reduced(png, 224, 256).size == (1200, 900)


def test_errors_are_those_of_open_image(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(_photo(tmp_path / "ok.jpg").read_bytes()[:300])
    with pytest.raises(BadInput) as reduced_error:
        open_reduced(broken, 224, 256)
    with pytest.raises(BadInput) as full_error:
        open_image(broken)
    assert str(reduced_error.value) == str(full_error.value)
    with pytest.raises(TooLarge):
        open_reduced(tmp_path / "ok.jpg", 224, 256, ImageLimits(max_pixels=100_000, max_mb=20))


def test_model_input_matches_full_decode(tmp_path, micro_backbone):
    paths = [_photo(tmp_path / f"p{n}.jpg", size=(900 + 100 * n, 700)) for n in range(3)]
    full = _ImageFiles(paths, micro_backbone.transform, 256, None)
    reduced = _ImageFiles(paths, micro_backbone.transform, 256, micro_backbone.image_size)
    for position in range(len(paths)):
        difference = (full[position][1] - reduced[position][1]).abs().mean()
        assert float(difference) < 0.05


def test_embeddings_agree_and_failures_are_reported(tmp_path, micro_backbone):
    paths = [_photo(tmp_path / f"p{n}.jpg", size=(1000, 600 + 50 * n)) for n in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths.append(tmp_path / "bad.jpg")
    reduced = embed_files(micro_backbone, paths, batch_size=2, num_workers=0, progress=False)
    full = embed_files(
        micro_backbone, paths, batch_size=2, num_workers=0, progress=False, reduced_decode=False
    )
    assert reduced.ok == full.ok == [0, 1, 2, 3]
    assert [position for position, _ in reduced.failed] == [4]
    cosines = np.sum(reduced.vectors * full.vectors, axis=1)
    assert cosines.min() > 0.99
    assert all(Image.open(io.BytesIO(reduced.thumbs[p])).size[0] == 256 for p in reduced.ok)
