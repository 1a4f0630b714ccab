"""What each hosted collection serves, read with the project's dataset readers: the images (with
the metadata the app shows), how many there are per split, the facts its dataset card states
(source, licence, citation) and the labelled data its evaluation runs on.

    cirr       the val and test1 images (the Shapes world's "test" in the same layout)
    fashioniq  the val images of dress, shirt and toptee
    noisyart   the test_200 images, with each artwork's title, artist and description
    folder     every image under the folder, with its metadata.csv / .jsonl
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval.collection import safe_id, scan_folder
from retrieval.data.art import CLASS_FOLDER, ArtDataset, read_noisyart, title_prompt
from retrieval.data.composed import (
    FASHIONIQ_CATEGORIES,
    ComposedSplit,
    read_cirr,
    read_fashioniq,
)
from retrieval.errors import BadInput

KINDS = ("cirr", "fashioniq", "noisyart", "folder")
EXAMPLES = 3


@dataclass(frozen=True)
class Facts:
    """What a dataset card says about where the data comes from and on what terms."""

    name: str
    homepage: str = ""
    license: str = "unknown"  # a Hugging Face licence id
    license_name: str = ""  # with license "other"
    license_link: str = ""
    terms: str = ""
    citation: str = ""  # BibTeX


FACTS = {
    "cirr": Facts(
        "CIRR",
        "https://github.com/Cuberick-Orion/CIRR",
        "other",
        "cirr-mit-annotations-nlvr2-images",
        "https://github.com/Cuberick-Orion/CIRR#license",
        "CIRR's annotations are released under the MIT licence. Its images come from NLVR2; "
        "CIRR's authors do not hold their copyright and do not license them, and using them "
        "(these thumbnails included) is bound by NLVR2's Terms of Service "
        "(https://lil.nlp.cornell.edu/nlvr/).",
        "@inproceedings{liu2021cirr,\n"
        "  title={Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models},\n"
        "  author={Liu, Zheyuan and Rodriguez-Opazo, Cristian and Teney, Damien and Gould, Stephen},\n"
        "  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  year={2021}\n}",
    ),
    "fashioniq": Facts(
        "Fashion IQ",
        "https://github.com/XiaoxiaoGuo/fashion-iq",
        "other",
        "cdla",
        "https://github.com/XiaoxiaoGuo/fashion-iq#license",
        "Fashion IQ's annotations are released under the Community Data License Agreement "
        "(CDLA). The product images were collected from Amazon.com; their copyright stays with "
        "their owners.",
        "@inproceedings{wu2021fashioniq,\n"
        "  title={Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language Feedback},\n"
        "  author={Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and Al-Halah, Ziad and Rennie, Steven "
        "and Grauman, Kristen and Feris, Rogerio},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern "
        "Recognition (CVPR)},\n"
        "  pages={11307--11317},\n  year={2021}\n}",
    ),
    "noisyart": Facts(
        "NoisyArt",
        "https://github.com/delchiaro/NoisyArt",
        "unknown",
        terms="NoisyArt's authors state no licence. Its images were gathered from Google Images, "
        "Flickr and DBpedia/Wikipedia, and its artwork metadata comes from DBpedia; each image's "
        "copyright stays with its owner. Ask the authors before any use beyond research.",
        citation="@inproceedings{delchiaro2019noisyart,\n"
        "  title={NoisyArt: A Dataset for Webly-supervised Artwork Recognition},\n"
        "  author={Del Chiaro, Riccardo and Bagdanov, Andrew D. and Del Bimbo, Alberto},\n"
        "  booktitle={Proceedings of the 14th International Joint Conference on Computer Vision, "
        "Imaging and Computer Graphics Theory and Applications (VISAPP)},\n"
        "  pages={467--475},\n  year={2019}\n}",
    ),
}


@dataclass
class SourceImage:
    file: str  # where it is staged for indexing (the index item's `file`)
    path: Path  # the dataset's own file
    meta: dict  # id, title, artist, ... as the app shows them


@dataclass
class Source:
    kind: str
    title: str
    facts: Facts
    images: list[SourceImage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # images per split or category
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why it is left out)
    composed: list[ComposedSplit] = field(default_factory=list)  # splits the card evaluates
    artworks: ArtDataset | None = None  # NoisyArt's labelled test split
    unevaluated: list[str] = field(default_factory=list)  # what is not measured, and why
    vocabulary: str | None = None
    examples: list[str] = field(default_factory=list)

    ids: set[str] = field(default_factory=set, repr=False)

    def add(self, item_id: str, path: Path, group: str, file: str = "", **meta) -> None:
        """One served image, staged as `file` (default: its id); a missing file or a repeated id
        is skipped with the reason."""
        if not path.is_file():
            self.skipped.append((item_id, f"file not found: {path}"))
        elif item_id in self.ids:
            self.skipped.append((str(path), f"its id {item_id!r} is already used"))
        else:
            self.ids.add(item_id)
            file = file or f"{item_id}{path.suffix.lower()}"
            self.images.append(SourceImage(file, path, meta | {"id": item_id}))
            self.counts[group] = self.counts.get(group, 0) + 1


def image_id(name: str) -> str:
    """The index id of a dataset image name: what evaluation looks vectors up by."""
    return safe_id(name)


def read_source(kind: str, root: str | Path) -> Source:
    readers = {"cirr": cirr_source, "fashioniq": fashioniq_source, "noisyart": noisyart_source}
    if kind == "folder":
        return folder_source(Path(root))
    if kind not in readers:
        raise BadInput(f"unknown collection kind {kind!r}; choose from {KINDS}")
    return readers[kind](Path(root))


def cirr_source(root: Path) -> Source:
    """ "test" finds CIRR's test1 and the Shapes world's labelled test alike."""
    source = Source("cirr", "CIRR (natural images, composed search)", FACTS["cirr"])
    for split in (read_cirr(root, "val"), read_cirr(root, "test")):
        for name, path in split.images.items():
            source.add(image_id(name), path, split.split, split=split.split)
        if split.labelled:
            source.composed.append(split)
        else:
            source.unevaluated.append(
                f"{split.split}: its ground truth is not public (CIRR's evaluation server holds "
                f"it; `python -m retrieval eval cirr --split {split.split} --out DIR` writes the "
                "submission files)"
            )
    return source


def fashioniq_source(root: Path) -> Source:
    source = Source("fashioniq", "FashionIQ (dresses, shirts, tops)", FACTS["fashioniq"])
    for category in FASHIONIQ_CATEGORIES:
        split = read_fashioniq(root, category, "val")
        for name, path in split.images.items():
            source.add(image_id(name), path, category, category=category, split="val")
        source.composed.append(split)
    return source


def noisyart_source(root: Path) -> Source:
    source = Source("noisyart", "NoisyArt (artworks)", FACTS["noisyart"], vocabulary="heritage")
    dataset = read_noisyart(root, "test_200")
    for path, label in zip(dataset.paths, dataset.labels, strict=True):
        artwork = dataset.classes[label]
        match = CLASS_FOLDER.match(path.parent.name)
        number = match.group(1) if match else path.parent.name
        meta = {
            "title": artwork.title,
            "artist": artwork.artist,
            "description": artwork.description,
        }
        if artwork.key.startswith("http"):
            meta["url"] = artwork.key
        meta = {key: value for key, value in meta.items() if value}
        source.add(image_id(f"{number}-{path.stem}"), path, "test_200", **meta)
    source.artworks = dataset
    present = dataset.present_classes()[:EXAMPLES]
    source.examples = [title_prompt(dataset.classes[label]) for label in present]
    return source


def folder_source(root: Path) -> Source:
    """A museum's own folder: its metadata is kept whole; nothing to evaluate against."""
    source = Source("folder", root.resolve().name, Facts(root.resolve().name))
    items, skipped = scan_folder(root)
    for item in items:
        meta = {key: value for key, value in item.meta.items() if key not in ("id", "file")}
        source.add(item.id, item.path, "images", file=item.meta["file"], **meta)
    source.skipped += skipped
    source.unevaluated.append(
        "a folder of images has no labelled queries to measure retrieval with"
    )
    return source
