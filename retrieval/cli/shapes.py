"""`shapes generate` (the Shapes world in the CIRR layout) and `shapes render` (unlabeled images)."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from retrieval.shapes.languages import LANGUAGES, in_languages, parse_languages
from retrieval.shapes.world import (
    IMAGE_SIZE,
    SET_VARIANTS,
    TEXT_DISTRACTORS,
    SplitData,
    render_unlabeled,
    write_dataset,
)


def generate_command(args) -> dict[str, SplitData]:
    """`python -m retrieval shapes generate`: write the splits in the CIRR layout."""

    splits = {
        name: count
        for name, count in (
            ("train", args.train_sets),
            ("val", args.val_sets),
            ("test", args.test_sets),
        )
        if count
    }
    languages = parse_languages(args.languages)
    total = sum(splits.values()) * (SET_VARIANTS + 1 + TEXT_DISTRACTORS)
    rephrase = None if languages == ("en",) else (lambda data: in_languages(data, languages))
    with tqdm(total=total, desc="render", unit="img") as bar:
        result = write_dataset(
            args.out,
            splits,
            seed=args.seed,
            size=args.size,
            progress=bar.update,
            rephrase=rephrase,
        )
    for split, data in result.items():
        print(f"{split}: {len(data.images)} images, {len(data.triplets)} triplets")
    print(f"written to {args.out}")
    return result


def render_command(args) -> Path:
    """`python -m retrieval shapes render`: unlabeled images of one split, numbered PNG files."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(tqdm(render_unlabeled(args.split, args.count, args.seed))):
        image.save(out / f"{args.split}-{number:05d}.png")
    print(f"{args.count} unlabeled {args.split} images written to {out}")
    return out


def add_render_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument(
        "--split", default="train", choices=["train", "val", "test"], help="scenes of this split"
    )
    parser.add_argument("--count", type=int, default=4000, help="images (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes and renderings")


def add_generate_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (CIRR layout + metadata.csv)")
    parser.add_argument(
        "--train-sets",
        type=int,
        default=0,
        help="gallery sets of the train split (8 images, 10 triplets each; default 0)",
    )
    parser.add_argument(
        "--val-sets", type=int, default=48, help="sets of the val split (default 48 = 384 images)"
    )
    parser.add_argument(
        "--test-sets",
        type=int,
        default=128,
        help="sets of the test split (default 128 = 1,024 images)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of scenes, edits, phrasings and renderings"
    )
    parser.add_argument(
        "--size", type=int, default=IMAGE_SIZE, help=f"image side in pixels (default {IMAGE_SIZE})"
    )
    parser.add_argument(
        "--languages",
        default="en",
        help=f"edit requests in these languages, in turn (comma-separated among "
        f"{','.join(LANGUAGES)}; default en)",
    )
