"""`train-phi`: zero-shot composed retrieval weights from a folder of unlabeled images or an index."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from retrieval.backbone import load_backbone
from retrieval.cli.options import add_device, add_preprocessing, add_seed, device_of
from retrieval.composed.phi import DEFAULT_TEMPLATE, fill_template, save_phi
from retrieval.train.phi import (
    OTIOptions,
    distill_phi,
    features_from_images,
    features_from_index,
    invert_images,
    phi_train_config,
    read_concepts,
    train_phi,
)


def add_train_phi_arguments(parser) -> None:
    """Options of `python -m retrieval train-phi`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of unlabeled images to train on")
    source.add_argument("--index", help="index folder whose stored vectors are used (same --model)")
    parser.add_argument(
        "--model", required=True, help="open_clip model spec (arch/tag, folder or hf-hub:)"
    )
    parser.add_argument(
        "--out", required=True, help="output folder for phi.safetensors + phi_config.json"
    )
    parser.add_argument(
        "--method",
        choices=("contrastive", "oti"),
        default="contrastive",
        help="contrastive: train phi directly; oti: invert every image (OTI) then distil phi",
    )
    defaults = phi_train_config()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps for phi")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="images per step (default %(default)s)",
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="phi learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--reg-weight",
        type=float,
        default=0.1,
        help="weight of the word regulariser for phi (0 disables it)",
    )
    parser.add_argument(
        "--oti-steps", type=int, default=OTIOptions.steps, help="OTI steps per image (method oti)"
    )
    parser.add_argument(
        "--oti-lr", type=float, default=OTIOptions.lr, help="OTI learning rate (method oti)"
    )
    parser.add_argument(
        "--oti-reg-weight",
        type=float,
        default=OTIOptions.reg_weight,
        help="weight of the word regulariser during OTI",
    )
    parser.add_argument(
        "--concepts",
        help="concept words for the regulariser: a tagging vocabulary name (heritage, shapes), "
        "a vocabulary .json or a .txt with one term per line (default: a built-in generic list)",
    )
    parser.add_argument(
        "--train-prompts",
        "--train-prompt",
        nargs="+",
        metavar="PROMPT",
        help="prompts phi (and OTI) is trained with, one drawn per image and step; $ is the "
        "pseudo-word (default: the regulariser's phrase set, 'a photo of $', ...)",
    )
    parser.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="composed-query prompt; $ is the pseudo-word"
    )
    parser.add_argument(
        "--image-weight",
        type=float,
        default=0.0,
        help="weight of the reference image feature added to the query (0: SEARLE's text-only "
        "query); pick it on val with `python -m bench.inversion_benchmark --phi OUT`",
    )
    parser.add_argument(
        "--word-tokens",
        type=int,
        default=1,
        help="token embeddings per pseudo-word (SEARLE: 1; more help small text encoders)",
    )
    add_preprocessing(parser)
    add_device(parser)
    add_seed(parser)


def run_train_phi(args) -> Path:
    """Entry point of `train-phi`: features -> (OTI ->) phi -> saved folder."""

    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=device_of(args))
    if args.images:
        features = features_from_images(backbone, args.images)
    else:
        features = features_from_index(backbone, args.index)
    concepts = read_concepts(args.concepts)
    for prompt in [args.template, *(args.train_prompts or [])]:
        fill_template(prompt, "x")  # fail early on prompts without the placeholder
    cfg = phi_train_config(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        extra={"source": args.images or args.index},
    )
    common = dict(
        reg_weight=args.reg_weight,
        concepts=concepts,
        template=args.template,
        train_prompts=args.train_prompts,
    )
    if args.method == "oti":
        oti = OTIOptions(
            steps=args.oti_steps,
            lr=args.oti_lr,
            reg_weight=args.oti_reg_weight,
            batch_size=args.batch_size,
            seed=args.seed,
            word_tokens=args.word_tokens,
        )
        tokens, _ = invert_images(backbone, features, oti, concepts, prompts=args.train_prompts)
        phi, history = distill_phi(backbone, features, tokens, cfg, **common)
        phi.config.training["oti"] = asdict(oti)
    else:
        phi, history = train_phi(backbone, features, cfg, word_tokens=args.word_tokens, **common)
    phi.config.image_weight = args.image_weight
    out = save_phi(phi, args.out)
    print(f"phi trained on {len(features)} images, final loss {history[-1]:.4f} -> {out}")
    return out
