"""NoisyArt protocol on a Shapes-world analogue, before and after fine-tuning the shipped Shapes CLIP.

Classes are Shapes scenes (title "red circle, blue star", description = the canonical scene
description), in groups of near-duplicates (a scene and single-edit variants of it, like versions
of one painting). Each class has a clean "seed" rendering plus noisy "web" renderings (crop,
rotation, blur, colour cast, sensor noise, JPEG) of which some are wrong: a sibling scene
(labelflip) or an unrelated scene (outlier). A verified test split holds clean-label noisy
renderings of a subset of the classes. Everything is written to disk in the NoisyArt layout and
read back with `retrieval.art_data.read_noisyart`, so the same commands run on it:

    python -m bench.noisyart_benchmark                       # build data, evaluate, fine-tune, re-evaluate
    python -m retrieval eval noisyart --root runs/noisyart-shapes --model precomputed/shapes-clip-small
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from bench.report import write_section
from retrieval.backbone import load_backbone
from retrieval.config import ROOT
from retrieval.data import art as art_data
from retrieval.eval import art as art_eval
from retrieval.eval.report import markdown_table
from retrieval.shapes import world as shapes
from retrieval.train import art as art_train
from retrieval.train.loop import TrainConfig

MODEL = ROOT / "precomputed" / "shapes-clip-small"
DATA = ROOT / "runs" / "noisyart-shapes"
URI_BASE = "http://example.org/shapes-art/resource/"


# --------------------------------------------------------------------------- the analogue dataset


def distort(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A 'web photo' of a rendering: off-centre crop, tilt, blur, colour cast, noise, JPEG."""
    width = image.width
    side = int(width * rng.uniform(0.78, 0.95))
    left, top = (int(v) for v in rng.integers(0, width - side + 1, size=2))
    image = image.crop((left, top, left + side, top + side))
    image = image.rotate(
        float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)
    )
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = (
        pixels * rng.uniform(0.8, 1.15)
        + rng.uniform(-20, 20, size=3)
        + rng.normal(0, 6, pixels.shape)
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(35, 80)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def class_groups(groups: int, per_group: int, rng: np.random.Generator) -> list[list[shapes.Scene]]:
    """Groups of near-duplicate scenes (one scene and single edits of it), all descriptions distinct."""
    used: set[str] = set()
    result = []
    while len(result) < groups:
        base = shapes.random_scene(rng, "test")
        if shapes.describe(base) in used:
            continue
        group = [base]
        for _ in range(per_group - 1):
            edit = shapes.sample_edit(base, rng, exclude=used | {shapes.describe(s) for s in group})
            if edit is None:
                break
            group.append(edit.apply(base))
        if len(group) == per_group:
            used |= {shapes.describe(s) for s in group}
            result.append(group)
    return result


def folder_of(number: int, uri: str) -> str:
    return f"{number:04d}_" + uri.replace("/", "^")


def build_dataset(
    out: Path,
    groups: int = 20,
    per_group: int = 3,
    web_images: int = 9,
    test_images: int = 5,
    test_share: float = 0.5,
    noise: float = 0.2,
    seed: int = 0,
) -> dict:
    """Write the analogue in the NoisyArt layout; returns its statistics."""
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    scenes = [scene for group in class_groups(groups, per_group, rng) for scene in group]
    sibling = [
        [g * per_group + k for k in range(per_group) if k != i % per_group]
        for g in range(groups)
        for i in range(per_group)
    ]
    uris = [f"{URI_BASE}Scene_{index:03d}" for index in range(len(scenes))]
    metadata = [
        {
            "uri": uri,
            "title": shapes.title(scene),
            "description": shapes.describe(scene),
            "_authors": [],
            "comment": "",
        }
        for uri, scene in zip(uris, scenes, strict=True)
    ]
    out.mkdir(parents=True)
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1))
    render_size = int(shapes.IMAGE_SIZE * 1.25)
    lists: dict[str, list[str]] = {"train": [], "val": [], "boot": []}
    test_classes = sorted(
        rng.choice(len(scenes), int(len(scenes) * test_share), replace=False).tolist()
    )
    wrong = 0
    for index, scene in enumerate(scenes):
        folder = folder_of(index + 1, uris[index])
        target = out / "trainval_3120" / folder
        target.mkdir(parents=True)
        seed_image, _ = shapes.render(scene, int(rng.integers(2**31)), size=shapes.IMAGE_SIZE)
        seed_image.save(target / "seed_000000.png")
        lists["boot"].append(f"{folder}/seed_000000.jpg")
        web_names = []
        for k in range(web_images):
            shown = scene
            if (
                rng.random() < noise
            ):  # webly noise: a sibling version (labelflip) or an unrelated scene
                wrong += 1
                shown = (
                    scenes[int(rng.choice(sibling[index]))]
                    if rng.random() < 0.6
                    else shapes.random_scene(rng)
                )
            picture, _ = shapes.render(shown, int(rng.integers(2**31)), size=render_size)
            name = f"{'google' if k < web_images * 2 // 3 else 'flickr'}_{k:06d}"
            distort(picture, rng, shapes.IMAGE_SIZE).save(target / f"{name}.png")
            web_names.append(name)
        val_count = max(1, round(0.2 * len(web_names)))
        order = rng.permutation(web_names).tolist()
        lists["val"] += [f"{folder}/{name}.jpg" for name in order[:val_count]]
        lists["train"] += [f"{folder}/seed_000000.jpg"] + [
            f"{folder}/{name}.jpg" for name in order[val_count:]
        ]
        if index in test_classes:
            _link_tree(target, out / "trainval_200" / folder)
            test_folder = out / "test_200" / folder
            test_folder.mkdir(parents=True)
            for k in range(test_images):
                picture, _ = shapes.render(scene, int(rng.integers(2**31)), size=render_size)
                distort(picture, rng, shapes.IMAGE_SIZE).save(test_folder / f"{k:06d}.png")
    splits = out / "splits" / "trainval_3120"
    splits.mkdir(parents=True)
    lists["trainval"] = lists["train"] + lists["val"]
    for name, lines in lists.items():
        (splits / f"{name}.txt").write_text("\n".join(lines))
    return {
        "classes": len(scenes),
        "groups": groups,
        "per_group": per_group,
        "test_classes": len(test_classes),
        "train_images": len(lists["train"]),
        "val_images": len(lists["val"]),
        "test_images": len(test_classes) * test_images,
        "wrong_label_share": wrong / (len(scenes) * web_images),
    }


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for file in source.iterdir():
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)


