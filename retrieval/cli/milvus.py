"""Options and commands of the Milvus backend (`index --backend milvus`, `drop`).

The library (`retrieval.milvus_store`) is imported inside the commands, so the CLI starts
without pymilvus; `update`, `search` and `info` find a Milvus collection through its folder.
"""

from __future__ import annotations

import argparse

from retrieval.errors import BadInput

BACKENDS = ("faiss", "milvus")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="faiss",
        choices=BACKENDS,
        help="faiss (default): a local index folder; milvus: items, metadata and vectors go to "
        "the Milvus at SR_MILVUS_URI (default: the Milvus Lite file SR_CACHE_DIR/milvus.db), "
        "--out keeps the manifest and thumbnails (pip install -r requirements-scale.txt)",
    )
    parser.add_argument(
        "--milvus-collection",
        help="name of the Milvus collection (default: from the --out folder's name)",
    )


def index_into_milvus(args, backbone):
    """`index --backend milvus`: exact (FLAT) search in Milvus, so no FAISS options apply."""
    from retrieval.milvus_store import build_milvus_index, milvus_uri

    if args.index_type not in ("auto", "flat") or args.index_params.strip() not in ("", "{}"):
        raise BadInput(
            "--index-type and --index-params tune the local FAISS index; a Milvus collection "
            "is searched exactly (FLAT)"
        )
    return build_milvus_index(
        args.folder,
        args.out,
        backbone,
        milvus_uri(args.settings),
        collection=args.milvus_collection,
        metadata=args.metadata,
        settings=args.settings,
    )


def _cmd_drop(args) -> None:
    from retrieval.milvus_store import drop_milvus_index

    drop_milvus_index(args.index, args.settings.milvus_uri)
    print(f"dropped the Milvus collection of {args.index} (its thumbnails stay in the folder)")


def add_drop_command(sub) -> None:
    parser = sub.add_parser(
        "drop",
        help="delete a Milvus-backed collection from Milvus",
        description="Delete the Milvus collection an index folder points at, and the folder's "
        "milvus.json. A local index is deleted by removing its folder.",
    )
    parser.add_argument("index", help="index folder built with --backend milvus")
    parser.set_defaults(func=_cmd_drop)
