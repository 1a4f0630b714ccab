"""Relevance heatmaps: which parts of an image make it match a query.

The target is the cosine similarity between the image and the query feature (text, image or a
precomputed vector such as a composed query), so the map explains the score the search shows.

- ViT backbones: gradient-weighted attention relevance (Chefer et al., ICCV 2021). The attention
  probabilities come from hooks on each block's `nn.MultiheadAttention` (asked for per-head
  weights); their gradients follow from the attention output's gradient and the value vectors
  (out_h = A_h V_h, so dS/dA_h = (dS/dout_h) V_h^T), computed with the module's own weights.
- ResNet backbones (open_clip ModifiedResNet): Grad-CAM on `layer4`.
- Any ViT: gradient x activation of the last block's `ln_1` tokens on the patch grid
  (`method="gradcam"`; per-token weights, see `vit_grad_cam`).

Hooks live only for one call, act only in the thread that registered them, and run under the
backbone's lock, so a server can explain while other threads search.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from PIL import Image

from retrieval.backbone import TARGET_PAD_RATIO, Backbone
from retrieval.errors import BadInput
from retrieval.images import ImageSource

METHODS = ("auto", "attention", "gradcam")
RAW_MAX_SIDE = 256  # the raw map is small enough for JSON, large enough to look smooth
IMAGE_MAX_SIDE = 1024  # overlays are rendered at most this large


@dataclass
class Heatmap:
    """A relevance map over one image, at the image's own aspect ratio."""

    raw: np.ndarray  # (height, width) float32 in [0, 1]; 0 outside what the model saw
    image: Image.Image  # the explained image (downsized to IMAGE_MAX_SIDE at most)
    original_size: tuple[int, int]  # (width, height) of the image as given
    score: float  # cosine similarity of image and query: what the map explains
    method: str  # "attention" or "gradcam"
    grid: np.ndarray  # the map at the model's resolution (patch grid or last conv map)

    def peak(self) -> tuple[float, float]:
        """(x, y) of the most relevant point in original-image pixels."""
        row, col = np.unravel_index(int(np.argmax(self.raw)), self.raw.shape)
        height, width = self.raw.shape
        return (
            (col + 0.5) / width * self.original_size[0],
            (row + 0.5) / height * self.original_size[1],
        )

    def to_dict(self, decimals: int = 3) -> dict:
        """JSON-ready: the raw map as rows of numbers, plus what it explains."""
        x, y = self.peak()
        return {
            "score": round(self.score, 6),
            "method": self.method,
            "width": int(self.raw.shape[1]),
            "height": int(self.raw.shape[0]),
            "image_size": list(self.original_size),
            "peak": [round(x, 1), round(y, 1)],
            "raw": np.round(self.raw, decimals).tolist(),
        }

    def overlay(self, opacity: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The image with the map blended on top; opacity 0 shows the image, 1 only the map."""
        if not 0.0 <= opacity <= 1.0:
            raise BadInput(f"opacity must be between 0 and 1, got {opacity}")
        try:
            colours = matplotlib.colormaps[colormap]
        except KeyError:
            raise BadInput(
                f"unknown colour map {colormap!r}; try jet, viridis, inferno or magma"
            ) from None
        heat = Image.fromarray(self.raw.astype(np.float32)).resize(
            self.image.size, Image.Resampling.BILINEAR
        )
        painted = colours(np.clip(np.asarray(heat), 0.0, 1.0))[..., :3]
        base = np.asarray(self.image, dtype=np.float32) / 255.0
        blended = (1.0 - opacity) * base + opacity * painted
        return Image.fromarray(np.round(blended * 255).astype(np.uint8))


# -- queries -------------------------------------------------------------------------------------
def query_vector(backbone: Backbone, query) -> torch.Tensor:
    """A normalised (dim,) feature for a text (str), an image (path, bytes, PIL) or a vector."""
    if isinstance(query, str):
        features = backbone.encode_texts([query])[0]
    elif isinstance(query, np.ndarray | torch.Tensor | list | tuple):
        features = _as_vector(query, backbone.dim)
    else:
        features = backbone.encode_images([query])[0]
    vector = torch.as_tensor(np.asarray(features, dtype=np.float32), device=backbone.device)
    return F.normalize(vector, dim=-1)


def _as_vector(values, dim: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dim:
        raise BadInput(f"the query vector has {vector.shape[0]} numbers; this model needs {dim}")
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise BadInput("the query vector must be finite and not all zeros")
    return vector


# -- hooks ---------------------------------------------------------------------------------------
@contextmanager
def _registered(handles: list):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _this_thread_only(function):
    """Hooks sit on a shared model: other threads' forward passes must pass through untouched."""
    owner = threading.get_ident()

    def hook(*args):
        return function(*args) if threading.get_ident() == owner else None

    return hook


def _attention_modules(visual) -> list[torch.nn.MultiheadAttention] | None:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        return None
    modules = [getattr(block, "attn", None) for block in blocks]
    if not modules or not all(isinstance(m, torch.nn.MultiheadAttention) for m in modules):
        return None
    if any(m.in_proj_weight is None for m in modules):  # separate q/k/v projections: unsupported
        return None
    return list(modules)


class AttentionRecorder:
    """Records per-head attention weights, value inputs and outputs of MultiheadAttention modules."""

    def __init__(self, modules: list[torch.nn.MultiheadAttention]):
        self.modules = modules
        self.records: list[dict] = [{} for _ in modules]

    def hooks(self) -> list:
        handles = []
        for module, record in zip(self.modules, self.records, strict=True):
            handles.append(
                module.register_forward_pre_hook(
                    _this_thread_only(self._ask_for_weights(record)), with_kwargs=True
                )
            )
            handles.append(
                module.register_forward_hook(
                    _this_thread_only(self._keep_outputs(record)), with_kwargs=True
                )
            )
        return handles

    @staticmethod
    def _ask_for_weights(record: dict):
        def pre_hook(module, args, kwargs):
            record["value"] = args[2] if len(args) > 2 else kwargs["value"]
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        return pre_hook

    @staticmethod
    def _keep_outputs(record: dict):
        def hook(module, args, kwargs, output):
            record["output"], record["weights"] = output[0], output[1]

        return hook

    def weight_gradients(self, score: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(A, dS/dA)] per block, each (batch, heads, tokens, tokens)."""
        outputs = [record["output"] for record in self.records]
        output_grads = torch.autograd.grad(score, outputs)
        return [
            (record["weights"].detach(), self._grad_of_weights(module, record, grad))
            for module, record, grad in zip(self.modules, self.records, output_grads, strict=True)
        ]

    @staticmethod
    def _grad_of_weights(module, record: dict, output_grad: torch.Tensor) -> torch.Tensor:
        """out = concat_h(A_h V_h) W_o^T + b  =>  dS/dA_h = (dS/dout W_o)_h V_h^T."""
        value, output_grad = record["value"].detach(), output_grad.detach()
        if not module.batch_first:
            value, output_grad = value.transpose(0, 1), output_grad.transpose(0, 1)
        batch, tokens, width = value.shape
        heads, head_dim = module.num_heads, width // module.num_heads
        w_v = module.in_proj_weight[2 * width :].detach()
        b_v = module.in_proj_bias[2 * width :].detach() if module.in_proj_bias is not None else None
        values = F.linear(value, w_v, b_v).view(batch, tokens, heads, head_dim).transpose(1, 2)
        head_grads = (output_grad @ module.out_proj.weight.detach()).view(
            batch, tokens, heads, head_dim
        )
        return head_grads.transpose(1, 2) @ values.transpose(-1, -2)


# -- relevance methods ---------------------------------------------------------------------------
def _image_score(model, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    features = model.encode_image(pixels)
    return (F.normalize(features.float(), dim=-1) * target).sum()


def attention_relevance(model, pixels: torch.Tensor, target: torch.Tensor, start_layer: int = 0):
    """Chefer et al. 2021: R <- R + mean_h((dS/dA * A)^+) R over the blocks; the CLS row over patches."""
    visual = model.visual
    recorder = AttentionRecorder(_attention_modules(visual))
    with _registered(recorder.hooks()):
        score = _image_score(model, pixels, target)
        pairs = recorder.weight_gradients(score)
    if not -len(pairs) <= start_layer < len(pairs):
        raise BadInput(f"start_layer must be between {-len(pairs)} and {len(pairs) - 1}")
    tokens = pairs[0][0].shape[-1]
    relevance = torch.eye(tokens, device=pixels.device)
    for weights, grads in pairs[start_layer:]:
        contribution = (grads[0] * weights[0]).clamp(min=0).mean(dim=0)
        relevance = relevance + contribution @ relevance
    grid_h, grid_w = visual.grid_size
    patch_relevance = relevance[0, tokens - grid_h * grid_w :]
    return patch_relevance.reshape(grid_h, grid_w), float(score.detach())


def _grad_cam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Channels weighted by their mean gradient, summed, negative evidence dropped. (C, ...) inputs."""
    channel_dims = tuple(range(1, activations.ndim))
    weights = grads.mean(dim=channel_dims, keepdim=True)
    return (weights * activations).sum(dim=0).clamp(min=0)


def _capture_output(module: torch.nn.Module, store: dict):
    def hook(_module, _args, output):
        store["activations"] = output

    return module.register_forward_hook(_this_thread_only(hook))


def resnet_grad_cam(model, pixels: torch.Tensor, target: torch.Tensor):
    """Grad-CAM on the last residual stage (before the attention pool)."""
    store: dict = {}
    with _registered([_capture_output(model.visual.layer4, store)]):
        score = _image_score(model, pixels, target)
        (grads,) = torch.autograd.grad(score, [store["activations"]])
    return _grad_cam(store["activations"][0].detach(), grads[0]), float(score.detach())


def vit_grad_cam(model, pixels: torch.Tensor, target: torch.Tensor):
    """Gradient x activation of the last block's first LayerNorm output, per patch token.

    Each token gets its own gradient weights: classic Grad-CAM's gradients averaged over all
    tokens lit up the background on the Shapes world (0% pointing game), the per-token product
    (as LayerCAM does for CNNs) finds the named object (bench/explain_benchmark.py).
    """
    visual = model.visual
    store: dict = {}
    with _registered([_capture_output(visual.transformer.resblocks[-1].ln_1, store)]):
        score = _image_score(model, pixels, target)
        (grads,) = torch.autograd.grad(score, [store["activations"]])
    activations = store["activations"].detach()
    if not getattr(visual.transformer, "batch_first", True):
        activations, grads = activations.transpose(0, 1), grads.transpose(0, 1)
    grid_h, grid_w = visual.grid_size
    patches = slice(activations.shape[1] - grid_h * grid_w, None)
    tokens, token_grads = activations[0, patches], grads[0, patches]  # (P, C)
    cam = (tokens * token_grads).sum(dim=-1).clamp(min=0)
    return cam.reshape(grid_h, grid_w), float(score.detach())


def pick_method(backbone: Backbone, method: str = "auto") -> str:
    if method not in METHODS:
        raise BadInput(f"unknown heatmap method {method!r}; choose one of {METHODS}")
    visual = backbone.model.visual
    if isinstance(visual, ModifiedResNet):
        if method == "attention":
            raise BadInput("attention relevance needs a ViT backbone; this one is a ResNet")
        return "gradcam"
    if not isinstance(visual, VisionTransformer):
        raise BadInput(
            f"heatmaps support open_clip ViT and ResNet backbones, not {type(visual).__name__}"
        )
    if method == "auto":
        return "attention" if _attention_modules(visual) is not None else "gradcam"
    if method == "attention" and _attention_modules(visual) is None:
        raise BadInput("this ViT's blocks do not use nn.MultiheadAttention; use method='gradcam'")
    return method


def relevance_grid(
    backbone: Backbone,
    pixels: torch.Tensor,
    target: torch.Tensor,
    method: str,
    start_layer: int = 0,
) -> tuple[np.ndarray, float]:
    """The map at model resolution, normalised to [0, 1], and the similarity it explains."""
    model = backbone.model
    pixels = pixels.to(backbone.device).requires_grad_(True)  # grads flow even with frozen weights
    with backbone.lock, torch.enable_grad():
        if isinstance(model.visual, ModifiedResNet):
            grid, score = resnet_grad_cam(model, pixels, target)
        elif method == "attention":
            grid, score = attention_relevance(model, pixels, target, start_layer)
        else:
            grid, score = vit_grad_cam(model, pixels, target)
    grid = grid.float().cpu().numpy()
    span = float(grid.max() - grid.min())
    normalised = (grid - grid.min()) / span if span > 1e-12 else np.zeros_like(grid)
    return normalised.astype(np.float32), score


# -- geometry ------------------------------------------------------------------------------------
def view_side(size: tuple[int, int], preprocessing: str) -> float:
    """Side, in original pixels, of the centred square the model sees after preprocessing."""
    short, long = sorted(size)
    if preprocessing == "squarepad":
        return float(long)
    if preprocessing == "targetpad" and long / max(short, 1) > TARGET_PAD_RATIO:
        return float(round(long / TARGET_PAD_RATIO))
    return float(short)


def to_image_frame(
    grid: np.ndarray, size: tuple[int, int], preprocessing: str, max_side: int = RAW_MAX_SIDE
) -> np.ndarray:
    """Lay the model-view map over the original image: same aspect ratio, 0 where unseen."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    side = max(1, round(view_side(size, preprocessing) * scale))
    square = F.interpolate(
        torch.from_numpy(grid)[None, None], size=(side, side), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    frame = np.zeros((out_h, out_w), np.float32)
    top, left = (out_h - side) // 2, (out_w - side) // 2
    rows = slice(max(0, top), min(out_h, top + side))
    cols = slice(max(0, left), min(out_w, left + side))
    seen = square[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    span = float(seen.max() - seen.min())  # padding may hold the extremes: rescale what is shown
    frame[rows, cols] = (seen - seen.min()) / span if span > 1e-12 else 0.0
    return frame


# -- entry point ---------------------------------------------------------------------------------
def explain(
    backbone: Backbone,
    image: ImageSource,
    query,
    method: str = "auto",
    whole_image: bool = True,
    start_layer: int = 0,
) -> Heatmap:
    """Relevance of each part of `image` to `query` (str text, image source, or feature vector).

    whole_image pads the image to a square first so every pixel is explained; False uses the
    backbone's own preprocessing (the exact view the index scored, possibly centre-cropped).
    Always PyTorch, whatever runtime serves the searches: the heatmap needs gradients.
    """
    backbone = backbone.on_torch()
    method = pick_method(backbone, method)
    picture = backbone.open(image)
    target = query_vector(backbone, query)
    view = backbone.with_preprocessing("squarepad") if whole_image else backbone
    pixels = view.transform(picture).unsqueeze(0)
    grid, score = relevance_grid(backbone, pixels, target, method, start_layer)
    raw = to_image_frame(grid, picture.size, view.preprocessing)
    shown = picture.copy()
    shown.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.BICUBIC)
    return Heatmap(raw, shown, picture.size, score, method, grid)
