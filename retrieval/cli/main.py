"""`python -m retrieval <command>`: the command line over the library.

Every argparse declaration of the project lives in `retrieval/cli/`; commands unpack their
arguments and call library functions with typed arguments. Each feature adds one
`_add_<name>(subparsers)` function and one line in `build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retrieval.backbone import load_backbone
from retrieval.cli.art import add_eval_commands as add_noisyart_eval
from retrieval.cli.art import add_finetune_commands
from retrieval.cli.composed import (
    add_train_combiner_arguments,
    add_train_stage1_arguments,
    run_train_combiner,
    run_train_stage1,
)
from retrieval.cli.convert import add_convert_command
from retrieval.cli.engine import add_engine_options, engine_settings
from retrieval.cli.evaluate import add_eval_commands as add_composed_eval
from retrieval.cli.milvus import add_backend_options, add_drop_command, index_into_milvus
from retrieval.cli.options import (
    add_device,
    add_recipe,
    add_runtime,
    apply_recipe,
    device_of,
    recipe_values,
    runtime_of,
)
from retrieval.cli.overview import add_duplicates_command, add_map_command
from retrieval.cli.phi import add_train_phi_arguments, run_train_phi
from retrieval.cli.publish import add_doctor_command, add_publish_command
from retrieval.cli.shapes import (
    add_generate_arguments,
    add_render_arguments,
    generate_command,
    render_command,
)
from retrieval.cli.train_clip import add_train_clip_arguments, run_train_clip
from retrieval.config import Settings
from retrieval.errors import BadInput, RetrievalError
from retrieval.hub import fetch, push_index
from retrieval.index import FLAT_MAX_ITEMS, INDEX_CHOICES, Index, build_index
from retrieval.search import Filters, Searcher
from retrieval.stores import open_index, update_collection
from retrieval.tags import load_vocabulary, store_tags, tag_index, to_csv, write_tags


def _backbone(args, spec: str | None = None, preprocessing: str | None = None):
    return load_backbone(
        spec or args.model,
        preprocessing=preprocessing or getattr(args, "preprocessing", "standard"),
        device=device_of(args),
        image_limits=args.settings.image_limits,
        runtime=runtime_of(args),
        cache_dir=args.settings.cache_dir,
    )


def _index_backbone(args, index_dir: str):
    """The backbone an index was built with, as its manifest records it."""
    index = open_index(index_dir, milvus_uri=args.settings.milvus_uri)
    return index, _backbone(args, index.model_spec(), index.manifest["preprocessing"])


def _cmd_index(args):
    args.settings = engine_settings(args)
    if args.backend == "milvus":
        return _print_report(args, index_into_milvus(args, _backbone(args)))
    report = build_index(
        args.folder,
        args.out,
        _backbone(args),
        index_type=args.index_type,
        metadata=args.metadata,
        index_params=_index_params(args.index_params),
        settings=args.settings,
    )
    _print_report(args, report)


def _index_params(text: str) -> dict:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"--index-params is not JSON ({error.msg}): {text!r}") from error
    if not isinstance(params, dict):
        raise BadInput(f"--index-params must be a JSON object, not {text!r}")
    return params


def _print_report(args, report) -> None:
    """The summary on stdout; with --report FILE also the full report as JSON."""
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2))


def _cmd_update(args):
    args.settings = engine_settings(args)
    index, backbone = _index_backbone(args, args.index)
    if args.model:
        backbone = _backbone(args, preprocessing=index.manifest["preprocessing"])
    report = update_collection(
        args.index, backbone, folder=args.folder, metadata=args.metadata, settings=args.settings
    )
    _print_report(args, report)


def _cmd_search(args):
    index_dir = fetch(args.index)
    index, backbone = _index_backbone(args, str(index_dir))
    if args.model:
        backbone = _backbone(args, preprocessing=index.manifest["preprocessing"])
    searcher = Searcher(index, backbone, max_k=args.settings.max_k)
    filters = Filters(
        artist=args.artist,
        date_from=args.date_from,
        date_to=args.date_to,
        keyword=args.keyword,
        tags=args.tag or None,
    )
    options = dict(k=args.k, offset=args.offset, min_score=args.min_score, filters=filters)
    options |= dict(ef_search=args.ef_search, nprobe=args.nprobe)
    if args.image:
        result = searcher.image(Path(args.image), **options)
    elif args.similar:
        result = searcher.similar(args.similar, **options)
    else:
        result = searcher.text(args.query, **options)
    if args.json:
        print(
            json.dumps(
                {
                    "query": result.query,
                    "notes": result.notes,
                    "hits": [
                        {"id": h.id, "score": h.score, "rank": h.rank, "item": h.item}
                        for h in result.hits
                    ],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    for note in result.notes:
        print(f"note: {note}")
    for hit in result.hits:
        print(f"{hit.rank:4d}  {hit.score:.4f}  {hit.id}  {hit.item.get('title', '')}")


def _cmd_info(args):
    index = open_index(fetch(args.index), milvus_uri=args.settings.milvus_uri)
    print(json.dumps({**index.manifest, "items": len(index)}, indent=2))


def _cmd_push(args):
    print(push_index(args.index, args.repo, private=args.private))


def _cmd_pull(args):
    location = args.repo if args.repo.startswith("hf-hub:") else f"hf-hub:{args.repo}"
    path = fetch(location, cache_dir=args.cache_dir)
    index = Index.load(path)
    print(f"{len(index)} items, model {index.manifest['model_spec']}, at {path}")


def _add_report_option(parser) -> None:
    parser.add_argument(
        "--report",
        help="also write the indexing report (counts, and every skipped file or metadata row "
        "with the reason) as JSON to this file",
    )


def _add_index(sub):
    parser = sub.add_parser(
        "index",
        help="embed a folder of images into a new index",
        description="Embed every image below FOLDER (jpg/png/webp/tif, recursive) into an index "
        "directory. Unreadable files are reported and skipped.",
    )
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="index directory to create or replace")
    _add_report_option(parser)
    parser.add_argument(
        "--model",
        required=True,
        help="model spec: ARCH/PRETRAINED (e.g. ViT-B-32/laion2b_s34b_b79k), hf-hub:org/repo, "
        "or a folder with open_clip_config.json + *.safetensors",
    )
    parser.add_argument(
        "--metadata",
        help="CSV or JSONL with id,file,title,artist,date,description,url,license "
        "(default: metadata.csv/.jsonl inside FOLDER if present)",
    )
    parser.add_argument(
        "--preprocessing",
        default="standard",
        choices=["standard", "targetpad", "squarepad"],
        help="standard transform, or pad elongated images to ratio 1.25 (targetpad) / square first",
    )
    parser.add_argument(
        "--index-type",
        default="auto",
        choices=INDEX_CHOICES,
        help=f"auto (default) = flat up to {FLAT_MAX_ITEMS:,} items, hnsw above; flat = exact; "
        "hnsw / ivfpq = approximate (ivfpq re-ranks its top candidates exactly)",
    )
    parser.add_argument(
        "--index-params",
        default="{}",
        help='JSON of FAISS parameters, e.g. \'{"m": 32, "ef_construction": 200, "ef_search": 64}\' '
        'or \'{"nlist": 1024, "nprobe": 16, "rerank": 100}\'',
    )
    add_backend_options(parser)
    add_engine_options(parser)
    add_device(parser)
    add_runtime(parser)
    parser.set_defaults(func=_cmd_index)


def _add_update(sub):
    parser = sub.add_parser(
        "update", help="re-index: embed only new or changed files, drop deleted ones"
    )
    parser.add_argument("index", help="index directory")
    parser.add_argument("--folder", help="image folder (default: the one the index was built from)")
    _add_report_option(parser)
    parser.add_argument(
        "--metadata", help="metadata CSV/JSONL (default: the one used at build time)"
    )
    parser.add_argument("--model", help="model spec (default: the one recorded in the index)")
    add_engine_options(parser)
    add_device(parser)
    add_runtime(parser)
    parser.set_defaults(func=_cmd_update)


def _add_search(sub):
    parser = sub.add_parser("search", help="search an index by text, image file or item id")
    parser.add_argument("query", nargs="?", help="natural-language query")
    parser.add_argument("--index", required=True, help="index directory or hf-hub:org/repo")
    parser.add_argument("--image", help="search with this image file instead of text")
    parser.add_argument(
        "--similar", metavar="ITEM_ID", help="items similar to this item (itself excluded)"
    )
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    parser.add_argument("--min-score", type=float, help="drop results below this cosine similarity")
    parser.add_argument("--artist", help="only items whose artist equals this (case-insensitive)")
    parser.add_argument("--date-from", type=int, help="only items dated in or after this year")
    parser.add_argument("--date-to", type=int, help="only items dated in or before this year")
    parser.add_argument(
        "--keyword", help="only items whose title or description contains these words"
    )
    parser.add_argument("--tag", action="append", help="only items carrying this tag (repeatable)")
    parser.add_argument(
        "--ef-search", type=int, help="HNSW indexes: candidates explored for this query"
    )
    parser.add_argument(
        "--nprobe", type=int, help="IVF-PQ indexes: clusters searched for this query"
    )
    parser.add_argument("--model", help="model spec (default: the one recorded in the index)")
    add_device(parser)
    add_runtime(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_cmd_search)


def _add_info(sub):
    parser = sub.add_parser(
        "info", help="print an index's manifest (model, dimension, counts, measured recall@10)"
    )
    parser.add_argument("index", help="index directory or hf-hub:org/repo")
    parser.set_defaults(func=_cmd_info)


def _add_push(sub):
    parser = sub.add_parser(
        "push", help="publish an index directory to a Hugging Face dataset repo"
    )
    parser.add_argument("index", help="index directory")
    parser.add_argument(
        "repo", help="org/name of the dataset repo (created if missing); token from HF_TOKEN"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.set_defaults(func=_cmd_push)


def _add_pull(sub):
    parser = sub.add_parser(
        "pull", help="download an index from a Hugging Face dataset repo into the cache"
    )
    parser.add_argument("repo", help="org/name[@revision] or hf-hub:org/name")
    parser.add_argument("--cache-dir", help="huggingface_hub cache directory (default: HF_HOME)")
    parser.set_defaults(func=_cmd_pull)


def _cmd_tag(args):
    index, backbone = _index_backbone(args, args.index)
    if args.model:
        backbone = _backbone(args, preprocessing=index.manifest["preprocessing"])
    vocabulary = load_vocabulary(args.vocabulary)
    tagged = tag_index(index, backbone, vocabulary, args.mode, args.top_k, args.threshold)
    if args.out:
        print(f"{len(tagged)} items tagged -> {write_tags(tagged, args.out)}")
    elif not args.store:
        print(to_csv(tagged), end="")
    if args.store:
        store_tags(index, tagged, replace=args.store == "replace")
        print(f"tags stored in {args.index} (items' 'tags' field; filter with search --tag)")


def _add_tag(sub):
    parser = sub.add_parser(
        "tag",
        help="zero-shot tag every item of an index against a vocabulary",
        description="Score each item's stored embedding against a vocabulary's terms (prompt "
        "ensembling, softmax within each group) and write one row per item.",
    )
    parser.add_argument("--index", required=True, help="index directory")
    parser.add_argument(
        "--vocabulary",
        required=True,
        help="shipped vocabulary name (heritage, shapes) or a .json/.txt file (one term per line)",
    )
    parser.add_argument(
        "--mode",
        default="single",
        choices=["single", "multi"],
        help="single = best TOP_K terms of each group; multi = every term above its threshold",
    )
    parser.add_argument(
        "--top-k", type=int, default=1, help="single mode: terms per group (default 1)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="multi mode: minimum probability within the group (default: the vocabulary's)",
    )
    parser.add_argument(
        "--out", help="write tags to this .csv or .jsonl file (default: CSV on stdout)"
    )
    parser.add_argument(
        "--store",
        choices=["merge", "replace"],
        help="also save tags in the index metadata (merge with or replace existing tags)",
    )
    parser.add_argument("--model", help="model spec (default: the one recorded in the index)")
    add_device(parser)
    add_runtime(parser)
    parser.set_defaults(func=_cmd_tag)


def _add_eval(sub):
    """`python -m retrieval eval BENCHMARK ...`: one sub-command per benchmark.

    To add a benchmark, write `add_<x>_eval_commands(benchmarks)` in your module (calling
    `benchmarks.add_parser(name, ...)` and `set_defaults(func=...)`) and add ONE call below.
    """
    parser = sub.add_parser("eval", help="measure models on a benchmark; JSON + Markdown results")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    add_noisyart_eval(benchmarks)  # noisyart, classfolders

    add_composed_eval(benchmarks)  # cirr, fashioniq, circo (any composition method)


def _add_finetune(sub):
    """`python -m retrieval finetune DATASET ...`: contrastive CLIP fine-tuning on a labelled dataset."""
    parser = sub.add_parser(
        "finetune", help="fine-tune CLIP on class texts (NoisyArt, class folders)"
    )
    datasets = parser.add_subparsers(dest="benchmark", required=True, metavar="DATASET")

    add_finetune_commands(datasets)  # noisyart, classfolders


def _add_shapes(sub):
    parser = sub.add_parser("shapes", help="the procedurally generated Shapes world (demo data)")
    actions = parser.add_subparsers(dest="shapes_command", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="render train/val/test splits in the CIRR format plus metadata.csv",
        description="Render seeded Shapes scenes (1-3 objects: shape, colour, size, position) with "
        "composed-retrieval triplets in the CIRR on-disk format and a metadata.csv for `index`.",
    )
    add_generate_arguments(generate)
    generate.set_defaults(func=generate_command)
    render = actions.add_parser(
        "render",
        help="render unlabeled images of one split (e.g. to train phi)",
        description="Render fresh scenes of one split as PNG files, with no text or triplet.",
    )
    add_render_arguments(render)
    render.set_defaults(func=render_command)


# Training commands: (help, description, options, entry point). Each also takes --recipe.
TRAINING_COMMANDS = {
    "train-clip": (
        "train or fine-tune a CLIP model on image/text pairs (CLIP4Cir stage 1: train-stage1)",
        "Train a CLIP model from scratch (e.g. ShapesCLIP-Tiny on the Shapes world) or "
        "fine-tune one, with periodic validation, best-checkpoint selection and resume. Writes an "
        "open_clip folder usable as --model.",
        add_train_clip_arguments,
        run_train_clip,
    ),
    "train-phi": (
        "train textual inversion (phi) on unlabeled images for zero-shot composed search",
        "Train phi, which turns an image into a pseudo-word for the prompt "
        "'a photo of $ that {caption}', on unlabeled images (a folder, or an index's stored vectors).",
        add_train_phi_arguments,
        run_train_phi,
    ),
    "train-stage1": (
        "fine-tune CLIP for composed retrieval (CLIP4Cir stage 1, query = image + text)",
        "Stage 1 of CLIP4Cir: fine-tune both encoders so normalise(image + text) retrieves "
        "the target (AdamW lr 2e-6); writes an open_clip folder usable as --model.",
        add_train_stage1_arguments,
        run_train_stage1,
    ),
    "train-combiner": (
        "train the CLIP4Cir Combiner (stage 2) on composed-retrieval triplets, CLIP frozen",
        "Stage 2 of CLIP4Cir: precompute (and cache) image features with the frozen "
        "model, then train the Combiner (Adam lr 2e-5, in-batch cross-entropy); keeps the best "
        "checkpoint by the protocol's validation metric.",
        add_train_combiner_arguments,
        run_train_combiner,
    ),
}


def _add_training_commands(sub):
    for name, (summary, description, add_arguments, run) in TRAINING_COMMANDS.items():
        parser = sub.add_parser(name, help=summary, description=description)
        add_arguments(parser)
        add_recipe(parser)
        parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices
    _add_index(sub)
    _add_update(sub)
    _add_search(sub)
    _add_info(sub)
    add_map_command(sub)
    add_duplicates_command(sub)
    _add_push(sub)
    _add_pull(sub)
    add_publish_command(sub)
    add_doctor_command(sub)
    add_drop_command(sub)
    _add_shapes(sub)
    _add_tag(sub)
    _add_eval(sub)
    _add_finetune(sub)
    _add_training_commands(sub)
    add_convert_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        recipe = recipe_values(argv)
        if recipe and argv and argv[0] in TRAINING_COMMANDS:
            apply_recipe(parser.commands[argv[0]], *recipe)
    except RetrievalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.settings = Settings.from_env()  # the CLI's one read of the environment
    if args.command == "search" and not (args.query or args.image or args.similar):
        print("error: give a text query, --image FILE or --similar ITEM_ID", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except RetrievalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
