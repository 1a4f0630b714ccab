"""`--engine` and `--ray-address` of `index` and `update`: what embeds the images.

They override SR_ENGINE / SR_RAY_ADDRESS in the command's settings; the library reads only those
settings, so whichever backend writes the index (FAISS or Milvus) gets the engine's vectors.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from retrieval.config import Settings
from retrieval.errors import BadInput
from retrieval.index import ENGINES


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="inprocess: this process's DataLoader pipeline; ray: Ray Data model actors, one per "
        "GPU or one per CPU (pip install -r requirements-scale.txt). Default: SR_ENGINE, else "
        "inprocess",
    )
    parser.add_argument(
        "--ray-address",
        help="with --engine ray: the cluster to run on, `auto` (the one `ray start` began here) "
        "or ray://HEAD:10001 (default: SR_RAY_ADDRESS, else a one-node Ray started for this "
        "command and stopped after it)",
    )


def engine_settings(args) -> Settings:
    """The command's settings with --engine / --ray-address applied, and --device: `cpu` keeps
    the Ray actors off the cluster's GPUs too."""
    settings = args.settings
    if args.device:
        settings = replace(settings, device=args.device)
    if args.engine:
        settings = replace(settings, engine=args.engine)
    if args.ray_address:
        if settings.engine != "ray":
            raise BadInput("--ray-address needs --engine ray (or SR_ENGINE=ray)")
        settings = replace(settings, ray_address=args.ray_address)
    return settings
