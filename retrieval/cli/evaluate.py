"""`eval cirr|fashioniq|circo`: the composed-retrieval protocols from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from retrieval.backbone import load_backbone
from retrieval.cli.options import add_device, add_preprocessing, device_of
from retrieval.composed.baselines import RAW, input_features
from retrieval.data.composed import FASHIONIQ_CATEGORIES, load_splits
from retrieval.data.features import split_features
from retrieval.errors import BadInput
from retrieval.eval.composed import (
    METHODS,
    build_composer,
    evaluate_method,
    markdown_results,
    summarise,
)


def run_eval(args) -> dict:
    """`python -m retrieval eval cirr|fashioniq|circo`: metrics per method, or test submission files."""

    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=device_of(args))
    categories = getattr(args, "categories", None) or FASHIONIQ_CATEGORIES
    splits = load_splits(args.benchmark, args.root, args.split, categories)
    cache = False if args.no_cache else (args.cache_dir or args.settings.features_dir)
    methods = args.method or ["combiner" if args.combiner else "zero-shot" if args.phi else "sum"]
    out = Path(args.out) if args.out else None
    if not all(split.labelled for split in splits) and out is None:
        raise BadInput(
            f"{splits[0].name} has no ground truth: give --out DIR for the submission files"
        )
    composers = {m: build_composer(m, args.combiner, args.phi, args.device) for m in methods}
    # a model trained on raw CLIP features (converted weights) needs them; the others normalise
    normalise = all(input_features(c) != RAW for c in composers.values())
    features = [
        split_features(split, backbone, cache, progress=not args.quiet, normalise=normalise)
        for split in splits
    ]
    table, written = {}, []
    for method, composer in composers.items():
        results = evaluate_method(
            method, composer, splits, features, backbone, args.batch_size, not args.quiet
        )
        if all(split.labelled for split in splits):
            table[method] = summarise(args.benchmark, results)
            continue
        for result in results:
            for file_name, content in result.submissions.items():
                prefix = f"{method}_" if len(methods) > 1 else ""
                path = out / f"{prefix}{file_name}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(content))
                written.append(str(path))
    report = {
        "benchmark": args.benchmark,
        "split": splits[0].split,
        "model": args.model,
        "preprocessing": args.preprocessing,
        "combiner": args.combiner,
        "phi": args.phi,
        "queries": sum(len(s.queries) for s in splits),
        "metrics": table,
        "submissions": written,
    }
    if table:
        markdown = markdown_results(args.benchmark, table)
        print(markdown)
        if out is not None:
            results_file = out if out.suffix == ".json" else out / "results.json"
            results_file.parent.mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps(report, indent=2))
            results_file.with_suffix(".md").write_text(markdown + "\n")
    for path in written:
        print(f"submission file: {path}")
    return report


def _add_eval_parser(
    benchmarks, name: str, description: str, default_split: str, splits: str
) -> None:
    parser = benchmarks.add_parser(name, help=description, description=description)
    parser.set_defaults(benchmark=name, func=run_eval)
    parser.add_argument(
        "--root", required=True, help="dataset folder (see the layout in the README)"
    )
    parser.add_argument(
        "--model", required=True, help="CLIP spec, folder or hf-hub: id (the backbone)"
    )
    parser.add_argument(
        "--split", default=default_split, help=f"{splits} (default {default_split})"
    )
    parser.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="composition method; repeat to compare (default: combiner when --combiner "
        "is given, zero-shot when --phi is given, else sum)",
    )
    parser.add_argument("--combiner", help="Combiner folder or hf-hub:org/repo (method combiner)")
    parser.add_argument(
        "--phi", help="textual-inversion phi folder or hf-hub:org/repo (method zero-shot)"
    )
    add_preprocessing(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="queries composed per batch")
    parser.add_argument("--out", help="folder for results.json/.md and the test submission files")
    parser.add_argument("--cache-dir", help="image feature cache (default: SR_CACHE_DIR/features)")
    parser.add_argument(
        "--no-cache", action="store_true", help="embed images again, write no cache"
    )
    add_device(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if name == "fashioniq":
        parser.add_argument(
            "--categories",
            nargs="+",
            choices=FASHIONIQ_CATEGORIES,
            default=list(FASHIONIQ_CATEGORIES),
            help="categories (default: all three)",
        )


def add_eval_commands(benchmarks) -> None:
    """`eval cirr`, `eval fashioniq` and `eval circo` under the shared `eval` command."""
    _add_eval_parser(
        benchmarks,
        "cirr",
        "CIRR (or Shapes): R@K, Recall_subset@K; test1 -> submission files",
        "val",
        "val, test1 (submission files); the Shapes world also has a labelled test",
    )
    _add_eval_parser(
        benchmarks, "fashioniq", "FashionIQ: R@10/R@50 per category and average", "val", "val"
    )
    _add_eval_parser(
        benchmarks,
        "circo",
        "CIRCO: mAP@5/10/25/50; test -> submission file",
        "val",
        "val, test (submission file)",
    )
