"""Readers for the exact CIRR, FashionIQ and CIRCO layouts, and the on-disk image feature cache.

The builders below write tiny datasets in each benchmark's on-disk format (images drawn on the fly);
the Combiner and evaluation tests reuse them.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from retrieval.data import features as features
from retrieval.data.composed import fashioniq_caption, read_circo, read_cirr, read_fashioniq
from retrieval.data.features import FeatureCache
from retrieval.errors import BadInput, NotFound
from tests.fabricated import look, make_circo, make_cirr, make_fashioniq


def test_cirr_reader_reads_rc2_layout(tmp_path):
    root = make_cirr(tmp_path)
    val = read_cirr(root, "val")
    assert val.dataset == "cirr" and val.split == "val" and val.labelled and val.exclude_reference
    assert len(val.queries) == 6 and len(val.gallery) == 8
    first = val.queries[0]
    assert first.reference == "dev-0-0-img0" and first.targets == ["dev-0-0-img1"]
    assert first.members == [f"dev-0-0-img{k}" for k in range(4)]
    assert val.images[first.reference] == (root / "dev" / "dev-0-0-img0.png").resolve()
    train = read_cirr(root, "train")
    assert (
        train.images["train-2-0-img1"].parent.name == "2"
    )  # train images live in numbered folders
    assert read_cirr(root, "dev").split == "val"  # CIRR's own folder name is accepted


def test_cirr_test_split_has_no_targets_and_aliases(tmp_path):
    test = read_cirr(make_cirr(tmp_path), "test")
    assert test.split == "test1" and not test.labelled
    assert all(query.members for query in test.queries)


def test_cirr_reader_errors_are_actionable(tmp_path):
    root = make_cirr(tmp_path)
    with pytest.raises(NotFound, match="found: .*test1"):
        read_cirr(root, "nope")
    rows = json.loads((root / "captions" / "cap.rc2.val.json").read_text())
    rows[0]["target_hard"] = "dev-9-9-img9"
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(rows))
    with pytest.raises(BadInput, match="dev-9-9-img9"):
        read_cirr(root, "val")


def test_fashioniq_reader_and_caption_protocol(tmp_path):
    root = make_fashioniq(tmp_path)
    dress = read_fashioniq(root, "dress", "val")
    assert not dress.exclude_reference and dress.category == "dress" and len(dress.queries) == 5
    assert dress.gallery == [f"dv{i:03d}" for i in range(5)]
    assert dress.images["dv000"].suffix == ".jpg"
    assert read_fashioniq(root, "shirt", "val").images["sv000"].suffix == ".png"
    query = dress.queries[0]
    assert dress.query_text(query) == f"Is {look(1)[0]} and has a {look(1)[1]} print"
    variants = dress.training_texts(query)
    assert variants == [
        f"Is {look(1)[0]} and has a {look(1)[1]} print",
        f"Has a {look(1)[1]} print and is {look(1)[0]}",
        f"Is {look(1)[0]}",
        f"Has a {look(1)[1]} print",
    ]
    with pytest.raises(BadInput, match="category"):
        read_fashioniq(root, "shoes", "val")


def test_fashioniq_caption_handles_empty_second_caption():
    assert fashioniq_caption(["is red.", ""], "both") == "Is red"
    assert fashioniq_caption(["is red.", ""], "second") == "Is red"


@pytest.mark.parametrize("with_info", [True, False])
def test_circo_reader(tmp_path, with_info):
    root = make_circo(tmp_path, with_info=with_info)
    val = read_circo(root, "val")
    assert len(val.gallery) == 12 and val.exclude_reference and val.labelled
    first = val.queries[0]
    assert first.reference == "1000" and first.targets == ["1037", "1111", "1185"]
    assert val.images["1000"].name == "000000001000.jpg"
    assert first.extra["shared_concept"] == "a shape"
    test = read_circo(root, "test")
    assert not test.labelled and len(test.queries) == 3


# --------------------------------------------------------------------------- feature cache


@pytest.fixture
def counted_embedding(monkeypatch):
    """Counts the images actually embedded (the real embedding still runs)."""
    calls = []
    real = features.embed_image_paths

    def counting(backbone, paths, *args, **kwargs):
        calls.append(len(paths))
        return real(backbone, paths, *args, **kwargs)

    monkeypatch.setattr(features, "embed_image_paths", counting)
    return calls


def test_feature_cache_reuses_and_invalidates(tmp_path, micro_backbone, counted_embedding):
    root = make_cirr(tmp_path / "cirr", {"val": 2})
    split = read_cirr(root, "val")
    paths = [split.images[name] for name in split.gallery]
    cache_dir = tmp_path / "cache"
    first = features.image_features(micro_backbone, paths, cache_dir, progress=False)
    assert counted_embedding == [8]
    again = features.image_features(micro_backbone, paths[::-1], cache_dir, progress=False)
    assert counted_embedding == [8]  # nothing re-embedded, order follows the request
    assert torch.allclose(again, first.flip(0))
    assert torch.allclose(first, torch.from_numpy(micro_backbone.encode_images(paths)), atol=1e-5)
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    features.image_features(micro_backbone, paths, cache_dir, progress=False)
    assert counted_embedding == [8, 1]  # only the changed file
    padded = micro_backbone.with_preprocessing("squarepad")
    assert (
        FeatureCache(padded, cache_dir).directory
        != FeatureCache(micro_backbone, cache_dir).directory
    )


def test_feature_cache_key_changes_with_weights(micro_backbone):
    import copy

    from retrieval.backbone import Backbone

    changed = copy.deepcopy(micro_backbone.model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    other = Backbone(
        micro_backbone.spec,
        changed,
        micro_backbone.base_transform,
        micro_backbone.tokenizer,
        micro_backbone.device,
    )
    assert (
        features.feature_cache_key(other)["weights"]
        != features.feature_cache_key(micro_backbone)["weights"]
    )


def test_unreadable_image_is_an_error(tmp_path, micro_backbone):
    root = make_cirr(tmp_path / "cirr", {"val": 1})
    split = read_cirr(root, "val")
    split.images["dev-0-0-img2"].write_bytes(b"not an image")
    with pytest.raises(BadInput, match="could not be read"):
        features.image_features(
            micro_backbone, list(split.images.values()), cache=False, progress=False
        )
