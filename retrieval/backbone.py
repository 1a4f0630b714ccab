"""Backbone loading and preprocessing: one open_clip model plus the transform an index uses.

A model spec is one string:
  "ViT-B-32/laion2b_s34b_b79k"  open_clip architecture / pretrained tag (downloads weights)
  "ViT-B-32"                     architecture with random weights (timing, tests)
  "hf-hub:org/repo"              open_clip model published on the Hugging Face Hub
  "/path/to/dir" or "local-dir:/path"  a folder with open_clip_config.json + *.safetensors

Models with a Hugging Face text tower or tokenizer (the multilingual ones) also need the packages in
requirements-multilingual.txt; they are imported only when such a model is built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from open_clip.hf_model import HFTextEncoder  # defined with or without transformers
from PIL import Image
from safetensors.torch import save_file

from retrieval.config import DEFAULTS, ImageLimits
from retrieval.errors import BadInput, ModelUnavailable
from retrieval.hub import HUB_PREFIX, fetch
from retrieval.images import ImageSource, open_image
from retrieval.runtime import OnnxTowers, check_runtime, load_towers

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
PREPROCESSING = ("standard", "targetpad", "squarepad")
TARGET_PAD_RATIO = 1.25
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
MULTILINGUAL_INSTALL = "pip install -r requirements-multilingual.txt"

open_clip.add_model_config(MODEL_CONFIG_DIR)


FINGERPRINT_PROBE = "a photo of an object"


def model_fingerprint(backbone: Backbone) -> list[float]:
    """A few numbers that differ between models: catches 'same dim, other weights'. Always from
    PyTorch, so it names the weights whatever runtime runs the queries."""
    features = backbone.on_torch().encode_texts([FINGERPRINT_PROBE])[0]
    return [round(float(v), 4) for v in features[:8]]


def fingerprint_matches(
    expected: list[float] | None, backbone: Backbone, atol: float = 5e-3
) -> bool:
    """True when no fingerprint was recorded, or the recorded one is this model's."""
    return not expected or bool(np.allclose(expected, model_fingerprint(backbone), atol=atol))


