"""`train-combiner` and `train-stage1`: CLIP4Cir's two stages on CIRR, FashionIQ or the Shapes world."""

from __future__ import annotations

import time
from pathlib import Path

from retrieval.backbone import load_backbone
from retrieval.cli.options import add_device, add_preprocessing, add_seed, device_of
from retrieval.composed.combiner import save_combiner
from retrieval.data.composed import FASHIONIQ_CATEGORIES, ComposedSplit, load_splits
from retrieval.train.composed import (
    STAGE2_BATCH,
    STAGE2_LR,
    stage2_config,
    train_combiner,
    train_stage1,
)
from retrieval.train.loop import (
    TrainConfig,
)


def _splits_for(args, split: str) -> list[ComposedSplit]:
    dataset = "cirr" if args.dataset == "shapes" else args.dataset
    categories = getattr(args, "categories", None) or FASHIONIQ_CATEGORIES
    return load_splits(dataset, args.root, split, categories)


def _steps(args, queries: int) -> int:
    if args.steps:
        return args.steps
    return max(1, args.epochs * max(1, queries // args.batch_size))


def _train_setup(args):
    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=device_of(args))
    train = _splits_for(args, args.train_split)
    val = [] if args.val_split == "none" else _splits_for(args, args.val_split)
    queries = sum(len(split.queries) for split in train)
    extra = {
        "dataset": args.dataset,
        "root": str(args.root),
        "model": args.model,
        "train_split": args.train_split,
        "val_split": args.val_split,
    }
    protocol = "fashioniq" if args.dataset == "fashioniq" else "cirr"
    return backbone, train, val, queries, extra, protocol


def run_train_combiner(args) -> Path:
    """`python -m retrieval train-combiner`: stage 2 on a frozen backbone -> a Combiner folder."""
    backbone, train, val, queries, extra, protocol = _train_setup(args)
    out = Path(args.out)
    cfg = stage2_config(
        steps=_steps(args, queries),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=str(backbone.device),
        validate_every=args.validate_every,
        out_dir=str(out / "checkpoints"),
        resume=args.resume or "",
        extra=extra,
    )
    cache = False if args.no_cache else (args.cache_dir or args.settings.features_dir)
    started = time.perf_counter()
    combiner, result = train_combiner(backbone, train, cfg, val, protocol, cache, num_workers=0)
    save_combiner(combiner, out)
    print(
        f"Combiner trained on {queries} triplets in {time.perf_counter() - started:.0f} s "
        f"(best step {result.best_step}: {_short(result.best_metrics)}) -> {out}"
    )
    return out


def run_train_stage1(args) -> Path:
    """`python -m retrieval train-stage1`: fine-tune CLIP with the sum objective -> an open_clip folder."""
    backbone, train, val, queries, extra, protocol = _train_setup(args)
    cfg = TrainConfig.composed_defaults(
        steps=_steps(args, queries),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=str(backbone.device),
        validate_every=args.validate_every,
        towers=args.towers,
        out_dir=str(Path(args.out) / "checkpoints"),
        resume=args.resume or "",
        extra=extra,
    )
    model_dir, result = train_stage1(backbone, train, cfg, args.out, val, protocol, args.workers)
    print(
        f"stage-1 model (best step {result.best_step}: {_short(result.best_metrics)}) -> {model_dir}\n"
        f"next: python -m retrieval train-combiner --dataset {args.dataset} --root {args.root} "
        f"--model {model_dir} --out OUT"
    )
    return model_dir


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "/" not in k) or "no validation"


def _common_train_arguments(parser, lr: float, batch_size: int, epochs: int) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        choices=["cirr", "fashioniq", "shapes"],
        help="dataset layout (shapes = the generated Shapes world, CIRR layout and protocol)",
    )
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--model", required=True, help="CLIP spec, folder or hf-hub: id")
    parser.add_argument(
        "--out", required=True, help="output folder (checkpoints/ inside for resuming)"
    )
    parser.add_argument("--train-split", default="train", help="split to train on (default train)")
    parser.add_argument("--val-split", default="val", help="validation split, or 'none'")
    parser.add_argument(
        "--categories",
        nargs="+",
        choices=FASHIONIQ_CATEGORIES,
        default=list(FASHIONIQ_CATEGORIES),
        help="FashionIQ categories trained and validated on (default: all three)",
    )
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"passes over the triplets (default {epochs})"
    )
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    parser.add_argument("--lr", type=float, default=lr, help=f"default {lr:g}")
    parser.add_argument(
        "--validate-every", type=int, default=0, help="steps between validations (0: at the end)"
    )
    parser.add_argument(
        "--resume", help="checkpoint folder to continue from (OUT/checkpoints/last)"
    )
    add_preprocessing(parser)
    add_seed(parser)
    add_device(parser)


def add_train_combiner_arguments(parser) -> None:
    _common_train_arguments(parser, STAGE2_LR, STAGE2_BATCH, 100)
    parser.add_argument("--cache-dir", help="image feature cache (default: SR_CACHE_DIR/features)")
    parser.add_argument(
        "--no-cache", action="store_true", help="embed images again, write no cache"
    )


def add_train_stage1_arguments(parser) -> None:
    _common_train_arguments(parser, 2e-6, 128, 10)
    parser.add_argument(
        "--towers",
        default="both",
        choices=["both", "image", "text"],
        help="encoders fine-tuned (CLIP4Cir: both)",
    )
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
