"""Heatmaps and zero-shot tagging, measured on the Shapes world (ground truth known exactly).

- Pointing game: scenes with 2-3 objects, the query names one of them ("a red circle", unique
  in its scene); a hit when the heatmap's maximum falls inside that object's box. Baselines: the
  image centre, and a uniformly random point (its exact hit rate is the box's share of the image).
- Tagging: per-attribute top-1 accuracy on one-object scenes, "the top tag is present" on
  many-object scenes, and multi-label precision/recall of the attributes present, against chance.
- Speed: a heatmap for ViT-B-32 at 224 px (random weights) on CPU, against a plain forward pass.

    python -m bench.explain_benchmark [--model precomputed/shapes-clip-small] [--scenes 300] [--parts shapes speed]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bench.report import write_section
from retrieval.backbone import Backbone, load_backbone
from retrieval.config import SHAPES_MODEL_DIR
from retrieval.eval.report import markdown_table
from retrieval.explain import explain, query_vector
from retrieval.shapes import world as shapes
from retrieval.tags import group_probabilities, load_vocabulary, tag_vectors

ATTRIBUTES = ("colour", "shape", "size", "position")


@dataclass
class Trial:
    image: Image.Image
    query: str
    box: list[int]  # [x0, y0, x1, y1] of the named object, in pixels


def pointing_trials(count: int, seed: int = 0, split: str = "test") -> list[Trial]:
    """Scenes of 2-3 objects, each with a query naming one object by its (unique) colour and shape."""
    rng = np.random.default_rng(seed)
    trials = []
    while len(trials) < count:
        scene = shapes.random_scene(rng, split)
        if len(scene) < 2:
            continue
        target = int(rng.integers(len(scene)))
        named = (scene[target].colour, scene[target].shape)
        if sum((obj.colour, obj.shape) == named for obj in scene) > 1:
            continue
        image, boxes = shapes.render(scene, int(rng.integers(2**31)))
        trials.append(Trial(image, f"a {named[0]} {named[1]}", boxes[target]))
    return trials


def inside(point: tuple[float, float], box: list[int]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def pointing_accuracy(backbone: Backbone, trials: list[Trial], **options) -> float:
    hits = [inside(explain(backbone, t.image, t.query, **options).peak(), t.box) for t in trials]
    return float(np.mean(hits))


def baseline_accuracies(trials: list[Trial]) -> dict[str, float]:
    """Hit rates of pointing at the centre, and of a uniformly random point (exact expectation)."""
    centre = [inside((t.image.width / 2, t.image.height / 2), t.box) for t in trials]
    area = [
        (t.box[2] - t.box[0]) * (t.box[3] - t.box[1]) / (t.image.width * t.image.height)
        for t in trials
    ]
    return {"centre": float(np.mean(centre)), "random point": float(np.mean(area))}


# -- tagging ---------------------------------------------------------------------------------------
def tagging_scenes(count: int, seed: int = 1, split: str = "test"):
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng, split) for _ in range(count)]
    images = [shapes.render(scene, int(rng.integers(2**31)))[0] for scene in scenes]
    return scenes, images


def present(scene, attribute: str) -> set[str]:
    return {getattr(obj, attribute) for obj in scene}


def tagging_metrics(backbone: Backbone, scenes, images, vocabulary) -> dict:
    vectors = backbone.encode_images(images)
    probabilities = group_probabilities(backbone, vectors, vocabulary)
    groups = [g.name for g in vocabulary.groups]
    rows = {}
    for attribute in ATTRIBUTES:
        if attribute not in groups:
            continue
        position = groups.index(attribute)
        terms, probs = vocabulary.groups[position].terms, probabilities[position]
        top = [terms[i] for i in probs.argmax(axis=1)]
        single = [i for i, s in enumerate(scenes) if len(s) == 1]
        many = [i for i, s in enumerate(scenes) if len(s) > 1]
        rows[attribute] = {
            "one-object accuracy": np.mean(
                [top[i] in present(scenes[i], attribute) for i in single]
            ),
            "one-object chance": 1 / len(terms),
            "many-object top present": np.mean(
                [top[i] in present(scenes[i], attribute) for i in many]
            ),
            "many-object chance": np.mean(
                [len(present(scenes[i], attribute)) / len(terms) for i in many]
            ),
        }
    return rows


def multilabel_metrics(backbone: Backbone, scenes, images, vocabulary, threshold=None) -> dict:
    """Micro precision/recall of (image, attribute value) pairs, against chance at the same rate."""
    tagged = tag_vectors(
        backbone, backbone.encode_images(images), vocabulary, "multi", threshold=threshold
    )
    groups = [g.name for g in vocabulary.groups if g.name in ATTRIBUTES]
    predicted = {
        (i, t.group, t.tag) for i, tags in enumerate(tagged) for t in tags if t.group in groups
    }
    truth = {(i, g, value) for i, s in enumerate(scenes) for g in groups for value in present(s, g)}
    candidates = len(scenes) * sum(len(vocabulary.group(g).terms) for g in groups)
    true_positive = len(predicted & truth)
    return {
        "precision": true_positive / max(1, len(predicted)),
        "recall": true_positive / max(1, len(truth)),
        "chance precision": len(truth) / candidates,  # any random tagger: the positives' share
        "chance recall": len(predicted) / candidates,  # random tagger with as many tags
        "tags per image": len(predicted) / len(scenes),
        "true per image": len(truth) / len(scenes),
    }


# -- speed ---------------------------------------------------------------------------------------
def best_seconds(functions: dict, repeats: int) -> dict[str, float]:
    """Best of `repeats` per function, interleaved so that load from other processes hits all alike."""
    for function in functions.values():
        function()  # warm-up
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def speed_rows(arch: str, repeats: int) -> list[list]:
    backbone = load_backbone(arch, device="cpu")
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (224, 300, 3), dtype=np.uint8)
    )
    pixels = backbone.transform(image).unsqueeze(0)
    target = query_vector(backbone, "a painting of a ship")
    functions = {"plain forward (inference mode)": lambda: backbone.encode_image_tensors(pixels)}
    methods = ["attention", "gradcam"] if arch.startswith("ViT") else ["gradcam"]
    for method in methods:
        functions[f"heatmap `{method}` (forward + backward + map)"] = lambda m=method: explain(
            backbone, image, target, method=m
        )
    seconds = best_seconds(functions, repeats)
    forward = seconds["plain forward (inference mode)"]
    return [[arch, name, value * 1000, value / forward] for name, value in seconds.items()]


def shapes_section(model: str, count: int) -> str:
    backbone = load_backbone(model, device="cpu")
    vocabulary = load_vocabulary("shapes")
    trials = pointing_trials(count)
    pointing = [
        ["heatmap: attention relevance (all blocks)", pointing_accuracy(backbone, trials)],
        [
            "heatmap: attention relevance (last block)",
            pointing_accuracy(backbone, trials, start_layer=-1),
        ],
        [
            "heatmap: gradient x activation on last ln_1 (`gradcam`)",
            pointing_accuracy(backbone, trials, method="gradcam"),
        ],
    ]
    pointing += [
        [f"baseline: {name}", value] for name, value in baseline_accuracies(trials).items()
    ]
    scenes, images = tagging_scenes(count)
    per_attribute = tagging_metrics(backbone, scenes, images, vocabulary)
    multilabel = multilabel_metrics(backbone, scenes, images, vocabulary)
    return (
        f"Model `{os.path.relpath(model)}`; {len(trials)} pointing trials and {len(scenes)} tagging scenes, "
        "rendered from the Shapes test split (seeded).\n\n"
        "**Pointing game** (query names one object of a 2-3 object scene; hit = heatmap maximum "
        "inside its box)\n\n"
        + markdown_table(["method", "accuracy"], pointing)
        + "\n\n**Zero-shot tagging, `shapes` vocabulary** (single-label = top tag of each group)\n\n"
        + markdown_table(
            ["attribute", "1-object acc.", "chance", "2-3 objects: top present", "chance"],
            [[a, *[float(v) for v in m.values()]] for a, m in per_attribute.items()],
        )
        + "\n\n**Multi-label** (every value above the vocabulary threshold "
        f"{vocabulary.threshold}; micro over colour/shape/size/position)\n\n"
        + markdown_table(list(multilabel), [[float(v) for v in multilabel.values()]])
    )


def speed_section(repeats: int, threads: int) -> str:
    speed = speed_rows("ViT-B-32", repeats) + speed_rows("RN50", repeats)
    return (
        "Random weights, a 300x224 image padded to 224 px, one query vector; best of "
        f"{repeats} interleaved runs with {threads} torch threads. `x forward` compares with a "
        "plain inference-mode forward pass of the same model in the same run.\n\n"
        + markdown_table(["model", "what", "ms", "x forward"], speed)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHAPES_MODEL_DIR))
    parser.add_argument("--scenes", type=int, default=300, help="scenes per measurement")
    parser.add_argument(
        "--section", default="explain", help="BENCHMARKS.md section key (another for a candidate)"
    )
    parser.add_argument(
        "--title", default="Heatmap pointing game and zero-shot tagging (Shapes)", help="its title"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per speed figure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--parts", nargs="+", default=["shapes", "speed"], choices=["shapes", "speed"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "shapes" in args.parts:
        body = shapes_section(args.model, args.scenes)
        print(body)
        write_section(args.section, args.title, body)
    if "speed" in args.parts:
        body = speed_section(args.repeats, args.threads)
        print(body)
        write_section("explain-speed", "Relevance heatmap speed on CPU", body)


if __name__ == "__main__":
    main()
