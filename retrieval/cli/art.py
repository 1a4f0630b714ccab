"""`eval noisyart|classfolders` and `finetune noisyart|classfolders`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.backbone import load_backbone
from retrieval.cli.options import add_device, add_preprocessing, add_seed, device_of
from retrieval.data.art import DEFAULT_TITLE_TEMPLATE, ArtDataset, read_class_folders, read_noisyart
from retrieval.eval.art import (
    EvalOptions,
    evaluate,
    load_feature_model,
    markdown_results,
    write_results,
)
from retrieval.train.art import finetune
from retrieval.train.loop import TrainConfig


def _load_dataset(args, split: str | None) -> ArtDataset | None:
    if split in (None, "", "none"):
        return None
    if args.benchmark == "noisyart":
        return read_noisyart(args.root, split)
    return read_class_folders(args.root, None if split == "." else split, args.metadata)


def _default_split(args, name: str, wanted: str | None) -> str | None:
    """classfolders: use ROOT/<name> when it exists, else the whole ROOT (eval) or nothing (train)."""
    if wanted is not None:
        return wanted
    if (Path(args.root) / name).is_dir():
        return name
    return "." if name == "test" else None


def run_eval(args) -> dict:
    if args.benchmark == "noisyart":
        split, train_split = args.split or "test_200", args.train_split or "trainval_200"
    else:
        split = _default_split(args, "test", args.split)
        train_split = _default_split(args, "train", args.train_split)
    test = _load_dataset(args, split)
    train = _load_dataset(args, train_split)
    options = EvalOptions(
        args.candidates, args.title_template, args.probe_l2, args.batch_size, args.workers
    )
    runs = []
    for spec in args.model:
        model = load_feature_model(spec, args.device, args.preprocessing)
        runs.append(evaluate(model, test, train, options))
        print(
            f"{spec}: "
            + " ".join(f"{key} {100 * value:.2f}" for key, value in runs[-1]["metrics"].items())
        )
    report = {
        "benchmark": args.benchmark,
        "root": str(args.root),
        "split": split,
        "train_split": train_split,
        "candidates": args.candidates,
        "runs": runs,
    }
    print(markdown_results(runs))
    for note in {note for run in runs for note in run["notes"]}:
        print(f"note: {note}")
    if args.out:
        paths = write_results(report, args.out)
        print("wrote " + " and ".join(map(str, paths)))
    return report


def run_finetune(args) -> dict:
    if args.benchmark == "noisyart":
        train_split, val_split = args.train_split or "train", args.val_split or "val"
    else:
        train_split = _default_split(args, "train", args.train_split) or "."
        val_split = _default_split(args, "val", args.val_split)
    train = _load_dataset(args, train_split)
    val = _load_dataset(args, val_split)
    if val is not None and args.val_max_images and len(val) > args.val_max_images:
        keep = np.random.default_rng(args.seed).choice(len(val), args.val_max_images, replace=False)
        val = val.subset(sorted(keep.tolist()))
    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=device_of(args))
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        device=str(backbone.device),
        towers=args.towers,
        last_blocks=args.last_blocks,
        validate_every=args.validate_every,
        out_dir=str(args.out),
        resume=args.resume or "",
        extra={
            "benchmark": args.benchmark,
            "root": str(args.root),
            "model": args.model,
            "train_split": train_split,
            "val_split": val_split,
        },
    )
    kinds = tuple(kind.strip() for kind in args.texts.split(",") if kind.strip())
    summary = finetune(backbone, train, cfg, val, kinds, args.title_template, args.workers)
    print(
        f"fine-tuned model: {summary['model_dir']} (best step {summary['best_step']}, "
        f"{summary['best_metrics'] or 'no validation'})"
    )
    print(
        f"compare: python -m retrieval eval {args.benchmark} --root {args.root} "
        f"--model {args.model} --model {summary['model_dir']}"
    )
    return summary


def _common_arguments(parser, benchmark: str) -> None:
    parser.set_defaults(benchmark=benchmark)
    if benchmark == "noisyart":
        parser.add_argument(
            "--root",
            required=True,
            help="NoisyArt folder (metadata.json, splits/, trainval_3120/...)",
        )
    else:
        parser.add_argument(
            "--root", required=True, help="folder of class folders, or of SPLIT/class folders"
        )
        parser.add_argument(
            "--metadata",
            help="class CSV/JSONL: class,title,description,artist "
            "(default ROOT/classes.csv or ROOT/metadata.csv)",
        )
    parser.add_argument(
        "--title-template",
        default=DEFAULT_TITLE_TEMPLATE,
        help="class name prompt; fields {title} and {artist} (default %(default)r; "
        "the artist part is dropped when unknown)",
    )
    add_preprocessing(parser)
    add_device(parser)
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes")


def _add_eval_parser(benchmarks, benchmark: str, description: str) -> None:
    noisyart = benchmark == "noisyart"
    parser = benchmarks.add_parser(benchmark, help=description, description=description)
    _common_arguments(parser, benchmark)
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="CLIP spec or folder, or resnet50[:random|:FILE] (image-only); repeat to compare",
    )
    parser.add_argument(
        "--split",
        help="evaluated split (default "
        + (
            "test_200; also trainval_200, val, ...)"
            if noisyart
            else "ROOT/test if present, else ROOT)"
        ),
    )
    parser.add_argument(
        "--train-split",
        help="split the linear probe trains on, or 'none' (default "
        + ("trainval_200)" if noisyart else "ROOT/train if present)"),
    )
    parser.add_argument(
        "--candidates",
        default="split",
        choices=["split", "all"],
        help="zero-shot over the split's classes (default) or every class in the metadata",
    )
    parser.add_argument("--probe-l2", type=float, default=1e-3, help="linear probe L2 penalty")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--out", help="results .json (a .md table is written next to it) or a folder"
    )
    parser.set_defaults(func=run_eval)


def _add_finetune_parser(benchmarks, benchmark: str, description: str) -> None:
    noisyart = benchmark == "noisyart"
    parser = benchmarks.add_parser(benchmark, help=description, description=description)
    _common_arguments(parser, benchmark)
    parser.add_argument("--model", required=True, help="CLIP model spec or folder to start from")
    parser.add_argument(
        "--out", required=True, help="run folder: best/, last/ checkpoints, model/, finetune.json"
    )
    parser.add_argument(
        "--train-split", help="default " + ("train" if noisyart else "ROOT/train, else ROOT")
    )
    parser.add_argument(
        "--val-split",
        help="validation split or 'none' (default "
        + ("val)" if noisyart else "ROOT/val if present)"),
    )
    parser.add_argument(
        "--val-max-images", type=int, default=2000, help="random subset of the validation split"
    )
    parser.add_argument(
        "--texts",
        default="title,description",
        help="class texts paired with images, picked at random per sample (default %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128, help="classes per batch (distinct)")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps")
    parser.add_argument(
        "--towers", default="both", choices=["both", "image", "text"], help="which encoders learn"
    )
    parser.add_argument(
        "--last-blocks", type=int, default=0, help="train only the last N blocks of each tower"
    )
    parser.add_argument(
        "--validate-every", type=int, default=0, help="steps between validations (0: at the end)"
    )
    parser.add_argument("--resume", help="checkpoint folder to continue from (OUT/last)")
    add_seed(parser)
    parser.set_defaults(func=run_finetune)


def add_eval_commands(benchmarks) -> None:
    """`eval noisyart` and `eval classfolders` under the shared `eval` command."""
    _add_eval_parser(
        benchmarks, "noisyart", "NoisyArt: zero-shot, description/artwork mAP, linear probe"
    )
    _add_eval_parser(benchmarks, "classfolders", "any class-folder collection: the NoisyArt tasks")


def add_finetune_commands(benchmarks) -> None:
    _add_finetune_parser(
        benchmarks, "noisyart", "contrastive CLIP fine-tuning on NoisyArt class texts"
    )
    _add_finetune_parser(
        benchmarks, "classfolders", "contrastive CLIP fine-tuning on a class-folder collection"
    )
