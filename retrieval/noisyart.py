"""Artwork recognition and unimodal retrieval: the NoisyArt protocol, any "class folders" museum,
ImageNet ResNet-50 baseline and CLIP fine-tuning on class texts.

Datasets
  * NoisyArt (`read_noisyart`): ROOT/metadata.json (artworks with `uri`, `title`, `description`,
    `_authors` [{name}], ...), image folders ROOT/{trainval_3120,trainval_200,test_200}/ made of class
    folders `0001_http:^^dbpedia.org^resource^<Title>` (the artwork URI with '/' written '^', after a
    4-digit number and '_'), and ROOT/splits/trainval_3120/{train,val,trainval,boot}.txt.
    Split-file lines are image paths relative to trainval_3120/, `<class folder>/<file>` (e.g.
    `0001_http:^^dbpedia.org^resource^Mona_Lisa/google_000003.jpg`), one per line. Matching is
    tolerant: blank lines, CRLF, backslashes, a leading `./` or `trainval_3120/`, a trailing integer
    label and a different image extension (the r255 PNG release) are all accepted. Classes are
    matched by URI, never by folder number, so test and train folders may be numbered differently.
  * Class folders (`read_class_folders`): ROOT/[SPLIT/]<class>/<images>, plus an optional metadata
    CSV/JSONL (ROOT/classes.csv by default) with columns class (folder name; `folder` or `id` also
    accepted), title, description, artist. Any museum can lay its photos out this way.

Evaluation (`evaluate`): zero-shot classification from class prompts (title, description, both;
top-1/top-5), description-to-artwork mAP, artwork-to-artwork mAP (query excluded) and a linear probe
(multinomial logistic regression on frozen features) trained on a training split.
Fine-tuning (`finetune`): contrastive image/class-text CLIP fine-tuning on the shared loop in
`retrieval.training` (checkpoints, resume, progress, last-N-blocks).
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrieval.cli_common import add_device, add_preprocessing, add_seed
from retrieval.collection import read_metadata
from retrieval.errors import BadInput, NotFound
from retrieval.images import is_image_file, open_image

FOLDER_SPLITS = ("test_200", "trainval_200", "trainval_3120")
LIST_SPLITS = ("train", "val", "trainval", "boot", "train_wo_boot", "all")
LIST_SPLIT_DIR = Path("splits") / "trainval_3120"
CLASS_FOLDER = re.compile(r"^(\d+)_(.+)$")
CLASS_METADATA_NAMES = ("classes.csv", "classes.jsonl", "metadata.csv", "metadata.jsonl")
TEXT_KINDS = ("title", "description")
DEFAULT_TITLE_TEMPLATE = "{title}, by {artist}"
RESNET_PREFIX = "resnet50"


# --------------------------------------------------------------------------- datasets


@dataclass
class ArtClass:
    """One artwork (a class): the key that identifies it across splits and what is known about it."""

    key: str
    title: str
    description: str = ""
    artist: str = ""
    folder: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class ArtDataset:
    """The images of one split, labelled by index into `classes` (every known class, even imageless)."""

    name: str
    split: str
    classes: list[ArtClass]
    paths: list[Path]
    labels: list[int]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def present_classes(self) -> list[int]:
        """Indices of the classes that have at least one image in this split."""
        return sorted(set(self.labels))

    def subset(self, positions) -> ArtDataset:
        positions = list(positions)
        return ArtDataset(
            self.name,
            self.split,
            self.classes,
            [self.paths[i] for i in positions],
            [self.labels[i] for i in positions],
            list(self.notes),
        )

    def key_of(self, position: int) -> str:
        return self.classes[self.labels[position]].key


def folder_to_uri(folder: str) -> str:
    """NoisyArt class folder -> artwork URI: drop the 'NNNN_' number, '^' back to '/'."""
    match = CLASS_FOLDER.match(folder)
    return (match.group(2) if match else folder).replace("^", "/")


def uri_to_title(uri: str) -> str:
    """Fallback title from a DBpedia resource URI ('.../The_Starry_Night' -> 'The Starry Night')."""
    return unquote(uri.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ").strip() or uri


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _class_dirs(base: Path) -> list[Path]:
    if not base.is_dir():
        raise NotFound(f"image folder {base} not found")
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _authors(entry: dict) -> str:
    authors = entry.get("_authors") or entry.get("authors") or []
    if isinstance(authors, dict):
        authors = [authors]
    names = [
        str(a.get("name", "")).strip() if isinstance(a, dict) else str(a).strip() for a in authors
    ]
    return ", ".join(name for name in names if name)


def read_noisyart_metadata(path: str | Path) -> dict[str, dict]:
    """metadata.json -> {uri: entry}. Accepts a list of entries with `uri` or a dict keyed by uri."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"NoisyArt metadata {path} not found (expected ROOT/metadata.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path.name} is not valid JSON: {error}") from error
    if isinstance(data, dict):
        entries = [
            {**entry, "uri": entry.get("uri", uri)}
            for uri, entry in data.items()
            if isinstance(entry, dict)
        ]
    elif isinstance(data, list):
        entries = [entry for entry in data if isinstance(entry, dict) and entry.get("uri")]
    else:
        raise BadInput(f"{path.name} must hold a list of artworks or an object keyed by uri")
    return {str(entry["uri"]): entry for entry in entries}


