"""Zero-shot tagging: score images against a vocabulary of terms with the CLIP text encoder.

A vocabulary is a set of named groups (colour, shape; subject, material...), each with its terms
and the prompt templates that turn a term into sentences. A term's text feature is the mean of
its normalised template features (prompt ensembling). Scores are the model's logits
(logit_scale x cosine) turned into probabilities by a softmax *within each group*, so they are
comparable across groups of different sizes:

- single-label: the top_k most probable terms of every group (one colour, one shape...);
- multi-label: every term whose probability reaches its threshold (per-tag thresholds from the
  vocabulary file, else the caller's, else the vocabulary's default).

Vocabularies ship as JSON under `retrieval/vocabularies/`; users pass a .json in the same format,
a .txt with one term per line, or a list of strings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from retrieval.backbone import Backbone
from retrieval.errors import BadInput, NotFound, TooLarge
from retrieval.images import ImageSource
from retrieval.search import tag_names

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
MODES = ("single", "multi")
DEFAULT_TEMPLATES = (
    "a photo of {}",
    "a photograph of {}",
    "a painting of {}",
    "an image of {}",
    "an artwork showing {}",
)
DEFAULT_THRESHOLD = 0.1
MAX_TERMS = 5000
ENCODE_BATCH = 256


class Tag(NamedTuple):
    tag: str
    score: float  # probability within the tag's group
    group: str


@dataclass(frozen=True)
class Group:
    name: str
    terms: tuple[str, ...]  # the tags as shown and stored
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    prompts: tuple[str, ...] = ()  # what fills the templates, when it differs from the tag

    def prompt_terms(self) -> tuple[str, ...]:
        return self.prompts or self.terms


@dataclass(frozen=True)
class Vocabulary:
    name: str
    groups: tuple[Group, ...]
    description: str = ""
    threshold: float = DEFAULT_THRESHOLD
    thresholds: dict = field(default_factory=dict, hash=False)  # per-tag overrides

    @property
    def terms(self) -> list[str]:
        return [term for group in self.groups for term in group.terms]

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise NotFound(f"vocabulary {self.name!r} has no group {name!r}")

    def fingerprint(self) -> str:
        """Identifies the prompts: cached text features are reused only for identical vocabularies."""
        payload = json.dumps([(g.name, g.terms, g.templates, g.prompts) for g in self.groups])
        return hashlib.sha1(payload.encode()).hexdigest()


# -- loading -------------------------------------------------------------------------------------
def list_vocabularies() -> list[str]:
    return sorted(path.stem for path in VOCABULARY_DIR.glob("*.json"))


def vocabulary_from_terms(
    terms: list[str], name: str = "custom", templates: tuple[str, ...] = DEFAULT_TEMPLATES
) -> Vocabulary:
    """A one-group vocabulary from a user's list (blank entries dropped, duplicates merged)."""
    cleaned = list(
        dict.fromkeys(term.strip() for term in terms if isinstance(term, str) and term.strip())
    )
    if not cleaned:
        raise BadInput("the vocabulary is empty: give at least one term")
    if len(cleaned) > MAX_TERMS:
        raise TooLarge(f"the vocabulary has {len(cleaned)} terms; the limit is {MAX_TERMS}")
    return Vocabulary(name, (Group("tags", tuple(cleaned), _check_templates(templates)),))


def _check_templates(templates) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise BadInput(
            "every prompt template must be a string containing '{}' (where the term goes)"
        )
    return templates


