"""Where a backbone's forward passes run: PyTorch, or ONNX Runtime in fp32 or int8.

On a CPU, ONNX Runtime runs the same towers faster (BENCHMARKS.md, "Runtimes"). The towers are
exported once per set of weights: the export folder is named by a hash of the state dict, so
changed weights export again and unchanged ones never do. Export needs only torch; int8 is
onnxruntime's dynamic quantisation of the fp32 export. Each export records how closely it agrees
with PyTorch on a fixed probe set, which decides whether an index and queries from different
runtimes may meet. Heatmaps and zero-shot composed search stay on PyTorch: they need gradients or
the model's token embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from retrieval.errors import BadInput, ModelUnavailable

RUNTIMES = ("torch", "onnx", "onnx-int8")
EXPORT_FORMAT = 3  # part of the export folder's name: bump it to export every model again
# (3: the towers output features before normalisation, so raw features come from ONNX too)
OPSET = 18
# An index and queries from different runtimes may meet when their embeddings of the probe set
# agree to this cosine. Measured int8 agreements are 0.999+ (BENCHMARKS.md, "Runtimes"), where
# text -> image recall moves by less than a point; 0.99 leaves room for models that quantise worse.
MIN_AGREEMENT = 0.99
PROBE_TEXTS = (
    "a photo of an object",
    "a large red circle on the left",
    "a portrait of a woman in a blue dress",
    "two small green squares and a yellow triangle",
    "a marble statue in a museum",
    "a landscape with a river at sunset",
)
_export_lock = threading.Lock()


def check_runtime(runtime: str, setting: str = "runtime") -> str:
    if runtime not in RUNTIMES:
        raise BadInput(f"unknown {setting} {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: the name of the model's export folder."""
    digest = hashlib.sha1(f"format {EXPORT_FORMAT}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {data.dtype} {tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def probe_images(size: int) -> list[Image.Image]:
    """Drawn, not shipped: flat colours, edges, a gradient and noise, the range real photos span."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    images = [
        Image.fromarray(np.stack([np.tile(gradient, (size, 1))] * 3, -1).astype(np.uint8)),
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
    ]
    for background, colour in [((245, 245, 245), (220, 30, 30)), ((20, 40, 90), (230, 210, 40))]:
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill=colour)
        draw.rectangle(
            (size // 2, size // 2, size - size // 8, size - size // 6), fill=colour[::-1]
        )
        images.append(image)
    return images


class _Tower(torch.nn.Module):
    """One tower of the model as one exportable graph; it outputs the features before
    normalisation (`OnnxTowers` normalises them unless asked for the raw ones)."""

    def __init__(self, model: torch.nn.Module, tower: str):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        encode = self.model.encode_image if self.tower == "image" else self.model.encode_text
        return encode(inputs)


def _export_tower(tower: _Tower, example: torch.Tensor, path: Path, input_name: str) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=["features"],
            dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript path: 10x faster to export, no onnxscript needed
        )


def _quantize(source: Path, target: Path, reduce_range: bool) -> None:
    """Dynamic int8. `reduce_range` (7-bit weights) keeps CPUs without VNNI from saturating their
    8-bit multiply-add: on ViT-B-32's image tower it lifts the cosine to PyTorch from 0.984 to
    0.9995; the text tower is closer without it (0.9986 against 0.9964)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, reduce_range=reduce_range
    )


def _file_names(runtime: str) -> tuple[str, str]:
    suffix = ".int8" if runtime == "onnx-int8" else ""
    return f"image{suffix}.onnx", f"text{suffix}.onnx"