def noisyart_class(uri: str, entry: dict | None, folder: str = "") -> ArtClass:
    entry = entry or {}
    title = str(entry.get("title") or "").strip() or uri_to_title(uri)
    description = str(entry.get("description") or entry.get("comment") or "").strip()
    return ArtClass(uri, title, description, _authors(entry), folder, entry)


def _noisyart_image_root(root: Path) -> Path:
    """The folder holding trainval_3120/ etc.: ROOT itself, or ROOT/imgs (an older layout)."""
    if any((root / name).is_dir() for name in FOLDER_SPLITS) or not (root / "imgs").is_dir():
        return root
    return root / "imgs"


def parse_split_line(line: str) -> tuple[str, str] | None:
    """'<class folder>/<file>' -> (class folder, file stem); None for blank or malformed lines."""
    text = line.strip().replace("\\", "/")
    parts = text.rsplit(None, 1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        text = parts[0]  # "path label" lists
    text = text.removeprefix("./").removeprefix("trainval_3120/")
    if "/" not in text:
        return None
    folder, name = text.rsplit("/", 1)
    folder = folder.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return (folder, stem) if folder and stem else None


def read_split_file(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"split file {path} not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [entry for entry in map(parse_split_line, lines) if entry is not None]


def _labelled(folders: list[Path], class_of_folder) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for folder in folders:
        files = _image_files(folder)
        paths += files
        labels += [class_of_folder(folder.name)] * len(files)
    return paths, labels


def read_noisyart(root: str | Path, split: str = "test_200") -> ArtDataset:
    """One NoisyArt split: a folder split (test_200, trainval_200, trainval_3120) or a list split
    (train, val, trainval, boot) from splits/trainval_3120/<split>.txt over trainval_3120/."""
    root = Path(root)
    if split not in FOLDER_SPLITS + LIST_SPLITS:
        raise BadInput(
            f"unknown NoisyArt split {split!r}; choose from {FOLDER_SPLITS + LIST_SPLITS}"
        )
    metadata = read_noisyart_metadata(root / "metadata.json")
    classes = [noisyart_class(uri, entry) for uri, entry in metadata.items()]
    index = {cls.key: position for position, cls in enumerate(classes)}

    def class_of_folder(folder: str) -> int:
        uri = folder_to_uri(folder)
        if uri not in index:
            index[uri] = len(classes)
            classes.append(noisyart_class(uri, None, folder))
        classes[index[uri]].folder = classes[index[uri]].folder or folder
        return index[uri]

    images = _noisyart_image_root(root)
    folder_split = split if split in FOLDER_SPLITS else "trainval_3120"
    paths, labels = _labelled(_class_dirs(images / folder_split), class_of_folder)
    dataset = ArtDataset("noisyart", split, classes, paths, labels)
    if split in LIST_SPLITS:
        dataset = _apply_split_list(
            dataset, root / LIST_SPLIT_DIR / f"{split}.txt", images / folder_split
        )
    if not dataset.paths:
        raise BadInput(f"NoisyArt split {split!r} under {root} has no images")
    return dataset


def _apply_split_list(dataset: ArtDataset, list_path: Path, base: Path) -> ArtDataset:
    """Keep the images a split file lists, matched on (class folder, file stem): extensions may differ."""
    wanted = read_split_file(list_path)
    position_of = {}
    for position, path in enumerate(dataset.paths):
        relative = path.relative_to(base)
        position_of.setdefault((relative.parts[0], path.stem), position)
    found = [position_of[entry] for entry in dict.fromkeys(wanted) if entry in position_of]
    subset = dataset.subset(found)
    missing = len(set(wanted)) - len(found)
    if missing:
        subset.notes.append(
            f"{missing} of {len(set(wanted))} files listed in {list_path.name} are not on disk"
        )
    return subset


def _class_rows(root: Path, metadata: str | Path | None) -> list[dict]:
    if metadata:
        return read_metadata(metadata)
    found = next((root / name for name in CLASS_METADATA_NAMES if (root / name).is_file()), None)
    return read_metadata(found) if found else []


def class_from_row(key: str, row: dict) -> ArtClass:
    title = str(row.get("title") or "").strip() or key.replace("_", " ")
    artist = str(row.get("artist") or row.get("author") or "").strip()
    return ArtClass(key, title, str(row.get("description") or "").strip(), artist, key, dict(row))


def read_class_folders(
    root: str | Path, split: str | None = None, metadata: str | Path | None = None
) -> ArtDataset:
    """ROOT/[SPLIT/]<class>/<images> with class texts from a CSV/JSONL keyed by folder name."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"collection folder {root} not found")
    rows = _class_rows(root, metadata)
    classes, index = [], {}
    for row in rows:
        key = str(row.get("class") or row.get("folder") or row.get("id") or "").strip()
        if key and key not in index:
            index[key] = len(classes)
            classes.append(class_from_row(key, row))

    def class_of_folder(folder: str) -> int:
        if folder not in index:
            index[folder] = len(classes)
            classes.append(class_from_row(folder, {}))
        return index[folder]

    base = root / split if split else root
    paths, labels = _labelled(_class_dirs(base), class_of_folder)
    if not paths:
        raise BadInput(f"no images in class folders under {base}")
    return ArtDataset("classfolders", split or ".", classes, paths, labels)


# --------------------------------------------------------------------------- class texts


def title_prompt(cls: ArtClass, template: str = DEFAULT_TITLE_TEMPLATE) -> str:
    """The class name as a prompt; the ', by {artist}' part is dropped when the artist is unknown."""
    if not cls.artist and "{artist}" in template:
        template = re.sub(r"[,;:\s]*(by\s+)?\{artist\}", "", template)
    return template.format(title=cls.title, artist=cls.artist).strip() or cls.title


def class_text(cls: ArtClass, kind: str, template: str = DEFAULT_TITLE_TEMPLATE) -> str:
    """`title` prompt or `description` (falling back to the title when there is none)."""
    if kind == "description" and cls.description:
        return cls.description
    return title_prompt(cls, template)


# --------------------------------------------------------------------------- feature models


class ClipFeatures:
    """A CLIP backbone as an image and text feature extractor."""

    has_text = True

    def __init__(self, backbone, name: str = ""):
        self.backbone, self.name = backbone, name or backbone.spec
        self.transform, self.device = backbone.transform, backbone.device

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image_tensors(pixels).float().cpu()

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        chunks = [
            self.backbone.encode_texts(texts[i : i + batch_size])
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.backbone.dim), np.float32)


class ResNetFeatures:
    """ImageNet ResNet-50 pooled features (2048-d, L2-normalised): the image-only NoisyArt baseline."""

    has_text = False

    def __init__(self, model: torch.nn.Module, transform, device: torch.device, name: str):
        self.model, self.transform, self.device, self.name = model, transform, device, name

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(pixels.to(self.device)).float(), dim=-1).cpu()


def _cached_resnet_weights() -> Path | None:
    from torchvision.models import ResNet50_Weights

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1):
        path = checkpoints / Path(weights.url).name
        if path.is_file():
            return path
    return None


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_resnet50(spec: str = RESNET_PREFIX, device: str | None = None) -> ResNetFeatures:
    """'resnet50' (ImageNet weights from the torch hub cache), 'resnet50:random', 'resnet50:FILE'.

    Never downloads: fetch the weights once where there is a network (see the message below).
    """
    from torchvision.models import ResNet50_Weights, resnet50

    from retrieval.backbone import pick_device

    source = spec.partition(":")[2]
    model = resnet50(weights=None)
    if source != "random":
        path = Path(source).expanduser() if source else _cached_resnet_weights()
        if path is None or not path.is_file():
            raise NotFound(
                f"ResNet-50 ImageNet weights not found ({path or Path(torch.hub.get_dir()) / 'checkpoints'}). "
                'On a machine with a network run: python -c "import torchvision; '
                "torchvision.models.resnet50(weights='IMAGENET1K_V2')\" (fills the torch hub cache), "
                "or pass --model resnet50:/path/to/resnet50.pth"
            )
        model.load_state_dict(_read_state_dict(path))
    model.fc = torch.nn.Identity()
    target = pick_device(device)
    return ResNetFeatures(
        model.eval().to(target), ResNet50_Weights.IMAGENET1K_V2.transforms(), target, spec
    )


def load_feature_model(spec: str, device: str | None = None, preprocessing: str = "standard"):
    """A CLIP spec (see retrieval.backbone) or 'resnet50[:random|:FILE]'."""
    if spec == RESNET_PREFIX or spec.startswith(RESNET_PREFIX + ":"):
        return load_resnet50(spec, device)
    from retrieval.backbone import load_backbone

    return ClipFeatures(load_backbone(spec, preprocessing=preprocessing, device=device), spec)


class _ImageFiles(torch.utils.data.Dataset):
    """Decoded, transformed images; unreadable files come back as None and are reported, not fatal."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(open_image(self.paths[index]))
        except BadInput:
            return index, None


def _collate_images(batch):
    good = [(index, pixels) for index, pixels in batch if pixels is not None]
    if not good:
        return [], None
    return [index for index, _ in good], torch.stack([pixels for _, pixels in good])


def encode_image_files(
    model, paths: list[Path], batch_size: int = 64, workers: int = 0, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every readable image, and a mask of which files could be read."""
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, model.transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate_images,
    )
    features, readable = None, np.zeros(len(paths), dtype=bool)
    for indices, pixels in tqdm(
        loader,
        desc=f"embed {len(paths)} images",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    ):
        if pixels is None:
            continue
        encoded = model.encode_pixels(pixels).numpy()
        if features is None:
            features = np.zeros((len(paths), encoded.shape[1]), dtype=np.float32)
        features[indices] = encoded
        readable[indices] = True
    if features is None:
        raise BadInput("none of the images could be read")
    return features, readable


def encode_dataset(
    model, dataset: ArtDataset, batch_size: int = 64, workers: int = 0, progress: bool = True
) -> tuple[ArtDataset, np.ndarray]:
    """(the dataset without unreadable images, their features)."""
    features, readable = encode_image_files(model, dataset.paths, batch_size, workers, progress)
    if readable.all():
        return dataset, features
    kept = dataset.subset(np.flatnonzero(readable))
    kept.notes.append(f"{int((~readable).sum())} unreadable images skipped in {dataset.split}")
    return kept, features[readable]


# --------------------------------------------------------------------------- metrics


def average_precisions(
    scores: np.ndarray, relevant: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """AP of each query row over the gallery columns (ties broken by gallery order).

    `exclude` (bool, same shape) removes items from the ranking (e.g. the query image itself).
    Queries without any relevant item get NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    relevant = np.asarray(relevant, dtype=bool).copy()
    if exclude is not None:
        scores[exclude] = -np.inf
        relevant &= ~np.asarray(exclude, dtype=bool)
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    cumulative = np.cumsum(hits, axis=1)
    ranks = np.arange(1, scores.shape[1] + 1)
    precision_sum = (hits * cumulative / ranks).sum(axis=1)
    totals = hits.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, precision_sum / np.maximum(totals, 1), np.nan)


def mean_average_precision(
    query_features: np.ndarray,
    query_labels,
    gallery_features: np.ndarray,
    gallery_labels,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> float:
    """mAP of cosine-similarity rankings; relevant = same label. `exclude_self`: query i is gallery i."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    values = []
    for start in range(0, len(query_features), chunk):
        stop = min(start + chunk, len(query_features))
        scores = query_features[start:stop] @ gallery_features.T
        relevant = query_labels[start:stop, None] == gallery_labels[None, :]
        exclude = None
        if exclude_self:
            exclude = np.zeros_like(relevant)
            exclude[np.arange(stop - start), np.arange(start, stop)] = True
        values.append(average_precisions(scores, relevant, exclude))
    aps = np.concatenate(values) if values else np.array([])
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if len(aps) else float("nan")


def topk_accuracy(scores: np.ndarray, targets, ks=(1, 5)) -> dict[int, float]:
    """Share of rows whose target column ranks within the top k (ties count in the target's favour).

    A target of -1 (a class the scorer cannot predict) is always wrong.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    valid = targets >= 0
    target_scores = np.where(valid, scores[np.arange(len(scores)), np.maximum(targets, 0)], np.inf)
    ranks = (scores > target_scores[:, None]).sum(axis=1)
    return {k: float(((ranks < k) & valid).mean()) if len(scores) else float("nan") for k in ks}


# --------------------------------------------------------------------------- linear probe


def train_linear_probe(
    features: np.ndarray,
    labels,
    l2: float = 1e-3,
    iterations: int = 200,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS (deterministic).

    Returns the layer and the standardisation (mean, std) to apply to test features.
    """
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], int(y.max()) + 1).to(device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + l2 * layer.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return layer.cpu(), mean.cpu().numpy(), std.cpu().numpy()


def linear_probe_accuracy(
    train_features,
    train_keys: list[str],
    test_features,
    test_keys: list[str],
    l2: float = 1e-3,
    ks=(1, 5),
) -> dict[int, float]:
    """Top-k accuracy of a probe trained on (train features, class keys); unseen test classes count wrong."""
    classes = sorted(set(train_keys))
    column = {key: position for position, key in enumerate(classes)}
    layer, mean, std = train_linear_probe(
        train_features, [column[key] for key in train_keys], l2=l2
    )
    with torch.no_grad():
        scores = layer(torch.as_tensor((test_features - mean) / std, dtype=torch.float32)).numpy()
    return topk_accuracy(scores, [column.get(key, -1) for key in test_keys], ks)


# --------------------------------------------------------------------------- evaluation

METRIC_LABELS = {
    "zs_title_top1": "ZS top-1 (title)",
    "zs_title_top5": "ZS top-5 (title)",
    "zs_description_top1": "ZS top-1 (descr.)",
    "zs_description_top5": "ZS top-5 (descr.)",
    "zs_both_top1": "ZS top-1 (both)",
    "zs_both_top5": "ZS top-5 (both)",
    "map_description": "descr.->artwork mAP",
    "map_image": "artwork->artwork mAP",
    "probe_top1": "probe top-1",
    "probe_top5": "probe top-5",
}


@dataclass
class EvalOptions:
    # zero-shot candidates: the split's classes ("split") or every known class ("all")
    candidates: str = "split"
    title_template: str = DEFAULT_TITLE_TEMPLATE
    probe_l2: float = 1e-3
    batch_size: int = 64
    workers: int = 0
    progress: bool = True


def class_text_features(model, classes: list[ArtClass], template: str) -> dict[str, np.ndarray]:
    """Normalised text features per class for 'title', 'description' and their mean ('both')."""
    titles = model.encode_texts([class_text(cls, "title", template) for cls in classes])
    descriptions = model.encode_texts([class_text(cls, "description", template) for cls in classes])
    both = titles + descriptions
    both /= np.linalg.norm(both, axis=1, keepdims=True).clip(1e-12)
    return {"title": titles, "description": descriptions, "both": both}


def zero_shot_metrics(
    image_features: np.ndarray, labels, texts: dict[str, np.ndarray], candidates: list[int]
) -> dict[str, float]:
    column = {cls: position for position, cls in enumerate(candidates)}
    targets = [column.get(label, -1) for label in labels]
    metrics = {}
    for kind, features in texts.items():
        accuracy = topk_accuracy(image_features @ features[candidates].T, targets, (1, 5))
        metrics[f"zs_{kind}_top1"], metrics[f"zs_{kind}_top5"] = accuracy[1], accuracy[5]
    return metrics


def evaluate(
    model, test: ArtDataset, train: ArtDataset | None = None, options: EvalOptions | None = None
) -> dict:
    """Every task the model supports on `test` (probe only with `train`). Returns metrics and counts."""
    options = options or EvalOptions()
    started = time.perf_counter()
    test, features = encode_dataset(
        model, test, options.batch_size, options.workers, options.progress
    )
    labels = np.asarray(test.labels)
    present = test.present_classes()
    metrics: dict[str, float] = {
        "map_image": mean_average_precision(features, labels, features, labels, exclude_self=True)
    }
    if model.has_text:
        candidates = list(range(len(test.classes))) if options.candidates == "all" else present
        texts = class_text_features(model, test.classes, options.title_template)
        metrics.update(zero_shot_metrics(features, labels, texts, candidates))
        metrics["map_description"] = mean_average_precision(
            texts["description"][present], np.asarray(present), features, labels
        )
    notes = list(test.notes)
    counts = {"images": len(test), "classes": len(present)}
    if train is not None:
        train, train_features = encode_dataset(
            model, train, options.batch_size, options.workers, options.progress
        )
        accuracy = linear_probe_accuracy(
            train_features,
            [train.key_of(i) for i in range(len(train))],
            features,
            [test.key_of(i) for i in range(len(test))],
            l2=options.probe_l2,
        )
        metrics["probe_top1"], metrics["probe_top5"] = accuracy[1], accuracy[5]
        counts.update(train_images=len(train), train_classes=len(train.present_classes()))
        notes += train.notes
    ordered = {key: metrics[key] for key in METRIC_LABELS if key in metrics}
    return {
        "model": model.name,
        "metrics": ordered,
        "counts": counts,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def markdown_results(runs: list[dict]) -> str:
    """One row per model, one column per metric any run reports ('-' where a model cannot)."""
    keys = [key for key in METRIC_LABELS if any(key in run["metrics"] for run in runs)]
    lines = [
        "| model | " + " | ".join(METRIC_LABELS[key] for key in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for run in runs:
        cells = [
            f"{100 * run['metrics'][key]:.2f}" if key in run["metrics"] else "-" for key in keys
        ]
        lines.append(f"| {run['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAll numbers in percent."


def write_results(report: dict, out: str | Path) -> tuple[Path, Path]:
    """`out` (.json) plus the Markdown table next to it (.md)."""
    out = Path(out)
    if out.suffix != ".json":
        out = out / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    markdown = out.with_suffix(".md")
    markdown.write_text(
        f"# {report['benchmark']} ({report['split']})\n\n{markdown_results(report['runs'])}\n"
    )
    return out, markdown


# --------------------------------------------------------------------------- fine-tuning


class DistinctClassBatches(torch.utils.data.Sampler):
    """Shuffled batches in which no class appears twice, so in-batch negatives are true negatives.

    Uses torch's global generator, which the training loop reseeds every epoch (reproducible resume).
    """

    def __init__(self, labels, batch_size: int):
        self.labels = list(labels)
        self.batch_size = min(batch_size, len(set(self.labels)))
        if self.batch_size < 2:
            raise BadInput("contrastive fine-tuning needs images of at least two classes")

    def __len__(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def __iter__(self):
        open_batches: list[tuple[list[int], set]] = []
        emitted = 0
        for index in torch.randperm(len(self.labels)).tolist():
            label = self.labels[index]
            target = next((batch for batch in open_batches if label not in batch[1]), None)
            if target is None:
                target = ([], set())
                open_batches.append(target)
            target[0].append(index)
            target[1].add(label)
            if len(target[0]) == self.batch_size:
                open_batches.remove(target)
                yield target[0]
                emitted += 1
                if emitted == len(self):
                    return


class ImageTextPairs(torch.utils.data.Dataset):
    """(pixels, token ids) of an image and one of its class texts, picked at random each time."""

    def __init__(self, dataset: ArtDataset, class_tokens: dict[int, torch.Tensor], transform):
        self.dataset, self.class_tokens, self.transform = dataset, class_tokens, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        tokens = self.class_tokens[self.dataset.labels[index]]
        choice = int(torch.randint(len(tokens), (1,)))
        try:
            return self.transform(open_image(self.dataset.paths[index])), tokens[choice]
        except BadInput:
            return None


def _collate_pairs(batch):
    batch = [sample for sample in batch if sample is not None]
    if len(batch) < 2:
        raise BadInput("a training batch had fewer than two readable images")
    return torch.stack([pixels for pixels, _ in batch]), torch.stack(
        [tokens for _, tokens in batch]
    )


def class_tokens(
    backbone, dataset: ArtDataset, kinds=TEXT_KINDS, template: str = DEFAULT_TITLE_TEMPLATE
) -> dict[int, torch.Tensor]:
    """Token ids of each present class's distinct texts (title prompt and/or description)."""
    unknown = set(kinds) - set(TEXT_KINDS)
    if unknown or not kinds:
        raise BadInput(f"texts must be among {TEXT_KINDS}, not {sorted(unknown) or 'nothing'}")
    tokens = {}
    for label in dataset.present_classes():
        texts = list(
            dict.fromkeys(class_text(dataset.classes[label], kind, template) for kind in kinds)
        )
        tokens[label] = backbone.tokenize(texts)
    return tokens


def pairs_loader(
    backbone,
    dataset: ArtDataset,
    batch_size: int,
    kinds=TEXT_KINDS,
    template: str = DEFAULT_TITLE_TEMPLATE,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    pairs = ImageTextPairs(
        dataset, class_tokens(backbone, dataset, kinds, template), backbone.transform
    )
    return torch.utils.data.DataLoader(
        pairs,
        batch_sampler=DistinctClassBatches(dataset.labels, batch_size),
        num_workers=workers,
        collate_fn=_collate_pairs,
        pin_memory=torch.cuda.is_available(),
    )


def retrieval_validator(
    backbone,
    val: ArtDataset,
    template: str = DEFAULT_TITLE_TEMPLATE,
    batch_size: int = 64,
    workers: int = 0,
):
    """A `validate(model)` callback: artwork->artwork and description->artwork mAP on `val`."""
    from retrieval.backbone import Backbone

    def validate(model) -> dict[str, float]:
        view = Backbone(
            backbone.spec,
            model,
            backbone.base_transform,
            backbone.tokenizer,
            next(model.parameters()).device,
            backbone.preprocessing,
        )
        run = evaluate(
            ClipFeatures(view),
            val,
            None,
            EvalOptions(
                title_template=template, batch_size=batch_size, workers=workers, progress=False
            ),
        )
        metrics = {
            "map_image": run["metrics"]["map_image"],
            "map_description": run["metrics"]["map_description"],
        }
        return {**metrics, "map_mean": (metrics["map_image"] + metrics["map_description"]) / 2}

    return validate


def model_config(spec: str) -> dict:
    """The open_clip model config of a spec, so the fine-tuned weights can be saved as a local-dir model."""
    import open_clip

    from retrieval.backbone import CONFIG_FILE, _local_dir

    local = _local_dir(spec)
    if local is not None:
        return json.loads((local / CONFIG_FILE).read_text())["model_cfg"]
    if spec.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(spec.removeprefix("hf-hub:"), CONFIG_FILE)
        return json.loads(Path(path).read_text())["model_cfg"]
    config = open_clip.get_model_config(spec.partition("/")[0])
    if config is None:
        raise BadInput(f"no open_clip config for {spec!r}")
    return config


def finetune(
    backbone,
    train: ArtDataset,
    cfg,
    val: ArtDataset | None = None,
    kinds=TEXT_KINDS,
    template: str = DEFAULT_TITLE_TEMPLATE,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Contrastive image/class-text fine-tuning of a copy of the backbone's CLIP; saves cfg.out_dir/model.

    `cfg` is a `retrieval.training.TrainConfig` (steps, lr, last_blocks, towers, resume, ...).
    The best checkpoint (by validation `map_mean` when `val` is given, else the last) is written in
    the open_clip local-dir layout at OUT/model, loadable with `--model OUT/model`.
    """
    from retrieval.backbone import save_backbone
    from retrieval.training import load_checkpoint, train_clip

    if not cfg.out_dir:
        raise BadInput("fine-tuning needs an output folder")
    model = copy.deepcopy(
        backbone.model
    )  # the loaded backbone is cached and shared: never train it
    loader = pairs_loader(backbone, train, cfg.batch_size, kinds, template, workers)
    validate = (
        retrieval_validator(backbone, val, template, workers=workers) if val is not None else None
    )
    if validate is not None and not cfg.select_metric:
        cfg.select_metric = "map_mean"
    result = train_clip(model, loader, cfg, validate=validate, progress=progress)
    out = Path(cfg.out_dir)
    load_checkpoint(out / "best", model)
    model_dir = save_backbone(model.cpu(), model_config(backbone.spec), out / "model")
    summary = {
        "model_dir": str(model_dir),
        "base_model": backbone.spec,
        "train_images": len(train),
        "train_classes": len(train.present_classes()),
        "texts": list(kinds),
        **asdict(result),
    }
    (out / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# --------------------------------------------------------------------------- command line


def _load_dataset(args, split: str | None) -> ArtDataset | None:
    if split in (None, "", "none"):
        return None
    if args.benchmark == "noisyart":
        return read_noisyart(args.root, split)
    return read_class_folders(args.root, None if split == "." else split, args.metadata)


def _default_split(args, name: str, wanted: str | None) -> str | None:
    """classfolders: use ROOT/<name> when it exists, else the whole ROOT (eval) or nothing (train)."""
    if wanted is not None:
        return wanted
    if (Path(args.root) / name).is_dir():
        return name
    return "." if name == "test" else None


def run_eval(args) -> dict:
    if args.benchmark == "noisyart":
        split, train_split = args.split or "test_200", args.train_split or "trainval_200"
    else:
        split = _default_split(args, "test", args.split)
        train_split = _default_split(args, "train", args.train_split)
    test = _load_dataset(args, split)
    train = _load_dataset(args, train_split)
    options = EvalOptions(
        args.candidates, args.title_template, args.probe_l2, args.batch_size, args.workers
    )
    runs = []
    for spec in args.model:
        model = load_feature_model(spec, args.device, args.preprocessing)
        runs.append(evaluate(model, test, train, options))
        print(
            f"{spec}: "
            + " ".join(f"{key} {100 * value:.2f}" for key, value in runs[-1]["metrics"].items())
        )
    report = {
        "benchmark": args.benchmark,
        "root": str(args.root),
        "split": split,
        "train_split": train_split,
        "candidates": args.candidates,
        "runs": runs,
    }
    print(markdown_results(runs))
    for note in {note for run in runs for note in run["notes"]}:
        print(f"note: {note}")
    if args.out:
        paths = write_results(report, args.out)
        print("wrote " + " and ".join(map(str, paths)))
    return report


def run_finetune(args) -> dict:
    from retrieval.backbone import load_backbone
    from retrieval.training import TrainConfig

    if args.benchmark == "noisyart":
        train_split, val_split = args.train_split or "train", args.val_split or "val"
    else:
        train_split = _default_split(args, "train", args.train_split) or "."
        val_split = _default_split(args, "val", args.val_split)
    train = _load_dataset(args, train_split)
    val = _load_dataset(args, val_split)
    if val is not None and args.val_max_images and len(val) > args.val_max_images:
        keep = np.random.default_rng(args.seed).choice(len(val), args.val_max_images, replace=False)
        val = val.subset(sorted(keep.tolist()))
    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=args.device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        device=str(backbone.device),
        towers=args.towers,
        last_blocks=args.last_blocks,
        validate_every=args.validate_every,
        out_dir=str(args.out),
        resume=args.resume or "",
        extra={
            "benchmark": args.benchmark,
            "root": str(args.root),
            "model": args.model,
            "train_split": train_split,
            "val_split": val_split,
        },
    )
    kinds = tuple(kind.strip() for kind in args.texts.split(",") if kind.strip())
    summary = finetune(backbone, train, cfg, val, kinds, args.title_template, args.workers)
    print(
        f"fine-tuned model: {summary['model_dir']} (best step {summary['best_step']}, "
        f"{summary['best_metrics'] or 'no validation'})"
    )
    print(
        f"compare: python -m retrieval eval {args.benchmark} --root {args.root} "
        f"--model {args.model} --model {summary['model_dir']}"
    )
    return summary


def _common_arguments(parser, benchmark: str) -> None:
    parser.set_defaults(benchmark=benchmark)
    if benchmark == "noisyart":
        parser.add_argument(
            "--root",
            required=True,
            help="NoisyArt folder (metadata.json, splits/, trainval_3120/...)",
        )
    else:
        parser.add_argument(
            "--root", required=True, help="folder of class folders, or of SPLIT/class folders"
        )
        parser.add_argument(
            "--metadata",
            help="class CSV/JSONL: class,title,description,artist "
            "(default ROOT/classes.csv or ROOT/metadata.csv)",
        )
    parser.add_argument(
        "--title-template",
        default=DEFAULT_TITLE_TEMPLATE,
        help="class name prompt; fields {title} and {artist} (default %(default)r; "
        "the artist part is dropped when unknown)",
    )
    add_preprocessing(parser)
    add_device(parser)
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes")


def _add_eval_parser(benchmarks, benchmark: str, description: str) -> None:
    noisyart = benchmark == "noisyart"
    parser = benchmarks.add_parser(benchmark, help=description, description=description)
    _common_arguments(parser, benchmark)
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="CLIP spec or folder, or resnet50[:random|:FILE] (image-only); repeat to compare",
    )
    parser.add_argument(
        "--split",
        help="evaluated split (default "
        + (
            "test_200; also trainval_200, val, ...)"
            if noisyart
            else "ROOT/test if present, else ROOT)"
        ),
    )
    parser.add_argument(
        "--train-split",
        help="split the linear probe trains on, or 'none' (default "
        + ("trainval_200)" if noisyart else "ROOT/train if present)"),
    )
    parser.add_argument(
        "--candidates",
        default="split",
        choices=["split", "all"],
        help="zero-shot over the split's classes (default) or every class in the metadata",
    )
    parser.add_argument("--probe-l2", type=float, default=1e-3, help="linear probe L2 penalty")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--out", help="results .json (a .md table is written next to it) or a folder"
    )
    parser.set_defaults(func=run_eval)


def _add_finetune_parser(benchmarks, benchmark: str, description: str) -> None:
    noisyart = benchmark == "noisyart"
    parser = benchmarks.add_parser(benchmark, help=description, description=description)
    _common_arguments(parser, benchmark)
    parser.add_argument("--model", required=True, help="CLIP model spec or folder to start from")
    parser.add_argument(
        "--out", required=True, help="run folder: best/, last/ checkpoints, model/, finetune.json"
    )
    parser.add_argument(
        "--train-split", help="default " + ("train" if noisyart else "ROOT/train, else ROOT")
    )
    parser.add_argument(
        "--val-split",
        help="validation split or 'none' (default "
        + ("val)" if noisyart else "ROOT/val if present)"),
    )
    parser.add_argument(
        "--val-max-images", type=int, default=2000, help="random subset of the validation split"
    )
    parser.add_argument(
        "--texts",
        default="title,description",
        help="class texts paired with images, picked at random per sample (default %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128, help="classes per batch (distinct)")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps")
    parser.add_argument(
        "--towers", default="both", choices=["both", "image", "text"], help="which encoders learn"
    )
    parser.add_argument(
        "--last-blocks", type=int, default=0, help="train only the last N blocks of each tower"
    )
    parser.add_argument(
        "--validate-every", type=int, default=0, help="steps between validations (0: at the end)"
    )
    parser.add_argument("--resume", help="checkpoint folder to continue from (OUT/last)")
    add_seed(parser)
    parser.set_defaults(func=run_finetune)


def add_eval_commands(benchmarks) -> None:
    """`eval noisyart` and `eval classfolders` under the shared `eval` command."""
    _add_eval_parser(
        benchmarks, "noisyart", "NoisyArt: zero-shot, description/artwork mAP, linear probe"
    )
    _add_eval_parser(benchmarks, "classfolders", "any class-folder collection: the NoisyArt tasks")


def add_finetune_commands(benchmarks) -> None:
    _add_finetune_parser(
        benchmarks, "noisyart", "contrastive CLIP fine-tuning on NoisyArt class texts"
    )
    _add_finetune_parser(
        benchmarks, "classfolders", "contrastive CLIP fine-tuning on a class-folder collection"
    )
