"""Readers for the exact CIRR, FashionIQ and CIRCO layouts, and the on-disk image feature cache.

The builders below write tiny datasets in each benchmark's on-disk format (images drawn on the fly);
the Combiner and evaluation tests reuse them.
"""

from __future__ import annotations

import json
import os
from itertools import product
from pathlib import Path

import pytest
import torch

from retrieval.data import features as features
from retrieval.data.composed import fashioniq_caption, read_circo, read_cirr, read_fashioniq
from retrieval.data.features import FeatureCache
from retrieval.errors import BadInput, NotFound
from tests.helpers import COLOURS, draw_scene

LOOKS = list(product(COLOURS, ("circle", "square")))  # 8 distinct (colour, shape) pictures
CIRR_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}


def _look(index: int) -> tuple[str, str]:
    return LOOKS[index % len(LOOKS)]


def make_cirr(root: Path, sets: dict[str, int] | None = None, members: int = 4) -> Path:
    """CIRR rc2 layout: captions/cap.rc2.*.json, image_splits/split.rc2.*.json, images under train/dev/test1."""
    sets = sets or {"train": 4, "val": 2, "test1": 2}
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    pairid = 0
    for split, count in sets.items():
        prefix = CIRR_PREFIX[split]
        relpaths, rows = {}, []
        for set_index in range(count):
            folder = Path(prefix) / str(set_index) if split == "train" else Path(prefix)
            (root / folder).mkdir(parents=True, exist_ok=True)
            names = []
            for member in range(members):
                name = f"{prefix}-{set_index}-0-img{member}"
                colour, shape = _look(set_index + member)
                draw_scene(colour, shape, size=40, jitter=set_index % 4).save(
                    root / folder / f"{name}.png"
                )
                relpaths[name] = f"./{folder.as_posix()}/{name}.png"
                names.append(name)
            for member in range(1, members):
                colour, shape = _look(set_index + member)
                row = {
                    "pairid": pairid,
                    "reference": names[0],
                    "caption": f"make it a {colour} {shape}",
                    "img_set": {"id": set_index, "members": names, "reference_rank": 0},
                }
                if split != "test1":
                    row.update(target_hard=names[member], target_soft={names[member]: 1.0})
                    row["img_set"]["target_rank"] = member
                rows.append(row)
                pairid += 1
        (root / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(rows))
        (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(relpaths))
    return root


def make_fashioniq(root: Path, per_category: int = 5) -> Path:
    """FashionIQ layout: captions/cap.{cat}.{split}.json, image_splits/split.{cat}.{split}.json, images/."""
    for folder in ("captions", "image_splits", "images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for number, category in enumerate(("dress", "shirt", "toptee")):
        for split in ("train", "val"):
            ids = [f"{category[0]}{split[0]}{i:03d}" for i in range(per_category)]
            extension = ".png" if category == "shirt" else ".jpg"  # both are found
            for i, name in enumerate(ids):
                colour, shape = _look(i + number)
                draw_scene(colour, shape, size=36, jitter=i % 3).save(
                    root / "images" / f"{name}{extension}"
                )
            rows = [
                {
                    "candidate": ids[i],
                    "target": ids[(i + 1) % len(ids)],
                    "captions": [
                        f"is {_look(i + 1 + number)[0]}.",
                        f"has a {_look(i + 1 + number)[1]} print",
                    ],
                }
                for i in range(len(ids))
            ]
            (root / "captions" / f"cap.{category}.{split}.json").write_text(json.dumps(rows))
            (root / "image_splits" / f"split.{category}.{split}.json").write_text(json.dumps(ids))
    return root


def make_circo(root: Path, gallery: int = 12, with_info: bool = True) -> Path:
    """CIRCO layout: annotations/{val,test}.json and COCO2017_unlabeled (image_info + unlabeled2017/)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images = root / "COCO2017_unlabeled" / "unlabeled2017"
    images.mkdir(parents=True, exist_ok=True)
    ids = [1000 + 37 * i for i in range(gallery)]
    for i, image_id in enumerate(ids):
        draw_scene(*_look(i), size=36, jitter=i % 3).save(images / f"{image_id:012d}.jpg")
    if with_info:
        info = {
            "images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg"} for image_id in ids]
        }
        (root / "COCO2017_unlabeled" / "annotations").mkdir(exist_ok=True)
        (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(
            json.dumps(info)
        )
    val = [
        {
            "id": q,
            "reference_img_id": ids[q],
            "target_img_id": ids[q + 1],
            "relative_caption": f"is {_look(q + 1)[0]}",
            "shared_concept": "a shape",
            "gt_img_ids": [ids[q + 1], ids[q + 3], ids[q + 5]],
            "semantic_aspects": [],
        }
        for q in range(4)
    ]
    test = [
        {
            "id": q,
            "reference_img_id": ids[q],
            "relative_caption": "is bigger",
            "shared_concept": "a shape",
        }
        for q in range(3)
    ]
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    return root


# --------------------------------------------------------------------------- readers


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
    assert dress.query_text(query) == f"Is {_look(1)[0]} and has a {_look(1)[1]} print"
    variants = dress.training_texts(query)
    assert variants == [
        f"Is {_look(1)[0]} and has a {_look(1)[1]} print",
        f"Has a {_look(1)[1]} print and is {_look(1)[0]}",
        f"Is {_look(1)[0]}",
        f"Has a {_look(1)[1]} print",
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
