"""The project's one training loop, its config, checkpoints and device handling.

A plain loop in the nanoGPT spirit, shared by every trainer in the project:

    cfg = TrainConfig(steps=2000, batch_size=128, lr=5e-4, out_dir="runs/x")
    result = train_clip(model, loader, cfg, validate=lambda m: {"r@10": ...})

Objectives
  * `train.clip.train_clip`          image/text pairs, symmetric InfoNCE with the model's own `logit_scale`
                      (from scratch or fine-tuning; `cfg.towers` and `cfg.last_blocks` pick what learns).
  * `train.composed.train_composed`  CLIP4Cir stage 1: query = normalise(f_img(ref) + f_txt(caption)),
                      target = f_img(target), cross-entropy on 100 * q @ t^T (AdamW lr 2e-6 defaults).
  * `train_loop`      the generic loop both use; other trainers (the Combiner, textual inversion)
                      pass their own `step_loss(model, batch) -> loss`.

Device-agnostic (CUDA with autocast when present, else CPU), seeded, tqdm progress with loss and
samples/s, periodic validation through a metric callback, best-checkpoint selection and resume.
Checkpoints are folders: `model.safetensors` + `train_state.json` (config, step, metrics) +
`optimizer.pt` (a plain state dict, read back with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from retrieval.embed import worker_init
from retrieval.errors import BadInput, NotFound

TOWERS = ("both", "image", "text")


MODEL_FILE = "model.safetensors"


STATE_FILE = "train_state.json"


OPTIMIZER_FILE = "optimizer.pt"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature at 100


Validate = Callable[[torch.nn.Module], dict[str, float]]


StepLoss = Callable[[torch.nn.Module, object], torch.Tensor]


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved next to every checkpoint."""

    steps: int = 1000  # optimizer steps in total (the loader is cycled through epochs)
    batch_size: int = 128  # informative (the loader batches); used for samples/s
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" decays to lr * min_lr_ratio after warmup; "constant"
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # 0 disables
    seed: int = 0
    device: str = ""  # "" = CUDA when present, else CPU
    amp: bool = True  # mixed precision on CUDA only (bfloat16 when supported, else float16)
    towers: str = "both"  # which encoders learn: both | image | text
    last_blocks: int = (
        0  # >0: only the last N transformer/residual blocks (+ final norms, projections)
    )
    train_logit_scale: bool = True  # contrastive objective only
    validate_every: int = 0  # steps between validations; 0 = only at the end
    select_metric: str = ""  # metric name from `validate` that picks the best checkpoint
    log_every: int = 10
    out_dir: str = ""  # "" = no checkpoints written
    resume: str = ""  # a checkpoint folder to continue from (weights, optimizer, step)
    extra: dict = field(default_factory=dict)  # free-form provenance (data, command line...)

    @classmethod
    def composed_defaults(cls, **overrides) -> TrainConfig:
        """CLIP4Cir stage-1 recipe: AdamW lr 2e-6, betas (0.9, 0.999), eps 1e-7, batch 128."""
        base = dict(
            lr=2e-6,
            betas=(0.9, 0.999),
            eps=1e-7,
            batch_size=128,
            weight_decay=0.01,
            warmup_steps=0,
            schedule="constant",
            train_logit_scale=False,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


@dataclass
class TrainResult:
    step: int
    best_step: int
    best_metrics: dict
    history: list[dict]  # one row per validation: {"step", "loss", **metrics}
    seconds: float
    samples_per_second: float


def run_record(result: TrainResult, device) -> dict:
    """How long a training loop took and where; saved beside what it trained, so reports need no timer."""
    return {
        "seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 1),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def _image_blocks(model) -> list[torch.nn.Module]:
    visual = model.visual
    if hasattr(visual, "transformer"):  # ViT
        return list(visual.transformer.resblocks)
    layers = [getattr(visual, f"layer{i}", None) for i in range(1, 5)]
    if all(layers):  # ModifiedResNet: every bottleneck is a block
        return [block for layer in layers for block in layer]
    raise BadInput(f"last_blocks is not supported for the image tower {type(visual).__name__}")


def _image_head(model) -> list:
    visual = model.visual
    head = [getattr(visual, name, None) for name in ("ln_post", "attnpool", "proj", "head")]
    return [part for part in head if part is not None]


def _text_blocks(model) -> list[torch.nn.Module]:
    if hasattr(model, "transformer") and hasattr(model.transformer, "resblocks"):
        return list(model.transformer.resblocks)
    raise BadInput(f"last_blocks is not supported for the text tower of {type(model).__name__}")


def _text_head(model) -> list:
    head = [getattr(model, name, None) for name in ("ln_final", "text_projection")]
    return [part for part in head if part is not None]


def _enable(part, flag: bool = True) -> None:
    """Parameters and modules both answer `requires_grad_`."""
    part.requires_grad_(flag)


def set_trainable(
    model, towers: str = "both", last_blocks: int = 0, logit_scale: bool = True
) -> int:
    """Freeze everything, then unfreeze the chosen towers (or their last N blocks). Returns #trainable."""
    if towers not in TOWERS:
        raise BadInput(f"towers must be one of {TOWERS}, not {towers!r}")
    model.requires_grad_(False)
    image_parts: list = [model.visual]
    text_parts: list = [part for name, part in model.named_children() if name != "visual"]
    text_parts += [
        param
        for name, param in model.named_parameters(recurse=False)
        if name not in {"logit_scale", "logit_bias"}
    ]
    if last_blocks > 0:
        image_parts = _image_blocks(model)[-last_blocks:] + _image_head(model)
        text_parts = _text_blocks(model)[-last_blocks:] + _text_head(model)
    for part in image_parts if towers in ("both", "image") else []:
        _enable(part)
    for part in text_parts if towers in ("both", "text") else []:
        _enable(part)
    if logit_scale and isinstance(getattr(model, "logit_scale", None), torch.nn.Parameter):
        model.logit_scale.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on gains, biases, embeddings and the temperature."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = (
            param.ndim < 2
            or "embedding" in name
            or "logit_" in name
            or name.endswith("class_embedding")
        )
        (no_decay if plain else decay).append(param)
    if not decay and not no_decay:
        raise BadInput("nothing to train: every parameter is frozen")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(
    directory,
    model,
    cfg: TrainConfig,
    step: int,
    metrics: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Weights as safetensors, the config and progress as JSON, optimizer state as a plain state dict."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE))
    info = {"step": step, "metrics": metrics or {}, "config": asdict(cfg)}
    (directory / STATE_FILE).write_text(json.dumps(info, indent=2, default=str))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    return directory


def load_checkpoint(
    directory, model, optimizer: torch.optim.Optimizer | None = None, map_location="cpu"
) -> dict:
    """Load weights (and optimizer state when given and saved) in place; returns the saved JSON."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise NotFound(f"no checkpoint in {directory} (expected {MODEL_FILE})")
    model.load_state_dict(load_file(str(directory / MODEL_FILE), device=str(map_location)))
    info = (
        json.loads((directory / STATE_FILE).read_text())
        if (directory / STATE_FILE).is_file()
        else {}
    )
    if optimizer is not None and (directory / OPTIMIZER_FILE).is_file():
        optimizer.load_state_dict(
            torch.load(directory / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
        )
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "") -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _autocast(device: torch.device, enabled: bool):
    dtype = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float16
    )
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(part, device) for part in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def _batches(loader: Iterable, seed: int, start_step: int):
    """Cycle through epochs forever, reseeding each epoch so a resumed run sees the same order."""
    epoch_length = len(loader) if hasattr(loader, "__len__") else 0
    epoch, skip = (
        (start_step // epoch_length, start_step % epoch_length) if epoch_length else (0, 0)
    )
    while True:
        torch.manual_seed(seed * 100_003 + epoch)
        owner = loader if hasattr(loader, "set_epoch") else getattr(loader, "dataset", None)
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield batch
        skip, epoch = 0, epoch + 1


def _is_better(metrics: dict, best: dict | None, name: str) -> bool:
    if best is None:
        return True
    return name in metrics and metrics[name] > best.get(name, -math.inf)


def train_loop(
    model,
    loader: Iterable,
    cfg: TrainConfig,
    step_loss: StepLoss,
    validate: Validate | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run `cfg.steps` optimizer steps of `step_loss` over `loader`; validate, keep the best, checkpoint.

    The caller decides what learns (requires_grad) before calling; the optimizer covers those
    parameters. With `cfg.out_dir`, writes `last/` (every validation) and `best/` (best
    `cfg.select_metric`, or the last one when no metric is selected).
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, cfg)
    start_step, best, best_step, history = 0, None, 0, []
    if cfg.resume:
        info = load_checkpoint(cfg.resume, model, optimizer, map_location=device)
        start_step = int(info.get("step", 0))
        best = info.get("best_metrics") or None
        best_step = int(info.get("best_step", 0))
        history = info.get("history", [])
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    select = cfg.select_metric
    running, seen_samples, started = 0.0, 0, time.perf_counter()
    batches = _batches(loader, cfg.seed, start_step)
    bar = tqdm(
        range(start_step, cfg.steps),
        initial=start_step,
        total=cfg.steps,
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
    )
    model.train()
    loss_value = float("nan")
    for step in bar:
        batch = to_device(next(batches), device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with _autocast(device, use_amp):
            loss = step_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
            )
        scaler.step(optimizer)
        scaler.update()
        scale = getattr(model, "logit_scale", None)
        if isinstance(scale, torch.nn.Parameter) and scale.requires_grad:
            with torch.no_grad():
                scale.clamp_(0, MAX_LOGIT_SCALE)
        loss_value = float(loss.detach())
        running = loss_value if step == start_step else 0.9 * running + 0.1 * loss_value
        seen_samples += _batch_size(batch)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            rate = seen_samples / max(1e-9, time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{running:.3f}", lr=f"{learning_rate(cfg, step):.1e}", sps=f"{rate:.0f}"
            )
        done = step + 1
        if done == cfg.steps or (cfg.validate_every and done % cfg.validate_every == 0):
            metrics = _run_validation(model, validate)
            history.append({"step": done, "loss": running, **metrics})
            if progress and metrics:
                tqdm.write(
                    f"step {done}: loss {running:.4f} "
                    + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                )
            if not select or _is_better(metrics, best, select):
                best, best_step = metrics, done
                if out_dir:
                    _save_progress(
                        out_dir / "best", model, cfg, done, metrics, None, best, best_step, history
                    )
            if out_dir:
                _save_progress(
                    out_dir / "last", model, cfg, done, metrics, optimizer, best, best_step, history
                )
    seconds = time.perf_counter() - started
    return TrainResult(
        step=cfg.steps,
        best_step=best_step,
        best_metrics=best or {},
        history=history,
        seconds=seconds,
        samples_per_second=seen_samples / max(seconds, 1e-9),
    )


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, list | tuple):
        batch = batch[0]
    return len(batch)


def _run_validation(model, validate: Validate | None) -> dict:
    if validate is None:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = {key: float(value) for key, value in validate(model).items()}
    model.train(was_training)
    return metrics


def _save_progress(
    directory, model, cfg, step, metrics, optimizer, best, best_step, history
) -> None:
    save_checkpoint(directory, model, cfg, step, metrics, optimizer)
    info_path = Path(directory) / STATE_FILE
    info = json.loads(info_path.read_text())
    info.update(best_metrics=best or {}, best_step=best_step, history=history)
    info_path.write_text(json.dumps(info, indent=2, default=str))


def make_loader(dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True):
    """A shuffling loader that drops the last short batch (contrastive losses want full batches)."""
    if len(dataset) < 2:
        raise BadInput("need at least two training examples for a contrastive loss")
    batch_size = min(batch_size, len(dataset))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=True,
        collate_fn=getattr(dataset, "collate", None),
        num_workers=num_workers,
        worker_init_fn=worker_init,
    )
