"""TODO"""

from __future__ import annotations

import argparse

from retrieval.backbone import PREPROCESSING


def add_preprocessing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preprocessing",
        default="standard",
        choices=list(PREPROCESSING),
        help="image preprocessing: the backbone's own, or pad elongated images to ratio 1.25 "
        "(targetpad, used by CLIP4Cir) or to a square (squarepad) first",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
