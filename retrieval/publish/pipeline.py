"""`publish`: build a hosted collection's index from its dataset, attach its Combiner / phi, write
its dataset card, push it to the Hub and say which collections.json entry serves it.

The output folder (default SR_CACHE_DIR/publish/<org>--<name>) holds:

    dataset/       the dataset repo: README.md (the card) + the index (CURRENT, versions/, thumbs/)
    combiner/      the model repo <repo>-combiner, when --combiner is a local folder
    phi/           the model repo <repo>-phi, when --phi is a local folder
    images/        the served images, linked, + metadata.jsonl: what the index is built from
    publish.json   what was published: a digest of every input, counts, evaluation, the entry

Publishing again with nothing changed (same digest) reuses the index and its evaluation, so the
card is the same and the push uploads nothing; the push itself resumes where one broke off.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from retrieval import __version__
from retrieval.artifacts import artifact_dir
from retrieval.backbone import Backbone, load_backbone, model_fingerprint
from retrieval.composed.combiner import LAYOUT as COMBINER_LAYOUT
from retrieval.composed.combiner import combiner_composer
from retrieval.composed.phi import LAYOUT as PHI_LAYOUT
from retrieval.composed.phi import zero_shot_composer
from retrieval.config import DEFAULTS, Settings
from retrieval.doctor import Problem, check_files
from retrieval.errors import BadInput, RetrievalError
from retrieval.hub import HUB_PREFIX, PushResult, is_hub_location, push, push_index
from retrieval.index import Index, build_index
from retrieval.publish.card import CardInputs, dataset_card
from retrieval.publish.evaluation import Evaluation, evaluate_source
from retrieval.publish.sources import Facts, Source, read_source

RECORD = "publish.json"
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class PublishOptions:
    kind: str  # cirr | fashioniq | noisyart | folder
    root: Path
    model: str
    repo: str  # org/name of the dataset repo
    out: Path | None = None
    combiner: str | None = None
    phi: str | None = None
    preprocessing: str | None = None  # default: the Combiner's, else standard
    index_type: str = "flat"
    name: str | None = None  # the collection's name in collections.json
    title: str | None = None
    license: str = "unknown"  # a folder's licence (datasets state their own)
    private: bool = False


@dataclass
class Attachment:
    """A Combiner or phi: loaded, checked against the model, and where it is published."""

    key: str  # combiner | phi (the collections.json key)
    location: str  # as given: a folder or hf-hub:org/repo
    composer: object
    folder: Path  # its files here (the cache, for a Hub location)
    files: tuple[str, ...]

    @property
    def local(self) -> bool:
        return not is_hub_location(self.location)

    @property
    def licence(self) -> str | None:
        """The licence of weights converted from elsewhere (SEARLE's phi: CC BY-NC 4.0)."""
        module = getattr(self.composer, "combiner", None) or getattr(self.composer, "phi", None)
        return getattr(module.config, "licence", None)


@dataclass
class Published:
    out: Path
    repo: str
    entry: dict  # for collections.json, once pushed
    local_entry: dict  # the same collection served from the output folder
    rebuilt: bool
    evaluation: Evaluation
    pushes: list[PushResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def publish(
    options: PublishOptions,
    settings: Settings = DEFAULTS,
    dry_run: bool = False,
    api=None,
    progress: bool = True,
) -> Published:
    """Everything `python -m retrieval publish` does; `dry_run` stops before the push."""
    repo = check_repo(options.repo)
    out = Path(options.out or Path(settings.cache_dir) / "publish" / repo.replace("/", "--"))
    if out.resolve().is_relative_to(Path(options.root).resolve()):
        raise BadInput(f"--out {out} is inside --root: its thumbnails would be indexed next time")
    source = read_source(options.kind, options.root)
    attachments = load_attachments(options)
    backbone = load_backbone(
        options.model,
        preprocessing=options.preprocessing or _attached_preprocessing(attachments),
        device=settings.device,
        image_limits=settings.image_limits,
        cache_dir=settings.cache_dir,
    )
    for attachment in attachments:
        attachment.composer.check(backbone)
    stage(source, out / "images")
    digest = inputs_digest(source, backbone, attachments, options, settings)
    record = _read_record(out)
    index = _reusable_index(out, record, digest)
    rebuilt = index is None
    if rebuilt:
        index = build_index(
            out / "images", out / "dataset", backbone, options.index_type,
            progress=progress, settings=settings,
        ).index  # fmt: skip
        composers = {_method(a.key): a.composer for a in attachments}
        evaluation = evaluate_source(source, index, backbone, composers, progress)
    else:
        evaluation = Evaluation.from_dict(record["evaluation"])
    for attachment in attachments:
        if attachment.local:
            _copy(attachment, out / attachment.key)
    published = _describe(options, repo, out, source, index, attachments, evaluation, rebuilt)
    _write_record(out, digest, source, evaluation, published.entry)
    if not dry_run:
        published.pushes = push_all(out, repo, attachments, options.private, api)
    return published


def check_repo(repo: str) -> str:
    repo = repo.removeprefix(HUB_PREFIX)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BadInput(f"--repo must look like org/name, not {repo!r}")
    return repo


def load_attachments(options: PublishOptions) -> list[Attachment]:
    """The Combiner / phi as the app loads them (a folder or hf-hub:), with their files."""
    found = []
    for key, location, load, layout in (
        ("combiner", options.combiner, combiner_composer, COMBINER_LAYOUT),
        ("phi", options.phi, zero_shot_composer, PHI_LAYOUT),
    ):
        if location:
            folder = artifact_dir(location, layout)
            files = (layout.weights, layout.config)
            found.append(Attachment(key, str(location), load(str(folder)), folder, files))
    return found


def _attached_preprocessing(attachments: list[Attachment]) -> str:
    """A Combiner was trained on features of one preprocessing: index with the same."""
    for attachment in attachments:
        if attachment.key == "combiner":
            return attachment.composer.combiner.config.preprocessing
    return "standard"


def _method(key: str) -> str:
    return "combiner" if key == "combiner" else "zero-shot"


def stage(source: Source, folder: Path) -> None:
    """Link the served images into one folder with a metadata.jsonl, so the index builder (which
    indexes a folder) sees exactly the split the demo serves, under the ids evaluation uses."""
    if folder.exists():
        foreign = [
            p
            for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink() and p.name != METADATA
        ]
        if foreign:
            raise BadInput(
                f"{folder} holds files publish did not write (e.g. {foreign[0]}); give another --out"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for image in source.images:
        link = folder / image.file
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image.path.resolve())
    rows = [{**image.meta, "file": image.file} for image in source.images]
    lines = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    (folder / METADATA).write_text(lines, encoding="utf-8")


def inputs_digest(
    source: Source,
    backbone: Backbone,
    attachments: list[Attachment],
    options: PublishOptions,
    settings: Settings,
) -> str:
    """A hash of everything the index and its evaluation depend on: when it is unchanged, so
    are they, and the last build is published again as it is."""
    digest = hashlib.sha256()
    facts = [__version__, options.kind, options.model, model_fingerprint(backbone)]
    facts += [backbone.preprocessing, options.index_type, settings.thumb_size, settings.map_method]
    for image in source.images:
        stat = image.path.stat()
        facts.append([image.file, str(image.path.resolve()), stat.st_size, stat.st_mtime_ns])
        facts.append(image.meta)
    for attachment in attachments:
        facts.append([attachment.key, _file_digests(attachment.folder, attachment.files)])
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _file_digests(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files]


def _read_record(out: Path) -> dict:
    try:
        return json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _reusable_index(out: Path, record: dict, digest: str) -> Index | None:
    """The index the last run built from these very inputs, if it is still whole (as `doctor`
    checks an index: every file of the live version and every thumbnail on disk)."""
    if record.get("digest") != digest or "evaluation" not in record:
        return None
    try:
        check_files(out / "dataset", str(out / "dataset"))
        return Index.load(out / "dataset")
    except (Problem, RetrievalError, OSError, ValueError):
        return None


def _copy(attachment: Attachment, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in attachment.files:
        shutil.copyfile(attachment.folder / name, target / name)


def _describe(options, repo, out, source, index, attachments, evaluation, rebuilt) -> Published:
    """The collections.json entries (Hub and local), the dataset card, and notes for the user."""
    hosted = {a.key: f"{HUB_PREFIX}{repo}-{a.key}" if a.local else a.location for a in attachments}
    here = {a.key: str((out / a.key).resolve()) if a.local else a.location for a in attachments}
    entry = collection_entry(options, repo, source, f"{HUB_PREFIX}{repo}", hosted)
    local_entry = collection_entry(options, repo, source, str((out / "dataset").resolve()), here)
    facts = _facts(source, options)
    licences = {a.key: a.licence for a in attachments if a.licence}
    card = CardInputs(source, facts, index, evaluation, repo, entry, hosted, licences)
    (out / "dataset" / "README.md").write_text(dataset_card(card), encoding="utf-8")
    notes = []
    if Path(options.model).expanduser().is_dir():
        notes.append(
            f"the model {options.model} is a local folder: publish it as a model repo and put its "
            'hf-hub: id in the entry\'s "model", or the Space cannot load it'
        )
    return Published(out, repo, entry, local_entry, rebuilt, evaluation, notes=notes)


def _facts(source: Source, options: PublishOptions) -> Facts:
    if source.kind != "folder":
        return source.facts
    return Facts(source.facts.name, license=options.license or "unknown")


def collection_entry(
    options: PublishOptions, repo: str, source: Source, index: str, attachments: dict[str, str]
) -> dict:
    """The entry the app reads (see CollectionSpec): the same keys, in the shipped file's order."""
    model = options.model
    if Path(model).expanduser().is_dir() and not is_hub_location(index):
        model = str(Path(model).expanduser().resolve())
    total = sum(source.counts.values())
    entry = {
        "name": options.name or (source.kind if source.kind != "folder" else repo.split("/")[1]),
        "title": options.title or source.title,
        "description": f"{total:,} images from {source.facts.name}"
        + ("; needs the Hub (downloaded on first use)." if is_hub_location(index) else "."),
        "index": index,
        "model": model,
        **attachments,
    }
    if source.vocabulary:
        entry["vocabulary"] = source.vocabulary
    if source.examples:
        entry["examples"] = source.examples
    return entry


def _write_record(out: Path, digest: str, source: Source, evaluation: Evaluation, entry: dict):
    record = {
        "digest": digest,
        "counts": source.counts,
        "skipped": [{"file": name, "reason": reason} for name, reason in source.skipped],
        "evaluation": evaluation.as_dict(),
        "entry": entry,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False))


def push_all(
    out: Path, repo: str, attachments: list[Attachment], private: bool, api=None
) -> list[PushResult]:
    """The model repos first, the dataset (card and CURRENT last) after: an entry never points at
    an index whose Combiner is not there yet."""
    results = [
        push(out / a.key, f"{repo}-{a.key}", "model", private=private, files=list(a.files), api=api)
        for a in attachments
        if a.local
    ]
    return results + [push_index(out / "dataset", repo, private=private, api=api)]
