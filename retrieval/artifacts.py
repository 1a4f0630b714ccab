"""Saved model artifacts (the Combiner, phi): a folder of weights (safetensors) plus a JSON config.

They load from a path or the Hub, and record the backbone they belong to relative to themselves, so
a collection, its index and its models can be copied or published together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from retrieval.backbone import fingerprint_matches, portable_spec, resolved_spec
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.hub import fetch, is_hub_location


@dataclass(frozen=True)
class Layout:
    kind: str  # named in error messages
    weights: str
    config: str


def artifact_dir(spec: str | Path, layout: Layout) -> Path:
    """The folder of an artifact: a path (or "local-dir:PATH", or one of its files) or a Hub repo
    ("hf-hub:org/repo[@revision]", cached, so offline once downloaded)."""
    spec = str(spec)
    if is_hub_location(spec):
        path = fetch(spec, repo_type="model")
    else:
        path = Path(spec.removeprefix("local-dir:")).expanduser()
    if path.is_file():
        path = path.parent
    if not (path / layout.config).is_file() or not (path / layout.weights).is_file():
        raise NotFound(
            f"{spec} is not a {layout.kind} folder: expected {layout.config} and {layout.weights}"
        )
    return path


def save_artifact(module: torch.nn.Module, config, directory: str | Path, layout: Layout) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(directory / layout.weights))
    values = asdict(config)
    values["model_spec"] = portable_spec(values.get("model_spec", ""), directory)
    (directory / layout.config).write_text(json.dumps(values, indent=2))
    return directory


def load_artifact(
    spec: str | Path,
    layout: Layout,
    build: Callable,
    config_class: type,
    device=None,
    upgrade: Callable[[dict], dict] = lambda raw: raw,
):
    """`build(config_class(**config))` with the saved weights, on `device`, in eval mode."""
    directory = artifact_dir(spec, layout)
    try:
        raw = upgrade(json.loads((directory / layout.config).read_text()))
        raw["model_spec"] = resolved_spec(raw.get("model_spec", ""), directory)
        config = config_class(**raw)
    except (TypeError, json.JSONDecodeError, BadInput) as error:
        raise BadInput(
            f"{directory / layout.config} is not a valid {layout.kind} config: {error}"
        ) from error
    module = build(config)
    module.load_state_dict(load_file(str(directory / layout.weights)))
    return module.to(device or "cpu").eval()


def check_trained_for(backbone, kind: str, config, size_problem: str, command: str) -> None:
    """Refuse a backbone the artifact was not trained for: other sizes (`size_problem`, empty when
    the sizes agree), or the same sizes with other weights (the recorded fingerprint differs)."""
    trained_on = config.model_spec or "another model"
    retrain = f"train {kind} for this model ({command})"
    if size_problem:
        raise IndexMismatch(f"{kind} was trained for {trained_on} ({size_problem}): {retrain}")
    if not fingerprint_matches(config.model_fingerprint, backbone):
        raise IndexMismatch(
            f"{kind} was trained for {trained_on}; the model in use ({backbone.spec}) has the same "
            f"sizes but different weights: {retrain}"
        )
