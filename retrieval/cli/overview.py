"""`map` and `duplicates`: commands that look at a whole collection rather than one query."""

from __future__ import annotations

import csv
import json

from retrieval.duplicates import (
    CALIBRATED,
    DuplicateThresholds,
    collection_duplicates,
    mark_not_duplicates,
)
from retrieval.index import Index
from retrieval.layout import METHODS


def map_command(args) -> dict:
    """Redraw the stored collection map of an index (a new version; items and vectors unchanged)."""
    index = Index.load(args.index).redraw_map(args.method)
    drawn = index.manifest["map"]
    print(json.dumps({"index": str(index.directory), "items": len(index), **drawn}))
    return drawn


def add_map_command(sub) -> None:
    parser = sub.add_parser(
        "map",
        help="draw the collection map (2-D layout of the embeddings) stored with the index",
        description="Store a 2-D layout of the index's embeddings for the app's Map tab. UMAP "
        "keeps neighbours together; PCA is instant. Prints the method, the seconds it took and "
        "its trustworthiness (k=10, 1.0 = every map neighbour is a true neighbour).",
    )
    parser.add_argument("index", help="index directory")
    parser.add_argument(
        "--method", choices=METHODS, default="umap", help="layout method (default: umap)"
    )
    parser.set_defaults(func=map_command)


def duplicates_command(args) -> list[dict]:
    """Print (or write as CSV) the groups of copies; `--not-duplicates` records a decision first."""
    index = Index.load(args.index)
    if args.not_duplicates:
        mark_not_duplicates(index, args.not_duplicates.split(","))
    thresholds = DuplicateThresholds(args.min_cosine, args.min_copy_score)
    groups = collection_duplicates(index, thresholds, progress=True)
    rows = [
        {"group": number, "score": group["score"], "id": item_id,
         "title": index.item(item_id).get("title", ""), "file": index.item(item_id).get("file", "")}
        for number, group in enumerate(groups, start=1)
        for item_id in group["ids"]
    ]  # fmt: skip
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["group", "score", "id", "title", "file"])
            writer.writeheader()
            writer.writerows(rows)
    for row in rows:
        print(f"{row['group']:4d}  {row['score']:.4f}  {row['id']}  {row['title']}")
    print(f"{len(groups)} groups of copies ({len(rows)} items) among {len(index)} items")
    return groups


def add_duplicates_command(sub) -> None:
    parser = sub.add_parser(
        "duplicates",
        help="find groups of copies (re-encoded, resized, cropped, turned, recoloured) in an index",
        description="Candidates are each item's nearest neighbours by CLIP; a pair counts as a "
        "copy when one image, turned and scaled, matches the other's pixels. Thresholds default "
        "to the values calibrated in BENCHMARKS.md ('Near-duplicate groups').",
    )
    parser.add_argument("index", help="index directory")
    parser.add_argument(
        "--min-copy-score", type=float, default=CALIBRATED.min_copy_score,
        help=f"copy probability needed, 0..1 (default {CALIBRATED.min_copy_score}: calibrated)",
    )  # fmt: skip
    parser.add_argument(
        "--min-cosine", type=float, default=CALIBRATED.min_cosine,
        help=f"CLIP similarity for a pair to be checked (default {CALIBRATED.min_cosine})",
    )  # fmt: skip
    parser.add_argument(
        "--out", help="also write the groups as CSV (group, score, id, title, file)"
    )
    parser.add_argument(
        "--not-duplicates", metavar="ID,ID,...",
        help="first record that these items are not copies of one another (kept beside the index)",
    )  # fmt: skip
    parser.set_defaults(func=duplicates_command)