def vocabulary_from_dict(data: dict, name: str) -> Vocabulary:
    """The JSON format: {"templates": [...], "threshold": x, "thresholds": {term: x},
    "groups": {group: {"terms": [...], "templates": [...]}} or {group: [terms]}}; a term is a
    string or {"tag": shown, "prompt": text put into the templates}."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or not data["groups"]:
        raise BadInput(f"vocabulary {name!r}: expected an object with a non-empty 'groups' object")
    default_templates = _check_templates(data.get("templates", DEFAULT_TEMPLATES))
    groups = []
    for group_name, spec in data["groups"].items():
        spec = {"terms": spec} if isinstance(spec, list) else spec
        terms, prompts = _terms_and_prompts(spec.get("terms", []), f"{name}/{group_name}")
        templates = _check_templates(spec.get("templates", default_templates))
        groups.append(Group(str(group_name), terms, templates, prompts))
    if sum(len(group.terms) for group in groups) > MAX_TERMS:
        raise TooLarge(f"vocabulary {name!r} has more than {MAX_TERMS} terms")
    thresholds = {str(k): float(v) for k, v in data.get("thresholds", {}).items()}
    return Vocabulary(
        str(data.get("name", name)),
        tuple(groups),
        str(data.get("description", "")),
        float(data.get("threshold", DEFAULT_THRESHOLD)),
        thresholds,
    )


def _terms_and_prompts(entries: list, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pairs = {}
    for entry in entries:
        tag, prompt = (
            (entry.get("tag"), entry.get("prompt")) if isinstance(entry, dict) else (entry, entry)
        )
        if not isinstance(tag, str) or not isinstance(prompt or tag, str) or not tag.strip():
            raise BadInput(f"vocabulary {where!r}: a term must be a string or {{'tag', 'prompt'}}")
        pairs.setdefault(tag.strip(), (prompt or tag).strip())
    if not pairs:
        raise BadInput(f"vocabulary {where!r}: the group has no terms")
    return tuple(pairs), tuple(pairs.values())


def load_vocabulary(name_or_path: str | Path) -> Vocabulary:
    """A shipped vocabulary by name (see list_vocabularies) or a .json / .txt file."""
    shipped = VOCABULARY_DIR / f"{name_or_path}.json"
    path = shipped if str(name_or_path) in list_vocabularies() else Path(name_or_path).expanduser()
    if not path.is_file():
        raise NotFound(
            f"no vocabulary {str(name_or_path)!r}: give one of {', '.join(list_vocabularies())} "
            "or a .json/.txt file"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return vocabulary_from_dict(json.loads(text), path.stem)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"vocabulary file {path.name} could not be read: {error}") from error
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return vocabulary_from_terms(lines, path.stem)


def as_vocabulary(vocabulary: Vocabulary | str | Path | list[str]) -> Vocabulary:
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    if isinstance(vocabulary, list | tuple):
        return vocabulary_from_terms(list(vocabulary))
    return load_vocabulary(vocabulary)


# -- text features -------------------------------------------------------------------------------
_feature_cache: dict[tuple, list[np.ndarray]] = {}
_cache_lock = threading.Lock()


def _ensembled(backbone: Backbone, group: Group) -> np.ndarray:
    """(terms, dim): the renormalised mean of each term's template features."""
    prompts = [
        template.format(term) for term in group.prompt_terms() for template in group.templates
    ]
    features = np.concatenate(
        [
            backbone.encode_texts(prompts[i : i + ENCODE_BATCH])
            for i in range(0, len(prompts), ENCODE_BATCH)
        ]
    )
    means = features.reshape(len(group.terms), len(group.templates), -1).mean(axis=1)
    return means / np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)


def text_features(backbone: Backbone, vocabulary: Vocabulary) -> list[np.ndarray]:
    """Per group, the ensembled term features; cached per (model, vocabulary)."""
    key = (id(backbone.model), str(backbone.device), backbone.runtime, vocabulary.fingerprint())
    with _cache_lock:
        cached = _feature_cache.get(key)
    if cached is None:
        cached = [_ensembled(backbone, group) for group in vocabulary.groups]
        with _cache_lock:
            if len(_feature_cache) > 32:
                _feature_cache.clear()
            _feature_cache[key] = cached
    return cached


def logit_scale(backbone: Backbone) -> float:
    scale = getattr(backbone.model, "logit_scale", None)
    return float(scale.detach().exp().clamp(max=100).item()) if scale is not None else 100.0


# -- scoring -------------------------------------------------------------------------------------
def group_probabilities(
    backbone: Backbone, image_vectors: np.ndarray, vocabulary: Vocabulary
) -> list[np.ndarray]:
    """Per group an (images, terms) matrix of softmax probabilities over that group's terms."""
    vectors = np.atleast_2d(np.asarray(image_vectors, dtype=np.float32))
    if vectors.shape[1] != backbone.dim:
        raise BadInput(
            f"image vectors have {vectors.shape[1]} dimensions; the model has {backbone.dim}"
        )
    scale = logit_scale(backbone)
    probabilities = []
    for features in text_features(backbone, vocabulary):
        logits = torch.from_numpy(scale * vectors @ features.T)
        probabilities.append(torch.softmax(logits, dim=1).numpy())
    return probabilities


