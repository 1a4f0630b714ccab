"""Shapes world benchmark: how well the shipped Shapes CLIP retrieves held-out test scenes.

    python bench/shapes_benchmark.py [--model precomputed/shapes-clip-small] [--data precomputed/shapes]

Measures on the test split (gallery of >= 1,000 images, scenes never seen in training):
text->image R@1/5/10 (canonical descriptions and paraphrased captions), image->image
"same description, different rendering" R@1, and composed retrieval R@1/5/10 (+ CIRR subset R@1)
for the training-free baselines image-only, text-only and normalised sum. Writes its section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.report import write_section  # noqa: E402
from retrieval.backbone import load_backbone  # noqa: E402
from retrieval.config import SHAPES_MODEL_DIR  # noqa: E402
from retrieval.data.composed import read_cirr  # noqa: E402
from retrieval.eval.metrics import feature_ranks, recall_at_k  # noqa: E402
from retrieval.eval.report import markdown_table  # noqa: E402
from retrieval.shapes import world as shapes  # noqa: E402
from retrieval.shapes.languages import (  # noqa: E402
    LANGUAGE_NAMES,
    describe,
    parse_languages,
    split_in_language,
)

KS = (1, 5, 10)
RERENDER_SEED = 1_000_003


def encode_texts(backbone, texts: list[str], chunk: int = 256) -> torch.Tensor:
    return torch.cat(
        [
            torch.from_numpy(backbone.encode_texts(texts[i : i + chunk]))
            for i in range(0, len(texts), chunk)
        ]
    )


def encode_images(backbone, sources: list, chunk: int = 128) -> torch.Tensor:
    return torch.cat(
        [
            torch.from_numpy(backbone.encode_images(sources[i : i + chunk]))
            for i in range(0, len(sources), chunk)
        ]
    )


def subset_recall_at_1(scores: torch.Tensor, rows, position: dict[str, int]) -> float:
    """CIRR Recall_subset@1 (percent): rank only the set's members other than the reference."""
    hits = 0
    for query, row in enumerate(rows):
        members = [m for m in row.members if m != row.reference]
        best = max(members, key=lambda name: float(scores[query, position[name]]))
        hits += best == row.targets[0]
    return 100 * hits / len(rows)


def composed_metrics(
    query: torch.Tensor, gallery: torch.Tensor, rows, position
) -> dict[str, float]:
    references = torch.tensor([position[r.reference] for r in rows])
    targets = torch.tensor([position[r.targets[0]] for r in rows])
    metrics = recall_at_k(feature_ranks(query, gallery, targets, references), KS)
    scores = F.normalize(query, dim=-1) @ gallery.T
    metrics["Rs@1"] = subset_recall_at_1(scores, rows, position)
    return metrics


