"""`convert clip4cir|searle SRC --out DIR`: the papers' published weights as this project's folders."""

from __future__ import annotations

from retrieval.composed.convert import convert_clip4cir, convert_searle


def _run_clip4cir(args) -> None:
    print(convert_clip4cir(args.src, args.out, args.model_spec, args.arch).summary())


def _run_searle(args) -> None:
    print(convert_searle(args.src, args.out, args.model_spec).summary())


def _add_format(formats, name: str, summary: str, description: str, run) -> object:
    parser = formats.add_parser(name, help=summary, description=description)
    parser.add_argument("src", help="the downloaded checkpoint (.pt), read with weights_only=True")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.set_defaults(func=run)
    return parser


def add_convert_command(subparsers) -> None:
    """`python -m retrieval convert FORMAT SRC --out DIR`."""
    parser = subparsers.add_parser(
        "convert",
        help="convert published CLIP4Cir / SEARLE checkpoints into model folders",
        description="Turn a paper's released weights into the folders --model, --combiner and "
        "--phi take. Every key and shape is checked; the mapping is printed.",
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    clip4cir = _add_format(
        formats,
        "clip4cir",
        "a CLIP4Cir Combiner or fine-tuned CLIP checkpoint (MIT)",
        "Convert *_comb_RN50x4_fullft.pt into a Combiner folder, or *_clip_RN50x4_fullft.pt "
        "(OpenAI-layout CLIP) into an open_clip model folder; the file's 'Combiner' or 'CLIP' "
        "entry says which. Downloads: the Google Drive folder linked from "
        "github.com/ABaldrati/CLIP4Cir.",
        _run_clip4cir,
    )
    clip4cir.add_argument(
        "--model-spec",
        default="",
        help="Combiner: the backbone it belongs to, recorded in its config (e.g. the folder "
        "converted from the matching *_clip_RN50x4_fullft.pt)",
    )
    clip4cir.add_argument(
        "--arch",
        default="RN50x4",
        help="fine-tuned CLIP: its open_clip architecture (default %(default)s)",
    )
    searle = _add_format(
        formats,
        "searle",
        "a SEARLE phi checkpoint (CC BY-NC 4.0: non-commercial use only)",
        "Convert SEARLE_ViT-B32.pt or SEARLE_ViT-L14.pt (the files SEARLE's hubconf.py downloads "
        "from github.com/miccunifi/SEARLE/releases/tag/weights) into a phi folder. The weights "
        "are CC BY-NC 4.0; the licence is recorded in phi_config.json.",
        _run_searle,
    )
    searle.add_argument(
        "--model-spec",
        default="",
        help="backbone recorded in phi_config.json (default: ViT-B-32-quickgelu/openai for "
        "512-d phi, ViT-L-14-quickgelu/openai for 768-d)",
    )
