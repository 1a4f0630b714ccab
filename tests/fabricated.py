"""Research datasets fabricated in their exact published layouts (CIRR rc2, FashionIQ, CIRCO), with
tiny drawn images, so the readers and protocols are tested without downloading anything."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from retrieval.data import features as features
from tests.helpers import COLOURS, draw_scene

LOOKS = list(product(COLOURS, ("circle", "square")))  # 8 distinct (colour, shape) pictures
CIRR_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}


def look(index: int) -> tuple[str, str]:
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
                colour, shape = look(set_index + member)
                draw_scene(colour, shape, size=40, jitter=set_index % 4).save(
                    root / folder / f"{name}.png"
                )
                relpaths[name] = f"./{folder.as_posix()}/{name}.png"
                names.append(name)
            for member in range(1, members):
                colour, shape = look(set_index + member)
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
                colour, shape = look(i + number)
                draw_scene(colour, shape, size=36, jitter=i % 3).save(
                    root / "images" / f"{name}{extension}"
                )
            rows = [
                {
                    "candidate": ids[i],
                    "target": ids[(i + 1) % len(ids)],
                    "captions": [
                        f"is {look(i + 1 + number)[0]}.",
                        f"has a {look(i + 1 + number)[1]} print",
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
        draw_scene(*look(i), size=36, jitter=i % 3).save(images / f"{image_id:012d}.jpg")
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
            "relative_caption": f"is {look(q + 1)[0]}",
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
