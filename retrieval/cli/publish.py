"""`publish` (a hosted collection to the Hub) and `doctor` (check a deployment's collections)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from retrieval.backbone import PREPROCESSING
from retrieval.cli.options import add_device, device_of
from retrieval.doctor import diagnose
from retrieval.errors import RetrievalError
from retrieval.index import INDEX_TYPES
from retrieval.publish.pipeline import PublishOptions, publish
from retrieval.publish.sources import KINDS


class DeploymentFaults(RetrievalError):
    """`doctor` found faults: the command exits non-zero."""


def publish_command(args):
    options = PublishOptions(
        kind=args.kind,
        root=Path(args.root),
        model=args.model,
        repo=args.repo,
        out=Path(args.out) if args.out else None,
        combiner=args.combiner,
        phi=args.phi,
        preprocessing=args.preprocessing,
        index_type=args.index_type,
        name=args.name,
        title=args.title,
        license=args.license,
        private=args.private,
    )
    settings = replace(args.settings, device=device_of(args))
    published = publish(options, settings, dry_run=args.dry_run)
    print(f"{'rebuilt' if published.rebuilt else 'unchanged'}: {published.out}")
    for table in published.evaluation.tables:
        print(f"\n{table.heading}\n{table.markdown}")
    for note in published.evaluation.notes + published.notes:
        print(f"note: {note}")
    for result in published.pushes:
        print(
            f"{result.repo}: {len(result.uploaded)} files uploaded, {len(result.deleted)} deleted -> {result}"
        )
    if args.dry_run:
        print("\ndry run: nothing pushed. To try it here, add to collections.json:")
        print(json.dumps(published.local_entry, indent=2, ensure_ascii=False))
    print("\nAdd to collections.json (once pushed):")
    print(json.dumps(published.entry, indent=2, ensure_ascii=False))
    return published


def add_publish_command(sub) -> None:
    parser = sub.add_parser(
        "publish",
        help="build, describe and push a hosted collection (NoisyArt, CIRR, FashionIQ, a folder)",
        description="Index the images the demo serves (CIRR: val + test1; FashionIQ: the val "
        "images of dress/shirt/toptee; NoisyArt: test_200 with titles and artists; folder: "
        "every image), attach a Combiner / phi checked against the model, write a dataset card "
        "with an evaluation on the labelled queries, push to a Hugging Face dataset repo (only "
        "files the Hub does not hold yet; an interrupted push resumes) and print the "
        "collections.json entry. Token from HF_TOKEN or the saved login.",
    )
    parser.add_argument("kind", choices=KINDS, help="dataset layout (see the README)")
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--model", required=True, help="model spec (as for `index`)")
    parser.add_argument("--repo", required=True, help="org/name of the dataset repo")
    parser.add_argument(
        "--combiner", help="Combiner folder (pushed to <repo>-combiner) or hf-hub:org/repo"
    )
    parser.add_argument("--phi", help="phi folder (pushed to <repo>-phi) or hf-hub:org/repo")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, push nothing")
    parser.add_argument("--out", help="output folder (default: SR_CACHE_DIR/publish/<org>--<name>)")
    parser.add_argument(
        "--preprocessing",
        choices=list(PREPROCESSING),
        help="image preprocessing (default: the Combiner's, else standard)",
    )
    parser.add_argument("--index-type", default="flat", choices=INDEX_TYPES, help="default flat")
    parser.add_argument("--name", help="collection name in collections.json (default: KIND)")
    parser.add_argument("--title", help="collection title (default: the dataset's)")
    parser.add_argument(
        "--license",
        default="unknown",
        help="a folder's licence, as a Hugging Face licence id (datasets state their own)",
    )
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    add_device(parser)
    parser.set_defaults(func=publish_command)


def doctor_command(args):
    report = diagnose(args.settings, args.collections)
    print(report.text())
    if report.faults:
        raise DeploymentFaults(f"{len(report.faults)} faults: see the 'do:' line under each")
    return report


def add_doctor_command(sub) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check a deployment: every collection resolves, is whole and fits its model",
        description="For each entry of collections.json: the index resolves (a folder, or a Hub "
        "repo in the cache), its files and thumbnails are there, the model is the one the "
        "vectors came from, and the Combiner / phi fit it. Each problem comes with what to do; "
        "exits non-zero on any fault (a Hub index not cached offline is only a warning).",
    )
    parser.add_argument(
        "--collections", help="collections file (default: SR_COLLECTIONS_FILE, collections.json)"
    )
    parser.set_defaults(func=doctor_command)
