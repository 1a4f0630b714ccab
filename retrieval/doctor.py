"""Check a deployment before visitors do: every collection in collections.json resolves, its index
is whole, its model is the one the vectors came from, and its Combiner / phi fit that model.

Each problem is a `Finding` that says what is wrong and what to do. A fault stops a collection
from serving; a warning is something that cannot be checked here (a Hub index with no copy in the
cache while offline), which the app fetches on first use once there is a network.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.backbone import Backbone, display_spec, load_backbone
from retrieval.catalog import CollectionSpec, serving_runtime
from retrieval.composed.combiner import combiner_composer
from retrieval.composed.phi import zero_shot_composer
from retrieval.config import DEFAULTS, Settings
from retrieval.errors import IndexMismatch, RetrievalError
from retrieval.hub import NotCached, fetch, is_hub_location
from retrieval.index import Index
from retrieval.stores import in_milvus, open_index
from retrieval.tags import load_vocabulary

FAULT, WARNING = "fault", "warning"
REQUIRED_FILES = ("manifest.json", "vectors.npy", "items.jsonl")
SHOWN = 3  # missing files named in a finding


@dataclass(frozen=True)
class Finding:
    collection: str
    level: str  # fault | warning
    problem: str
    fix: str


class Problem(Exception):
    """Raised by a check that cannot go on; becomes one finding."""

    def __init__(self, problem: str, fix: str, level: str = FAULT):
        super().__init__(problem)
        self.problem, self.fix, self.level = problem, fix, level


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    healthy: dict[str, str] = field(default_factory=dict)  # collection -> what was checked

    @property
    def faults(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.level == FAULT]

    def text(self) -> str:
        lines = [f"ok       {name}: {summary}" for name, summary in self.healthy.items()]
        for finding in self.findings:
            lines.append(f"{finding.level:<8} {finding.collection}: {finding.problem}")
            lines.append(f"{'':<8} do: {finding.fix}")
        warnings = len(self.findings) - len(self.faults)
        lines.append(f"{len(self.healthy)} ok, {len(self.faults)} faults, {warnings} warnings")
        return "\n".join(lines)


def diagnose(settings: Settings = DEFAULTS, collections_file: str | Path | None = None) -> Report:
    """Check every collection of `collections_file` (default: the settings' one)."""
    path = Path(collections_file or settings.collections_file)
    report = Report()
    try:
        specs = read_specs(path)
    except Problem as problem:
        report.findings.append(Finding(path.name, problem.level, problem.problem, problem.fix))
        return report
    for name, spec in specs:
        if isinstance(spec, Problem):
            report.findings.append(Finding(name, spec.level, spec.problem, spec.fix))
            continue
        findings, summary = check_collection(spec, settings)
        report.findings += findings
        if not findings:
            report.healthy[name] = summary
    return report


def read_specs(path: Path) -> list[tuple[str, CollectionSpec | Problem]]:
    """Each entry as a spec, or as the problem that keeps it from being one."""
    fix = f"correct {path.name} (see the README, 'The web app')"
    try:
        entries = json.loads(path.read_text())["collections"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Problem(f"{path} cannot be read as a collections file ({error})", fix) from error
    names = Counter(entry.get("name") for entry in entries if isinstance(entry, dict))
    specs = []
    for number, entry in enumerate(entries, start=1):
        name = str(entry.get("name") or "") if isinstance(entry, dict) else ""
        name = name or f"entry {number}"
        if names[name] > 1:
            specs.append((name, Problem(f"{names[name]} collections are named {name!r}", fix)))
            continue
        try:
            specs.append((name, CollectionSpec.from_dict(entry, path.parent)))
        except (TypeError, AttributeError) as error:
            specs.append(
                (name, Problem(f"not a valid entry ({error}); it needs name, title and index", fix))
            )
    return specs


def check_collection(spec: CollectionSpec, settings: Settings) -> tuple[list[Finding], str]:
    """The findings of one collection (none when it serves) and a one-line summary."""
    findings: list[Finding] = []

    def note(problem: Problem) -> None:
        findings.append(Finding(spec.name, problem.level, problem.problem, problem.fix))

    try:
        index_dir = resolve_index(spec.index)
        if in_milvus(index_dir):
            index = open_milvus(index_dir, spec.index, settings)
        else:
            check_files(index_dir, spec.index)
            index = load_index(index_dir, spec.index)
        backbone = load_model(spec, index, settings)
        check_model(index, backbone, spec)
    except Problem as problem:
        note(problem)
        return findings, ""
    for check in (check_combiner, check_phi, check_vocabulary):
        try:
            check(spec, backbone)
        except Problem as problem:
            note(problem)
    extras = "".join(
        f"; {text}"
        for present, text in (
            (spec.combiner, "the Combiner fits"),
            (spec.phi, "phi fits"),
            (spec.vocabulary, f"vocabulary {spec.vocabulary}"),
        )
        if present
    )
    return (
        findings,
        f"{len(index)} items, model {display_spec(backbone.spec)} (dim {index.dim}){extras}",
    )


def resolve_index(location: str) -> Path:
    try:
        return fetch(location, "dataset")
    except NotCached as error:
        repo = location.removeprefix("hf-hub:")
        raise Problem(
            f"not cached: {location} has no copy here and the Hub cannot be reached",
            f"run `python -m retrieval pull {repo}` where there is a network (the app also "
            "fetches it on first use)",
            WARNING,
        ) from error
    except RetrievalError as error:
        fix = (
            "check the repo name and your access, or publish it (`python -m retrieval publish`)"
            if is_hub_location(location)
            else 'correct "index", or build it (`python -m retrieval index FOLDER --out PATH --model SPEC`)'
        )
        raise Problem(f"the index {location} cannot be resolved: {error}", fix) from error


def check_files(index_dir: Path, location: str) -> None:
    """Every file the live version needs, and every item's thumbnail, is on disk."""
    current = index_dir / "CURRENT"
    if not current.is_file():
        raise Problem(f"{location} is not an index (no CURRENT file)", _refetch(location))
    version = Path("versions") / current.read_text().strip()
    _require(_absent(index_dir, [version / name for name in REQUIRED_FILES]), location)
    try:
        manifest = json.loads((index_dir / version / "manifest.json").read_text())
    except ValueError as error:
        problem = f"{version}/manifest.json is not valid JSON ({error})"
        raise Problem(problem, _refetch(location)) from error
    ann = [] if manifest.get("index_type", "flat") == "flat" else [version / "index.faiss"]
    _require(
        _absent(index_dir, ann) + _missing_thumbs(index_dir, _version_thumbs(index_dir, version)),
        location,
    )
    _check_vectors(index_dir / version, manifest, location)


def _absent(index_dir: Path, paths: list[Path]) -> list[str]:
    return [str(path) for path in paths if not (index_dir / path).is_file()]


def _require(missing: list[str], location: str) -> None:
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (
            f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        )
        raise Problem(f"{len(missing)} files of the index are missing: {shown}", _refetch(location))


def _version_thumbs(index_dir: Path, version: Path) -> list[str | None]:
    with open(index_dir / version / "items.jsonl", encoding="utf-8") as handle:
        return [json.loads(line).get("thumb") for line in handle if line.strip()]


def _missing_thumbs(index_dir: Path, thumbs: list[str | None]) -> list[str]:
    return [
        f"thumbs/{name}"
        for name in thumbs
        if not name or not (index_dir / "thumbs" / name).is_file()
    ]


def load_index(index_dir: Path, location: str) -> Index:
    try:
        return Index.load(index_dir)
    except (RetrievalError, OSError, ValueError) as error:
        raise Problem(
            f"the index {location} cannot be loaded: {error}", _refetch(location)
        ) from error


def _check_vectors(version_dir: Path, manifest: dict, location: str) -> None:
    """The vectors agree with the manifest: one per item, of the recorded dimension."""
    vectors = np.load(version_dir / "vectors.npy", mmap_mode="r")
    expected = (int(manifest.get("count", -1)), int(manifest.get("dim", -1)))
    if vectors.shape != expected:
        raise Problem(
            f"vectors.npy holds {vectors.shape} but the manifest records {expected[0]} items "
            f"of dimension {expected[1]}",
            _refetch(location),
        )


def _refetch(location: str) -> str:
    if is_hub_location(location):
        repo = location.removeprefix("hf-hub:")
        return (
            f"run `python -m retrieval pull {repo}` where there is a network; if the files are "
            "missing on the Hub too, publish the index again"
        )
    return "rebuild it (`python -m retrieval index FOLDER --out PATH --model SPEC`)"


def open_milvus(index_dir: Path, location: str, settings: Settings) -> Index:
    """A collection living in Milvus: reachable, holding what the folder recorded, with every
    item's thumbnail in the folder (the app shows them)."""
    try:
        index = open_index(index_dir, milvus_uri=settings.milvus_uri)
    except (RetrievalError, OSError, ValueError) as error:
        raise Problem(
            f"the Milvus collection of {location} cannot be opened: {error}",
            "start the Milvus it names (or set SR_MILVUS_URI to where it runs), or rebuild it "
            "(`python -m retrieval index FOLDER --out PATH --model SPEC --backend milvus`)",
        ) from error
    _require(_missing_thumbs(index_dir, [item.get("thumb") for item in index.items]), location)
    return index


def load_model(spec: CollectionSpec, index: Index, settings: Settings) -> Backbone:
    model = spec.model or index.model_spec()
    try:
        runtime = serving_runtime(spec, settings)
    except RetrievalError as error:
        raise Problem(
            str(error), 'correct "runtime" (or SR_RUNTIME): torch, onnx or onnx-int8'
        ) from error
    try:
        return load_backbone(
            model,
            preprocessing=index.manifest["preprocessing"],
            device=settings.device,
            image_limits=settings.image_limits,
            runtime=runtime,
            cache_dir=settings.cache_dir,
        )
    except RetrievalError as error:
        raise Problem(
            f"the model {model} cannot be loaded: {error}",
            'download it once where there is a network, or set "model" to a local model folder',
        ) from error


def check_model(index: Index, backbone: Backbone, spec: CollectionSpec) -> None:
    """The model's fingerprint and dimension are those the manifest recorded."""
    try:
        index.check_backbone(backbone)
    except IndexMismatch as error:
        recorded = index.manifest["model_spec"]
        raise Problem(
            f"model and index do not match: {error}",
            f'set "model" to the model the index was built with ({recorded}), or rebuild the '
            f"index with {backbone.spec} (`python -m retrieval index FOLDER --out PATH --model "
            f"{spec.model or recorded}`)",
        ) from error


def check_combiner(spec: CollectionSpec, backbone: Backbone) -> None:
    if spec.combiner:
        _check_artifact("Combiner", spec.combiner, combiner_composer, backbone, "train-combiner")


def check_phi(spec: CollectionSpec, backbone: Backbone) -> None:
    if spec.phi:
        _check_artifact("phi", spec.phi, zero_shot_composer, backbone, "train-phi")


def _check_artifact(kind: str, location: str, composer, backbone: Backbone, command: str) -> None:
    """Load the artifact as the app does, then the composer's own check against the model."""
    key = "combiner" if kind == "Combiner" else "phi"
    try:
        composer(location).check(backbone)
    except NotCached as error:
        raise Problem(
            f"not cached: the {kind} {location} has no copy here",
            f"download it once where there is a network (`hf download {location.removeprefix('hf-hub:')}`)",
            WARNING,
        ) from error
    except IndexMismatch as error:
        raise Problem(
            f"the {kind} does not fit the model: {error}",
            f"train one for {backbone.spec} (`python -m retrieval {command} ... --model {backbone.spec}`), "
            f'or remove "{key}" from the entry',
        ) from error
    except (RetrievalError, OSError, RuntimeError) as error:
        raise Problem(
            f"the {kind} {location} cannot be loaded: {error}",
            f'correct "{key}": a folder (or hf-hub: repo) written by `python -m retrieval {command}`',
        ) from error


def check_vocabulary(spec: CollectionSpec, backbone: Backbone) -> None:
    if not spec.vocabulary:
        return
    try:
        load_vocabulary(spec.vocabulary)
    except RetrievalError as error:
        raise Problem(str(error), 'correct "vocabulary" or remove it from the entry') from error
