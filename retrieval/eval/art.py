"""Artwork recognition and unimodal retrieval (the NoisyArt protocol) on any `ArtDataset`.

Zero-shot classification from class prompts (title, description, both; top-1/top-5),
description-to-artwork mAP, artwork-to-artwork mAP (query excluded) and a linear probe on frozen
features; the image-only baseline is an ImageNet ResNet-50 read from the local torch cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.models import ResNet50_Weights, resnet50
from tqdm.auto import tqdm

from retrieval.backbone import load_backbone, pick_device
from retrieval.data.art import DEFAULT_TITLE_TEMPLATE, ArtClass, ArtDataset, class_text
from retrieval.embed import worker_init
from retrieval.errors import BadInput, NotFound
from retrieval.eval.metrics import mean_average_precision, topk_accuracy
from retrieval.eval.report import markdown_table
from retrieval.images import open_image

RESNET_PREFIX = "resnet50"


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
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1):
        path = checkpoints / Path(weights.url).name
        if path.is_file():
            return path
    return None


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_resnet50(spec: str = RESNET_PREFIX, device: str | None = None) -> ResNetFeatures:
    """'resnet50' (ImageNet weights from the torch hub cache), 'resnet50:random', 'resnet50:FILE'.

    Never downloads: fetch the weights once where there is a network (see the message below).
    """

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
        worker_init_fn=worker_init,
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
    rows = [
        [run["model"], *(100 * run["metrics"][k] if k in run["metrics"] else "-" for k in keys)]
        for run in runs
    ]
    table = markdown_table(["model", *(METRIC_LABELS[k] for k in keys)], rows, digits=2)
    return table + "\n\nAll numbers in percent."


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
