"""`python -m retrieval train-clip`: contrastive CLIP training from scratch or fine-tuning."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from retrieval.errors import BadInput, NotFound
from retrieval.shapes.languages import LANGUAGES, parse_languages
from retrieval.shapes.torch_data import shapes_loader
from retrieval.train.clip import (
    PairsDataset,
    model_to_train,
    pairs_validator,
    read_pairs,
    shapes_validator,
    train_and_export,
)
from retrieval.train.loop import TOWERS, TrainConfig, make_loader, seed_everything

CONFIG_OPTIONS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "seed",
    "device",
    "towers",
    "last_blocks",
    "validate_every",
)


def training_data(args, transform, tokenizer):
    """(loader, validate or None) for `--data shapes` or a file of file,caption pairs."""
    if args.data == "shapes":
        languages = parse_languages(args.languages)
        loader = shapes_loader(
            transform,
            tokenizer,
            args.batch_size,
            args.epoch_size,
            args.seed,
            args.group,
            args.workers,
            languages,
            edits=bool(args.edit_weight),
            partial=args.partial,
        )
        validate = (
            shapes_validator(transform, tokenizer, args.val_sets, args.seed, languages)
            if args.val_sets
            else None
        )
        return loader, validate
    if args.edit_weight:
        raise BadInput(
            "--edit-weight needs --data shapes: only the Shapes world writes edit requests"
        )
    source = Path(args.data)
    if not source.is_file():
        raise NotFound(
            f"training data {source} not found (give 'shapes' or a CSV/JSONL of file,caption)"
        )
    pairs = PairsDataset(read_pairs(source), transform, tokenizer)
    validate = pairs_validator(args.val_pairs, transform, tokenizer) if args.val_pairs else None
    return make_loader(pairs, args.batch_size, args.workers), validate


def train_config(args, validated: bool) -> TrainConfig:
    overrides = {
        name: getattr(args, name)
        for name in CONFIG_OPTIONS
        if getattr(args, name, None) is not None
    }
    return TrainConfig(
        **{
            **asdict(TrainConfig()),
            **overrides,
            "out_dir": args.checkpoints or str(Path(args.out) / "checkpoints"),
            "resume": args.resume or "",
            "select_metric": "t2i_mean" if validated else "",
            "extra": {
                "data": args.data,
                "arch": args.arch,
                "init": args.init,
                "languages": args.languages,
                "edit_weight": args.edit_weight,
                "partial": args.partial,
            },
        }
    )


def run_train_clip(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    model, transform, tokenizer, model_cfg = model_to_train(args.arch, args.init)
    loader, validate = training_data(args, transform, tokenizer)
    cfg = train_config(args, validate is not None)
    command = (
        "python -m retrieval " + " ".join(sys.argv[1:])
        if sys.argv[0].endswith("__main__.py")
        else " ".join(sys.argv)
    )
    report = train_and_export(
        model, loader, cfg, args.out, model_cfg, validate, args.fp16, command, args.edit_weight
    )
    print(
        f"saved {args.out} (best step {report['best_step']}: {report['best_metrics']}); "
        f"{report['samples_per_second']:.0f} samples/s over {report['seconds']:.0f} s"
    )
    return report


def add_train_clip_arguments(parser) -> None:
    """Options of `python -m retrieval train-clip` (kept here, next to what they configure)."""
    parser.add_argument(
        "--data",
        default="shapes",
        help="'shapes' (fresh Shapes-world pairs rendered on the fly) or a CSV/JSONL with columns "
        "file,caption (paths relative to the file); CLIP4Cir's stage 1 is `train-stage1`",
    )
    parser.add_argument(
        "--arch",
        default="ShapesCLIP-Tiny",
        help="open_clip architecture to train from scratch (project configs: ShapesCLIP-Small, ShapesCLIP-Tiny, "
        "ShapesCLIP-Micro)",
    )
    parser.add_argument(
        "--init",
        help="fine-tune this model instead (a folder written by save_backbone / "
        "this command, or an open_clip ARCH/PRETRAINED spec)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the trained model (open_clip local-dir layout "
        "+ training.json); load it with --model OUT",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default 128)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (default 100)")
    parser.add_argument(
        "--towers", choices=list(TOWERS), help="which encoders learn (default both)"
    )
    parser.add_argument(
        "--last-blocks",
        type=int,
        help="train only the last N transformer/residual blocks of the chosen towers (default all)",
    )
    parser.add_argument(
        "--validate-every", type=int, help="steps between validations (default: only at the end)"
    )
    parser.add_argument(
        "--val-sets",
        type=int,
        default=48,
        help="shapes: validation gallery sets of 8 images (0 = no validation)",
    )
    parser.add_argument(
        "--val-pairs", help="CSV/JSONL of file,caption for text->image validation (pairs data)"
    )
    parser.add_argument(
        "--epoch-size",
        type=int,
        default=20_000,
        help="shapes: pairs per epoch (new renderings each epoch)",
    )
    parser.add_argument(
        "--group",
        type=int,
        default=2,
        help="shapes: each scene comes with GROUP-1 single-edit variants in its batch (hard negatives)",
    )
    parser.add_argument(
        "--languages",
        default="en",
        help=f"shapes: comma-separated caption languages among {','.join(LANGUAGES)} (default en)",
    )
    parser.add_argument(
        "--edit-weight",
        type=float,
        default=0.0,
        help="shapes: also learn CLIP4Cir's stage-1 objective (reference + edit request -> "
        "target) from each group's variants, with this weight (default 0: off)",
    )
    parser.add_argument(
        "--partial",
        type=float,
        default=0.0,
        help="shapes: share of captions naming only some objects and attributes ('a red circle'), "
        "each true of every batch image that holds them (default 0: off)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, data and order (default 0)"
    )
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1 (default: CUDA when present, with mixed precision)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default 0)"
    )
    parser.add_argument(
        "--checkpoints", help="checkpoint folder (default OUT/checkpoints; best/ and last/ inside)"
    )
    parser.add_argument(
        "--resume", help="continue from a checkpoint folder (e.g. OUT/checkpoints/last)"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="store the exported weights in float16 (half the size)"
    )