def _check_mode(mode: str, top_k: int) -> None:
    if mode not in MODES:
        raise BadInput(f"unknown tagging mode {mode!r}; choose single or multi")
    if top_k < 1:
        raise BadInput("top_k must be at least 1")


def select_tags(
    probabilities: list[np.ndarray],
    row: int,
    vocabulary: Vocabulary,
    mode: str = "single",
    top_k: int = 1,
    threshold: float | None = None,
) -> list[Tag]:
    """The tags of one image, most probable first."""
    tags = []
    for group, group_probs in zip(vocabulary.groups, probabilities, strict=True):
        scores = group_probs[row]
        if mode == "single":
            chosen = np.argsort(-scores, kind="stable")[:top_k]
        else:
            chosen = [
                i
                for i, term in enumerate(group.terms)
                if scores[i]
                >= vocabulary.thresholds.get(
                    term, threshold if threshold is not None else vocabulary.threshold
                )
            ]
        tags += [Tag(group.terms[i], float(scores[i]), group.name) for i in chosen]
    return sorted(tags, key=lambda tag: -tag.score)


def tag_vectors(
    backbone: Backbone,
    image_vectors: np.ndarray,
    vocabulary,
    mode: str = "single",
    top_k: int = 1,
    threshold: float | None = None,
) -> list[list[Tag]]:
    """Tags for many already-embedded images (an index's vectors)."""
    _check_mode(mode, top_k)
    vocabulary = as_vocabulary(vocabulary)
    probabilities = group_probabilities(backbone, image_vectors, vocabulary)
    count = probabilities[0].shape[0]
    return [
        select_tags(probabilities, row, vocabulary, mode, top_k, threshold) for row in range(count)
    ]


def tag_image(
    backbone: Backbone,
    image: ImageSource,
    vocabulary,
    mode: str = "single",
    top_k: int = 1,
    threshold: float | None = None,
) -> list[Tag]:
    """Tags for one image: single = top_k per group; multi = all above threshold."""
    _check_mode(mode, top_k)
    return tag_vectors(
        backbone, backbone.encode_images([image]), vocabulary, mode, top_k, threshold
    )[0]


def tag_index(
    index,
    backbone: Backbone,
    vocabulary,
    mode: str = "single",
    top_k: int = 1,
    threshold: float | None = None,
) -> list[tuple[str, list[Tag]]]:
    """(item id, tags) for every item, from the stored vectors: no image is decoded again."""
    index.check_backbone(backbone)
    if len(index) == 0:
        return []
    tagged = tag_vectors(backbone, np.asarray(index.vectors), vocabulary, mode, top_k, threshold)
    return [(item["id"], tags) for item, tags in zip(index.items, tagged, strict=True)]


def store_tags(index, tagged: list[tuple[str, list[Tag]]], replace: bool = False):
    """Write tags into the items' "tags" field (a new index version), for search filters."""
    updates = {}
    for item_id, tags in tagged:
        existing = [] if replace else tag_names(index.item(item_id).get("tags"))
        updates[item_id] = {"tags": list(dict.fromkeys(existing + [tag.tag for tag in tags]))}
    return index.update_metadata(updates)


# -- output --------------------------------------------------------------------------------------
def to_csv(tagged: list[tuple[str, list[Tag]]]) -> str:
    """One row per item: id, tags (;-separated), scores, groups (in the same order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "tags", "scores", "groups"])
    for item_id, tags in tagged:
        writer.writerow(
            [
                item_id,
                ";".join(tag.tag for tag in tags),
                ";".join(f"{tag.score:.4f}" for tag in tags),
                ";".join(tag.group for tag in tags),
            ]
        )
    return buffer.getvalue()


def to_jsonl(tagged: list[tuple[str, list[Tag]]]) -> str:
    lines = [
        json.dumps({"id": item_id, "tags": [tag._asdict() for tag in tags]}, ensure_ascii=False)
        for item_id, tags in tagged
    ]
    return "".join(line + "\n" for line in lines)


def write_tags(tagged: list[tuple[str, list[Tag]]], out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in {".csv", ".jsonl"}:
        raise BadInput(f"--out must end in .csv or .jsonl, not {out.suffix or 'no suffix'!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        to_csv(tagged) if out.suffix.lower() == ".csv" else to_jsonl(tagged), encoding="utf-8"
    )
    return out