def export(model: torch.nn.Module, transform, tokenizer, image_size: int, folder: Path) -> dict:
    """Write both towers in fp32 and int8 into `folder`, with their agreement with PyTorch."""
    pixels = torch.stack([transform(image) for image in probe_images(image_size)])
    tokens = tokenizer(list(PROBE_TEXTS))
    image_file, text_file = _file_names("onnx")
    towers = _Tower(model, "image"), _Tower(model, "text")
    _export_tower(towers[0], pixels[:2], folder / image_file, "pixels")
    _export_tower(towers[1], tokens[:2], folder / text_file, "tokens")
    for fp32, int8, reduce_range in zip(
        _file_names("onnx"), _file_names("onnx-int8"), (True, False), strict=True
    ):
        _quantize(folder / fp32, folder / int8, reduce_range)
    with torch.inference_mode():
        reference = tuple(
            _normalised(tower(x)) for tower, x in zip(towers, (pixels, tokens), strict=True)
        )
    agreement = {
        runtime: OnnxTowers(folder, runtime, threads=1).agreement_with(reference, pixels, tokens)
        for runtime in ("onnx", "onnx-int8")
    }
    meta = {"format": EXPORT_FORMAT, "opset": OPSET, "torch": torch.__version__}
    meta["agreement"] = agreement
    (folder / "export.json").write_text(json.dumps(meta, indent=2))
    return meta


def exported_folder(model, transform, tokenizer, image_size: int, cache_dir: str | Path) -> Path:
    """The export folder of these weights under `cache_dir/onnx`, written on first use only."""
    folder = Path(cache_dir) / "onnx" / weights_digest(model)
    with _export_lock:
        if (folder / "export.json").is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
        staging.chmod(0o755)
        try:
            export(model, transform, tokenizer, image_size, staging)
            try:
                os.rename(staging, folder)  # atomic: a reader sees a whole export or none
            except OSError:  # another process finished the same export first
                if not (folder / "export.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_towers(
    model, transform, tokenizer, size: int, runtime: str, cache_dir, threads: int
) -> OnnxTowers:
    """The towers of these weights, exported first if needed. A damaged export (a truncated file,
    a deleted one) is a cache fault, not the user's: it is exported again, once."""
    folder = exported_folder(model, transform, tokenizer, size, cache_dir)
    try:
        return OnnxTowers(folder, runtime, threads)
    except Exception:  # onnxruntime's errors derive from Exception only
        shutil.rmtree(folder, ignore_errors=True)
    folder = exported_folder(model, transform, tokenizer, size, cache_dir)
    try:
        return OnnxTowers(folder, runtime, threads)
    except Exception as error:
        raise ModelUnavailable(
            f"the ONNX export in {folder} cannot be read even after exporting it again "
            f"({type(error).__name__}: {str(error)[:200]}); use runtime torch, or check that "
            f"{cache_dir} (SR_CACHE_DIR) is writable and has space"
        ) from error


class OnnxTowers:
    """The image and text towers as ONNX Runtime sessions; outputs are normalised embeddings, or
    the features before normalisation with `normalise=False`."""

    def __init__(self, folder: str | Path, runtime: str, threads: int | None = None):
        import onnxruntime

        self.folder, self.runtime = Path(folder), check_runtime(runtime)
        meta = self.folder / "export.json"  # absent only while `export` is measuring it
        # lowest cosine to PyTorch on the probe set, as measured when the towers were exported
        self.agreement = (
            float(json.loads(meta.read_text())["agreement"][runtime]) if meta.is_file() else None
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # no busy-waiting after a run: the next thing to run (BLAS search, decoding) needs the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        image_file, text_file = _file_names(runtime)
        self._image, self._text = (
            onnxruntime.InferenceSession(
                str(self.folder / name), options, providers=["CPUExecutionProvider"]
            )
            for name in (image_file, text_file)
        )

    def encode_image(self, pixels: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        inputs = {"pixels": pixels.detach().cpu().float().numpy()}
        features = torch.from_numpy(self._image.run(None, inputs)[0])
        return _normalised(features) if normalise else features

    def encode_text(self, tokens: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        inputs = {"tokens": tokens.detach().cpu().long().numpy()}
        features = torch.from_numpy(self._text.run(None, inputs)[0])
        return _normalised(features) if normalise else features

    def agreement_with(self, reference, pixels: torch.Tensor, tokens: torch.Tensor) -> float:
        images, texts = self.encode_image(pixels), self.encode_text(tokens)
        cosines = torch.cat([(images * reference[0]).sum(1), (texts * reference[1]).sum(1)])
        return round(float(cosines.min()), 6)


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def combined_agreement(first: float, second: float) -> float:
    """A lower bound on the cosine between two runtimes, from each one's cosine to PyTorch (the
    angles add at worst)."""
    angle = math.acos(min(1.0, first)) + math.acos(min(1.0, second))
    return math.cos(min(angle, math.pi))
