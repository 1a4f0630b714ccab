"""The dataset card (README.md) of a published collection: Hugging Face front matter, then where
the images come from and on what terms, what the index holds, how well it retrieves, how to use it.

Nothing in it depends on the time of writing, so publishing an unchanged collection again writes
the same card and uploads nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from huggingface_hub import DatasetCardData

from retrieval.backbone import display_spec
from retrieval.index import Index
from retrieval.publish.evaluation import Evaluation
from retrieval.publish.sources import Facts, Source

PROJECT = "Smart Retrieval"
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


@dataclass
class CardInputs:
    source: Source
    facts: Facts  # the source's, or a folder's own (licence from the command line)
    index: Index
    evaluation: Evaluation
    repo: str
    entry: dict  # the collections.json entry
    attachments: dict[str, str]  # "combiner" / "phi" -> where they are published
    licences: dict[str, str]  # "combiner" / "phi" -> the licence of weights made elsewhere


def dataset_card(inputs: CardInputs) -> str:
    body = [
        _summary(inputs),
        _section("Source", _source(inputs.facts)),
        _section("Licence", _licence(inputs.facts)),
        _section("Contents", _contents(inputs)),
        _section("Evaluation", _evaluation(inputs.evaluation)),
        _section("Use", _use(inputs)),
    ]
    if inputs.facts.citation:
        body.append(_section("Citation", f"```bibtex\n{inputs.facts.citation}\n```"))
    return f"---\n{_front_matter(inputs).to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n"


def size_category(count: int) -> str:
    return next((label for limit, label in SIZES if count < limit), "n>1M")


def _front_matter(inputs: CardInputs) -> DatasetCardData:
    facts = inputs.facts
    tags = ["smart-retrieval", "image-retrieval", "clip", "embeddings"]
    if inputs.source.composed:
        tags.append("composed-image-retrieval")
    extra = {"license_name": facts.license_name, "license_link": facts.license_link}
    return DatasetCardData(
        license=facts.license,
        pretty_name=inputs.entry["title"],
        tags=tags,
        task_categories=["image-feature-extraction"],
        size_categories=[size_category(len(inputs.index))],
        configs=[
            {
                "config_name": "default",
                "data_files": f"versions/{inputs.index.version}/items.jsonl",
            }
        ],
        **{key: value for key, value in extra.items() if value and facts.license == "other"},
    )


def _section(title: str, text: str) -> str:
    return f"## {title}\n\n{text}"


def _summary(inputs: CardInputs) -> str:
    return (
        f"# {inputs.entry['title']}\n\n"
        f"A search index of {len(inputs.index):,} images from {inputs.facts.name} for "
        f"{PROJECT}: {_model(inputs)} embeddings, thumbnails and "
        "metadata, ready for the app's text, image and composed search."
    )


def _model(inputs: CardInputs) -> str:
    """The model as the entry names it (the manifest records a folder relative to the index)."""
    return display_spec(inputs.entry["model"])


def _source(facts: Facts) -> str:
    where = f"[{facts.homepage}]({facts.homepage})" if facts.homepage else "a local folder"
    return f"Images and metadata from {facts.name} ({where})."


def _licence(facts: Facts) -> str:
    label = facts.license_name if facts.license == "other" and facts.license_name else facts.license
    text = f"Licence: `{label}`."
    if facts.license_link:
        text += f" See {facts.license_link}."
    return f"{text}\n\n{facts.terms}" if facts.terms else text


def _contents(inputs: CardInputs) -> str:
    manifest, source = inputs.index.manifest, inputs.source
    rows = "\n".join(f"| {group} | {count:,} |" for group, count in source.counts.items())
    lines = [
        f"| part | images |\n|---|---|\n{rows}\n| **indexed** | **{len(inputs.index):,}** |",
        "",
        f"- Model: `{_model(inputs)}`, {manifest['dim']}-dimensional "
        f"L2-normalised embeddings, preprocessing `{manifest['preprocessing']}`, index type "
        f"`{manifest['index_type']}`.",
    ]
    for key, label in (
        ("combiner", "Combiner (CLIP4Cir)"),
        ("phi", "phi (zero-shot, SEARLE-style)"),
    ):
        if key in inputs.attachments:
            licence = inputs.licences.get(key)
            terms = f" Licence of its weights: {licence}." if licence else ""
            lines.append(
                f"- {label}: `{inputs.attachments[key]}`, checked to fit the model.{terms}"
            )
    skipped = len(source.skipped) + len(manifest.get("skipped", []))
    if skipped:
        lines.append(
            f"- Left out: {skipped:,} images (unreadable or missing; listed in `publish.json` "
            "and the manifest's `skipped`)."
        )
    files = ", ".join(f"`{p.name}`" for p in sorted(inputs.index.version_dir().iterdir()))
    lines.append(
        f"- Files: `CURRENT` names the live version; `versions/{inputs.index.version}/` holds "
        f"{files}; `thumbs/` the thumbnails."
    )
    return "\n".join(lines)


def _evaluation(evaluation: Evaluation) -> str:
    if not evaluation.tables:
        reasons = "; ".join(evaluation.notes) or "no labelled queries"
        return f"Not evaluated: {reasons}."
    parts = [
        "Measured by `python -m retrieval publish` with the project's own protocols on the "
        "published vectors.",
    ]
    for table in evaluation.tables:
        parts.append(f"### {table.heading}\n\n{table.protocol}\n\n{table.markdown}")
    if evaluation.notes:
        parts.append("Not evaluated: " + "; ".join(evaluation.notes) + ".")
    return "\n\n".join(parts)


def _use(inputs: CardInputs) -> str:
    entry = json.dumps(inputs.entry, indent=2, ensure_ascii=False)
    return (
        f"```bash\npython -m retrieval pull {inputs.repo}\n"
        f'python -m retrieval search "a query" --index hf-hub:{inputs.repo}\n```\n\n'
        f"In the app, add this entry to `collections.json`:\n\n```json\n{entry}\n```"
    )