def relative_path(path: Path, base: Path) -> str:
    """`path` relative to `base` when they share a tree, so artifacts copied together find each other."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(base).resolve())
    except ValueError:  # another drive
        return str(Path(path).resolve())


def portable_spec(spec: str, base: Path) -> str:
    """What an artifact records as its model: a model folder relative to `base`, other specs as given."""
    path = Path(spec.removeprefix("local-dir:")).expanduser()
    return relative_path(path, base) if spec and path.is_dir() else spec  # "" is not "."


def resolved_spec(spec: str, base: Path) -> str:
    """The inverse of `portable_spec`: a model folder recorded relative to `base`, found again."""
    candidate = Path(base) / spec
    relative = bool(spec) and not Path(spec).is_absolute() and not spec.startswith(HUB_PREFIX)
    return str(candidate.resolve()) if relative and candidate.is_dir() else spec


def display_spec(spec: str) -> str:
    """A short name for people: a model folder shows as its folder name, not a server path."""
    path = Path(spec.removeprefix("local-dir:"))
    return path.name if path.is_dir() else spec


def pick_device(device: str | None = None) -> torch.device:
    """The named device; none (SR_DEVICE empty) picks CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PadToRatio:
    """Pad the short side with black until long/short <= ratio ("TargetPad"; ratio 1 = SquarePad).

    Keeps elongated images (dresses, scrolls) from losing their ends to the centre crop.
    """

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        long_side, short_side = max(width, height), min(width, height)
        if short_side == 0 or long_side / short_side <= self.ratio:
            return image
        target_short = int(round(long_side / self.ratio))
        new_size = (width, target_short) if width >= height else (target_short, height)
        canvas = Image.new("RGB", new_size, (0, 0, 0))
        canvas.paste(image, ((new_size[0] - width) // 2, (new_size[1] - height) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"PadToRatio({self.ratio})"


def build_transform(base_transform, preprocessing: str):
    """The backbone's own transform, optionally preceded by TargetPad or SquarePad."""
    if preprocessing not in PREPROCESSING:
        raise BadInput(f"unknown preprocessing {preprocessing!r}; choose one of {PREPROCESSING}")
    if preprocessing == "standard":
        return base_transform
    ratio = TARGET_PAD_RATIO if preprocessing == "targetpad" else 1.0
    pad = PadToRatio(ratio)
    return lambda image: base_transform(pad(image))


def _local_dir(spec: str) -> Path | None:
    path = Path(spec.removeprefix("local-dir:")).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if spec.startswith("local-dir:") or path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise BadInput(f"model folder {path} has no {CONFIG_FILE}")
        return path
    return None


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def hf_packages(model_cfg: dict | None) -> list[str]:
    """Packages outside requirements.txt that this config's Hugging Face text tower or tokenizer
    needs (none for a model without Hugging Face parts)."""
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    needed = []
    if "hf_model_name" in text_cfg:  # the test open_clip itself uses
        needed.append("transformers")
    if text_cfg.get("hf_tokenizer_name"):
        needed += ["transformers", "tokenizers"]
    return list(dict.fromkeys(needed))


def missing_packages(model_cfg: dict | None) -> list[str]:
    """The `hf_packages` not installed: known before open_clip fails halfway with an ImportError."""
    return [package for package in hf_packages(model_cfg) if not _installed(package)]


def _missing_message(spec: str, packages: list[str]) -> str:
    return (
        f"model {spec!r} needs the package(s) {', '.join(packages)} (its text tower or tokenizer "
        f"comes from Hugging Face transformers), not installed here; install them with "
        f"`{MULTILINGUAL_INSTALL}`"
    )


def require_packages(spec: str, model_cfg: dict | None) -> None:
    """Refuse a multilingual model up front, naming what to install, instead of a traceback."""
    missing = missing_packages(model_cfg)
    if missing:
        raise ModelUnavailable(_missing_message(spec, missing))


def _folder_config(folder: Path) -> dict:
    return json.loads((Path(folder) / CONFIG_FILE).read_text())["model_cfg"]


def _hub_config(spec: str) -> dict | None:
    """Only the config file of an hf-hub: model, not its weights; None when it cannot be had."""
    try:
        path = hf_hub_download(spec.removeprefix(HUB_PREFIX), CONFIG_FILE)
    except (OSError, ValueError, EntryNotFoundError):
        return None  # open_clip tries again and its failure is reported
    return json.loads(Path(path).read_text()).get("model_cfg")


def _spec_config(spec: str, local: Path | None) -> dict | None:
    """The config open_clip is about to build, read without loading anything heavy."""
    if local is not None:
        return _folder_config(local)
    if spec.startswith(HUB_PREFIX):
        return _hub_config(spec)
    return open_clip.get_model_config(spec.partition("/")[0])


def model_config(spec: str) -> dict:
    """The open_clip model config behind a spec, so a trained copy can be saved as a loadable folder."""
    local = _local_dir(spec)
    if local is None and spec.startswith(HUB_PREFIX):
        local = fetch(spec, "model")
    if local is not None:
        return _folder_config(local)
    config = open_clip.get_model_config(spec.partition("/")[0])
    if config is None:
        raise BadInput(
            f"no open_clip model config for {spec!r} (not a folder, hf-hub: repo or known architecture)"
        )
    return config


def _open_clip_name(spec: str, local: Path | None) -> tuple[str, str | None]:
    """The (model_name, pretrained) pair open_clip's factory takes for a spec."""
    if local is not None:
        return f"local-dir:{local}", None
    if spec.startswith(HUB_PREFIX):
        return spec, None
    name, _, pretrained = spec.partition("/")
    if name not in open_clip.list_models():
        raise BadInput(
            f"unknown model {spec!r}: not an open_clip architecture, folder or hf-hub id"
        )
    return name, pretrained or None


def _unavailable(spec: str, error: Exception, model_cfg: dict | None) -> ModelUnavailable:
    """One readable line instead of the download or transformers traceback."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first_line = first_line if len(first_line) <= 200 else first_line[:200] + "…"
    hf_note = (
        " (its Hugging Face text config and tokenizer too; a model folder keeps the tokenizer "
        "files beside the weights)"
        if hf_packages(model_cfg)
        else ""
    )
    return ModelUnavailable(
        f"model {spec!r} could not be loaded ({first_line}); with no network, download it once "
        f"where there is one{hf_note}, or give a local model folder"
    )


def needs_quick_gelu(name: str, pretrained: str | None) -> bool:
    """OpenAI's weights were trained with QuickGELU; open_clip builds `ViT-B-32` with plain GELU
    and only warns when they are loaded into it, which quietly changes every feature."""
    if not pretrained or name.startswith(HUB_PREFIX) or name.startswith("local-dir:"):
        return False
    tag = open_clip.get_pretrained_cfg(name, pretrained) or {}
    return bool(tag.get("quick_gelu")) and not name.endswith("-quickgelu")


def _create(spec: str, device: torch.device):
    local = _local_dir(spec)
    name, pretrained = _open_clip_name(spec, local)
    model_cfg = _spec_config(spec, local)
    require_packages(spec, model_cfg)
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            device=device,
            weights_only=True,
            force_quick_gelu=needs_quick_gelu(name, pretrained),
        )
        tokenizer = open_clip.get_tokenizer(name)
    except ImportError as error:  # a tokenizer's own extra (sentencepiece, protobuf)
        raise ModelUnavailable(_missing_message(spec, [error.name or str(error)])) from error
    # offline with no cache: weights (RuntimeError), HF text config or tokenizer (OSError, ValueError)
    except (OSError, RuntimeError, ValueError) as error:
        raise _unavailable(spec, error, model_cfg) from error
    return model.eval(), transform, tokenizer


def input_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


@dataclass
class Backbone:
    """A CLIP model ready to embed images and texts into one normalised space (the `encode_*`
    methods also give the features before normalisation, with `normalise=False`)."""

    spec: str
    model: torch.nn.Module
    base_transform: object
    tokenizer: object
    device: torch.device
    preprocessing: str = "standard"
    image_limits: ImageLimits = DEFAULTS.image_limits
    towers: OnnxTowers | None = None  # None: the forward passes run in PyTorch

    def __post_init__(self):
        self.transform = build_transform(self.base_transform, self.preprocessing)
        # explain holds it: one gradient pass at a time on the shared model
        self.lock = threading.Lock()

    @property
    def runtime(self) -> str:
        return self.towers.runtime if self.towers else "torch"

    @property
    def runtime_agreement(self) -> float:
        """Lowest cosine between this runtime's embeddings and PyTorch's on the probe set."""
        return self.towers.agreement if self.towers else 1.0

    def on_torch(self) -> Backbone:
        """The same model with its forward passes in PyTorch (gradients, fingerprints)."""
        return replace(self, towers=None) if self.towers else self

    @property
    def dim(self) -> int:
        return (
            int(self.model.text_projection.shape[1])
            if self._has_text_projection()
            else int(self.model.visual.output_dim)
        )

    def _has_text_projection(self) -> bool:
        projection = getattr(self.model, "text_projection", None)
        return isinstance(projection, torch.Tensor) and projection.ndim == 2

    @property
    def context_length(self) -> int:
        """The tokenizer's, which pads and cuts: an HF text tower's own limit is often larger."""
        length = getattr(self.tokenizer, "context_length", None)
        return int(length or getattr(self.model, "context_length", 77))

    @property
    def image_size(self) -> int:
        return input_size(self.model)

    def with_preprocessing(self, preprocessing: str) -> Backbone:
        return replace(self, preprocessing=preprocessing)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    @torch.inference_mode()
    def encode_image_tensors(self, pixels: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """(B, d) float32 image features: unit length, or with `normalise=False` the image
        encoder's output as it is (what models trained on raw CLIP features take)."""
        if self.towers:
            return self.towers.encode_image(pixels, normalise)
        with self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return _maybe_normalised(features.float(), normalise)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        cleaned = [text.strip() if isinstance(text, str) else "" for text in texts]
        if any(not text for text in cleaned):
            raise BadInput("the text query is empty")
        return self.tokenizer(cleaned)

    def _token_count(self, text: str) -> int | None:
        """Tokens with the start and end marks; None when the tokenizer cannot tell."""
        hf_tokenizer = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer
        if callable(hf_tokenizer):
            return len(hf_tokenizer(text)["input_ids"])
        encode = getattr(self.tokenizer, "encode", None)
        return None if encode is None else len(encode(text)) + 2

    def is_truncated(self, text: str) -> bool:
        """True when the text is longer than the model's context and will be cut."""
        count = self._token_count(text)
        return count is not None and count > self.context_length

    @torch.inference_mode()
    def encode_token_ids(self, tokens: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """(B, d) float32 text features, unit length unless `normalise=False` (the raw output)."""
        if self.towers:
            return self.towers.encode_text(tokens, normalise)
        with self._autocast():
            features = self.model.encode_text(tokens.to(self.device))
        return _maybe_normalised(features.float(), normalise)

    def encode_texts(self, texts: list[str], normalise: bool = True) -> np.ndarray:
        return self.encode_token_ids(self.tokenize(texts), normalise).cpu().numpy()

    def open(self, source: ImageSource):
        """Decode a query image under this backbone's limits (the server's settings)."""
        return open_image(source, self.image_limits)

    def preprocess(self, source: ImageSource) -> torch.Tensor:
        return self.transform(self.open(source))

    def encode_images(self, sources: list[ImageSource], normalise: bool = True) -> np.ndarray:
        pixels = torch.stack([self.preprocess(source) for source in sources])
        return self.encode_image_tensors(pixels, normalise).cpu().numpy()


def _maybe_normalised(features: torch.Tensor, normalise: bool) -> torch.Tensor:
    return torch.nn.functional.normalize(features, dim=-1) if normalise else features


@lru_cache(maxsize=8)
def _load_cached(spec: str, device: str):
    return _create(spec, torch.device(device))


def load_backbone(
    spec: str,
    preprocessing: str = "standard",
    device: str | None = None,
    image_limits: ImageLimits = DEFAULTS.image_limits,
    runtime: str = "torch",
    cache_dir: str | Path = DEFAULTS.cache_dir,
) -> Backbone:
    """Build once per (spec, device) and share: models are read-only at inference.

    An ONNX `runtime` exports the towers under `cache_dir` the first time these weights are seen.
    """
    resolved = str(pick_device(device))
    local = _local_dir(spec)
    key = str(local.resolve()) if local is not None else spec
    if check_runtime(runtime) != "torch" and resolved != "cpu":
        raise BadInput(f"runtime {runtime} runs on the CPU; use runtime torch on {resolved}")
    model, transform, tokenizer = _load_cached(key, resolved)
    towers = None
    if runtime != "torch":
        _check_onnx_text_tower(spec, model, runtime)
        towers = _towers(key, resolved, runtime, str(cache_dir), torch.get_num_threads())
    return Backbone(
        spec,
        model,
        transform,
        tokenizer,
        torch.device(resolved),
        preprocessing,
        image_limits,
        towers,
    )


def _check_onnx_text_tower(spec: str, model: torch.nn.Module, runtime: str) -> None:
    """Hugging Face text towers export to ONNX with their padding mask wrong (cosine to PyTorch
    0.89-0.96 on padded texts of a test XLM-RoBERTa): refuse rather than serve skewed vectors."""
    if isinstance(getattr(model, "text", None), HFTextEncoder):
        raise BadInput(
            f"runtime {runtime} cannot run {spec!r}: its Hugging Face text tower does not export "
            "to ONNX faithfully; use runtime torch for this model"
        )


@lru_cache(maxsize=8)
def _towers(key: str, device: str, runtime: str, cache_dir: str, threads: int) -> OnnxTowers:
    model, transform, tokenizer = _load_cached(key, device)
    size = input_size(model)
    return load_towers(model, transform, tokenizer, size, runtime, cache_dir, threads)


def new_model(arch: str, device: str | None = None):
    """A randomly initialised open_clip model of a registered architecture (training from scratch)."""
    require_packages(arch, open_clip.get_model_config(arch))
    model, _, transform = open_clip.create_model_and_transforms(arch, device=pick_device(device))
    return model, transform, open_clip.get_tokenizer(arch)


def save_backbone(
    model: torch.nn.Module, arch_or_cfg: str | dict, directory: str | Path, tokenizer=None
) -> Path:
    """Write the open_clip local-dir layout (config + safetensors) that `load_backbone` reads.

    A Hugging Face `tokenizer` is saved beside them: open_clip reads it from the folder, not from
    the config's hf_tokenizer_name.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = model_config(arch_or_cfg) if isinstance(arch_or_cfg, str) else arch_or_cfg
    visual = model.visual
    preprocess_cfg = {
        "size": model_cfg["vision_cfg"]["image_size"],
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)
    _load_cached.cache_clear()
    _towers.cache_clear()
    return directory