# --------------------------------------------------------------------------- the run


def evaluate_all(
    specs: list[str], root: Path, device: str, options: art_eval.EvalOptions
) -> list[dict]:
    test = art_data.read_noisyart(root, "test_200")
    train = art_data.read_noisyart(root, "trainval_200")
    runs = []
    for label, spec in specs:
        run = art_eval.evaluate(art_eval.load_feature_model(spec, device), test, train, options)
        run["model"] = label
        runs.append(run)
        print(
            label, {key: round(100 * value, 2) for key, value in run["metrics"].items()}, flush=True
        )
    return runs


def finetune_run(model: Path, root: Path, out: Path, args, last_blocks: int) -> dict:
    backbone = load_backbone(str(model), device=args.device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=0.1,
        warmup_steps=args.steps // 10,
        seed=args.seed,
        device=str(backbone.device),
        last_blocks=last_blocks,
        validate_every=max(1, args.steps // 4),
        out_dir=str(out),
    )
    val = art_data.read_noisyart(root, "val")
    return art_train.finetune(
        backbone, art_data.read_noisyart(root, "train"), cfg, val, progress=False
    )


def section(stats: dict, runs: list[dict], trainings: dict, args) -> str:
    metric_keys = list(art_eval.METRIC_LABELS)
    rows = [
        [run["model"]]
        + [100 * run["metrics"][k] if k in run["metrics"] else "-" for k in metric_keys]
        for run in runs
    ]
    table = markdown_table(["model"] + [art_eval.METRIC_LABELS[k] for k in metric_keys], rows)
    base = runs[0]["metrics"]
    gains = []
    for run in runs[1:]:
        if run["model"].startswith("fine-tuned"):
            gains.append(
                f"- {run['model']}: artwork->artwork mAP {100 * base['map_image']:.2f} -> "
                f"{100 * run['metrics']['map_image']:.2f}, description->artwork mAP "
                f"{100 * base['map_description']:.2f} -> {100 * run['metrics']['map_description']:.2f}, "
                f"probe top-1 {100 * base['probe_top1']:.2f} -> {100 * run['metrics']['probe_top1']:.2f}"
            )
    training_lines = [
        f"- {name}: {info['step']} steps in {info['seconds']:.0f} s "
        f"({info['samples_per_second']:.0f} pairs/s), best step {info['best_step']} by val mAP "
        f"({100 * info['best_metrics'].get('map_mean', float('nan')):.2f})"
        for name, info in trainings.items()
    ]
    return f"""
Shapes-world analogue of NoisyArt written in the NoisyArt layout (`metadata.json`, `splits/trainval_3120/*.txt`,
`trainval_3120/`, `trainval_200/`, `test_200/`, class folders `NNNN_http:^^...`) and read back by
`retrieval.art_data.read_noisyart`: {stats["classes"]} classes ({stats["groups"]} groups of {
        stats["per_group"]
    }
near-duplicate scenes), {stats["train_images"]} train / {stats["val_images"]} val images with
{
        100
        * stats[
            "wrong_label_share"
        ]:.0f}% wrong web labels (sibling version or unrelated scene), verified test split of
{stats["test_images"]} images over {stats["test_classes"]} classes. Images are {
        shapes.IMAGE_SIZE
    } px noisy
renderings (crop, tilt, blur, colour cast, noise, JPEG). Linear probe trained on `trainval_200`; zero-shot over the
{
        stats["test_classes"]
    } test classes; prompts: title (e.g. "red circle, blue star"), description, or both.

{table}

All numbers in percent. Fine-tuning: contrastive image/class-text (title or description, picked at random) on the
train split, batch {args.batch_size} distinct classes, lr {args.lr}, model selection by val mAP.
{chr(10).join(training_lines)}

Gain over the shipped Shapes CLIP:
{chr(10).join(gains)}

The ResNet-50 row uses {
        "ImageNet weights from the local torch cache"
        if args.resnet == "resnet50"
        else "random weights (no ImageNet weights can be downloaded here): a floor, not the NoisyArt baseline"
    }; it is
image-only, so it has no zero-shot or description numbers.
Same data with the CLI: `python -m retrieval eval noisyart --root {args.data} --model {args.model}`,
`python -m retrieval finetune noisyart --root {args.data} --model {args.model} --out runs/na`.
"""


def _shown(path: str) -> str:
    """Paths inside the repository are reported relative to it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL), help="CLIP to evaluate and fine-tune")
    parser.add_argument("--data", default=str(DATA), help="where the analogue dataset is written")
    parser.add_argument(
        "--runs", default=str(ROOT / "runs" / "noisyart-bench"), help="fine-tuning outputs"
    )
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--last-blocks", type=int, default=2, help="also fine-tune only the last N blocks (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-write", action="store_true", help="print instead of updating BENCHMARKS.md"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data, runs_dir = Path(args.data), Path(args.runs)
    stats = build_dataset(data, groups=args.groups, seed=args.seed)
    print("dataset", stats, flush=True)
    args.resnet = "resnet50" if art_eval._cached_resnet_weights() else "resnet50:random"
    options = art_eval.EvalOptions(progress=False)
    trainings = {"full": finetune_run(Path(args.model), data, runs_dir / "full", args, 0)}
    if args.last_blocks:
        trainings[f"last {args.last_blocks} blocks"] = finetune_run(
            Path(args.model), data, runs_dir / "last-blocks", args, args.last_blocks
        )
    specs = [("Shapes CLIP (before)", args.model), (f"ResNet-50 ({args.resnet})", args.resnet)]
    specs += [(f"fine-tuned ({name})", info["model_dir"]) for name, info in trainings.items()]
    runs = evaluate_all(specs, data, args.device, options)
    args.data, args.model = _shown(args.data), _shown(args.model)
    body = section(stats, runs, trainings, args)
    body += f"\nTotal wall time {time.perf_counter() - started:.0f} s.\n"
    if args.no_write:
        print(body)
    else:
        write_section(
            "noisyart", "Artwork recognition: NoisyArt protocol on a Shapes analogue", body
        )
        print(body)


if __name__ == "__main__":
    main()