def recall(queries: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    """Query i's target is gallery image i."""
    return recall_at_k(feature_ranks(queries, gallery, torch.arange(len(gallery))), KS)


def by_language(backbone, gallery, names, cirr, data: Path, position, languages) -> dict:
    """Text -> image (canonical descriptions) and composed-sum recall with every text in each
    language: the same gallery and the same edits, phrased by the generator."""
    scenes = shapes.read_scenes(data)
    rows = cirr.queries
    references = gallery[[position[r.reference] for r in rows]]
    results = {}
    for language in languages:
        descriptions = [describe(scenes[name], language) for name in names]
        rephrased = split_in_language(cirr, scenes, language).queries
        captions = [query.captions[0] for query in rephrased]
        query = F.normalize(references + encode_texts(backbone, captions), dim=-1)
        results[language] = {
            "t2i": recall(encode_texts(backbone, descriptions), gallery),
            "sum": composed_metrics(query, gallery, rows, position),
        }
    return results


def run(model: str, data: Path, split: str, languages=("en",)) -> dict:
    torch.manual_seed(0)
    cirr = read_cirr(data, split)
    rows, paths = cirr.queries, cirr.images
    metadata = {row["id"]: row for row in shapes.read_metadata_rows(data, split)}
    names = list(paths)
    position = {name: index for index, name in enumerate(names)}
    backbone = load_backbone(model, device="cpu")
    started = time.perf_counter()
    gallery = encode_images(backbone, [paths[name] for name in names])
    seconds_gallery = time.perf_counter() - started

    descriptions = [metadata[name]["description"] for name in names]
    captions = [json.loads(metadata[name]["captions"])[0] for name in names]
    t2i = recall(encode_texts(backbone, descriptions), gallery)
    t2i_captions = recall(encode_texts(backbone, captions), gallery)
    rerendered = [
        shapes.render(shapes.scene_of_row(metadata[name]), RERENDER_SEED + index)[0]
        for index, name in enumerate(names)
    ]
    i2i = recall(encode_images(backbone, rerendered), gallery)

    reference_features = gallery[[position[r.reference] for r in rows]]
    caption_features = encode_texts(backbone, [r.captions[0] for r in rows])
    baselines = {
        "image only": reference_features,
        "text only": caption_features,
        "sum": F.normalize(reference_features + caption_features, dim=-1),
    }
    composed = {
        name: composed_metrics(query, gallery, rows, position) for name, query in baselines.items()
    }
    by_kind = defaultdict(list)
    for index, row in enumerate(rows):
        by_kind[row.extra.get("edit", "?")].append(index)
    sum_by_kind = {
        kind: composed_metrics(baselines["sum"][idx], gallery, [rows[i] for i in idx], position)[
            "R@1"
        ]
        for kind, idx in sorted(by_kind.items())
    }

    results = {
        "model": model,
        "languages": by_language(backbone, gallery, names, cirr, data, position, languages),
        "gallery": len(names),
        "triplets": len(rows),
        "t2i": t2i,
        "t2i_captions": t2i_captions,
        "i2i": i2i,
        "composed": composed,
        "sum_by_kind": sum_by_kind,
        "images_per_second": len(names) / max(seconds_gallery, 1e-9),
    }
    return results


def shown(model: str) -> str:
    path = Path(model).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else model


def side_by_side(results: dict, previous: dict) -> str:
    """The new model's main figures beside the previous one's (both from this run)."""
    tasks = [
        ("text -> image (canonical)", "t2i"),
        ("text -> image (paraphrase)", "t2i_captions"),
        ("image -> image (re-rendered)", "i2i"),
    ]

    def recalls(metrics: dict) -> list[float]:
        return [metrics[f"R@{k}"] for k in KS]

    rows = [[task, *recalls(previous[key]), *recalls(results[key])] for task, key in tasks]
    rows += [
        [f"composed: {name}", *recalls(previous["composed"][name]), *recalls(metrics)]
        for name, metrics in results["composed"].items()
    ]
    old, new = shown(previous["model"]), shown(results["model"])
    header = ["task", *(f"R@{k} old" for k in KS), *(f"R@{k} new" for k in KS)]
    return (
        f"Previous model (`{old}`) beside the new one (`{new}`), both measured in this run:\n\n"
        + markdown_table(header, rows, digits=1)
    )


def language_table(results: dict, previous: dict | None = None) -> str:
    english = results["languages"].get("en")
    rows = []
    for language, metrics in results["languages"].items():
        t2i, composed = metrics["t2i"], metrics["sum"]
        gap = (
            f"{100 * (t2i['R@1'] / english['t2i']['R@1'] - 1):+.1f}%"
            if english and english["t2i"]["R@1"]
            else "-"
        )
        name = f"{LANGUAGE_NAMES[language]} ({language})"
        row = [name, t2i["R@1"], t2i["R@10"], gap, composed["R@1"], composed["R@10"]]
        if previous:
            old = previous["languages"][language]
            row += [old["t2i"]["R@1"], old["t2i"]["R@10"], old["sum"]["R@1"]]
        rows.append(row)
    header = ["language", "text R@1", "text R@10", "R@1 vs English", "sum R@1", "sum R@10"]
    if previous:
        header += ["text R@1 old", "text R@10 old", "sum R@1 old"]
    return (
        "Per language (the same test gallery and edits; every text written by the generator in that "
        "language; composed = the training-free sum baseline, the Combiner's per-language figures are "
        "in the composed section"
        + ("; old = the previous model" if previous else "")
        + "):\n\n"
        + markdown_table(header, rows, digits=1)
    )


def render_markdown(model: str, split: str, results: dict, previous: dict | None = None) -> str:
    n = results["gallery"]
    training_file = Path(model) / "training.json"
    lines = [
        f"Model `{shown(model)}`, "
        f"{split} split: gallery of {n} images (scenes disjoint from training), {results['triplets']} "
        f"composed-retrieval triplets. Recall in percent; chance: R@1 = {100 / n:.2f}, R@10 = {1000 / n:.2f}; "
        "subset Rs@1 = 20.",
        "",
        markdown_table(
            ["task", "queries", "R@1", "R@5", "R@10"],
            [
                ["text -> image (canonical description)", n, *results["t2i"].values()],
                ["text -> image (paraphrased caption)", n, *results["t2i_captions"].values()],
                ["image -> image (same description, new rendering)", n, *results["i2i"].values()],
            ],
            digits=1,
        ),
        "",
        "Composed retrieval (reference removed from its ranking; Rs@1 = CIRR subset recall among the 5 "
        "other members of the reference's set):",
        "",
        markdown_table(
            ["baseline", "R@1", "R@5", "R@10", "Rs@1"],
            [[name, *metrics.values()] for name, metrics in results["composed"].items()],
            digits=1,
        ),
        "",
        "Sum baseline R@1 by edit kind: "
        + ", ".join(f"{kind} {value:.1f}" for kind, value in results["sum_by_kind"].items()),
        "",
        language_table(results, previous),
    ]
    if previous:
        lines += ["", side_by_side(results, previous)]
    if training_file.is_file():
        report = json.loads(training_file.read_text())
        config = report["config"]
        lines += [
            "",
            f"Training (from scratch, `{report['command']}`): {config['steps']} steps x {config['batch_size']} "
            f"pairs, {report['seconds']:.0f} s at {report['samples_per_second']:.0f} samples/s on "
            f"{report['device']} with {report['threads']} thread(s); best validation step {report['best_step']}.",
        ]
    lines.append(f"Gallery embedding speed: {results['images_per_second']:.0f} images/s (CPU).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(SHAPES_MODEL_DIR), help="model folder (default: shipped model)"
    )
    parser.add_argument(
        "--data", default=str(ROOT / "precomputed" / "shapes"), help="CIRR-format Shapes folder"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--languages", default="en,it,fr,de,es", help="languages of the per-language table"
    )
    parser.add_argument(
        "--previous", help="another model folder to measure beside this one (the model replaced)"
    )
    parser.add_argument("--note", default="", help="a sentence added under the tables")
    parser.add_argument(
        "--section", default="shapes", help="BENCHMARKS.md section key (another for a candidate)"
    )
    parser.add_argument(
        "--title", default="Shapes world: the shipped Shapes CLIP's retrieval", help="its title"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    languages = parse_languages(args.languages)
    results = run(args.model, Path(args.data), args.split, languages)
    previous = run(args.previous, Path(args.data), args.split, languages) if args.previous else None
    markdown = render_markdown(args.model, args.split, results, previous)
    if args.note:
        markdown += f"\n\nNote: {args.note}"
    print(markdown)
    if not args.no_write:
        write_section(args.section, args.title, markdown)


if __name__ == "__main__":
    main()
