"""The CLIP4Cir Combiner for composed image retrieval, and its two-stage training.

The Combiner fuses a reference image feature `i` and a modification text feature `t` (both
L2-normalised CLIP features of size d) into one query feature:

    projections   p_t = Dropout(ReLU(Linear(d, 4d)(t))),  p_i = same with its own weights on i
    combined      c = [p_t, p_i]                                           (8d)
    residual      v = Linear(8d, d)(Dropout(ReLU(Linear(8d, 8d)(c))))
    mixing        lambda = Sigmoid(Linear(8d, 1)(Dropout(ReLU(Linear(8d, 8d)(c)))))
    output        normalise(v + lambda * t + (1 - lambda) * i)

Training (CLIP4Cir):
  stage 1  `train-stage1`: fine-tune CLIP with query = normalise(i + t), AdamW lr 2e-6
           (the objective lives in `retrieval.training.train_composed`);
  stage 2  `train-combiner`: CLIP frozen, image features precomputed once (cached on disk),
           Adam lr 2e-5, cross-entropy over in-batch logits 100 * query @ targets^T.
A trained Combiner is a folder: combiner.safetensors + combiner_config.json.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retrieval.backbone import fingerprint_matches, model_fingerprint
from retrieval.cli_common import add_device, add_preprocessing, add_seed
from retrieval.datasets import (
    FASHIONIQ_CATEGORIES,
    ComposedSplit,
    encode_texts,
    image_features,
    load_splits,
    unique_rows,
)
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.evaluation import SELECT_METRIC, evaluate_split, summarise
from retrieval.training import (
    MODEL_FILE,
    TrainConfig,
    TrainResult,
    composed_loss,
    load_checkpoint,
    resolve_device,
    run_record,
    train_composed,
    train_loop,
)

WEIGHTS_FILE = "combiner.safetensors"
CONFIG_FILE = "combiner_config.json"
STAGE2_LR = 2e-5
STAGE2_BATCH = 1024


@dataclass
class CombinerConfig:
    """What a saved Combiner needs to be rebuilt and checked against the backbone in use."""

    dim: int
    dropout: float = 0.5
    projection_factor: int = 4  # projections d -> 4d
    hidden_factor: int = 8  # combiner / dynamic-scalar hidden layers 8d
    model_spec: str = ""  # backbone it was trained on (informative)
    preprocessing: str = "standard"
    model_fingerprint: list[float] = field(
        default_factory=list
    )  # text features of a probe sentence
    training: dict = field(default_factory=dict)  # recipe, data, best metrics


class Combiner(nn.Module):
    """Reference image feature + text feature -> normalised composed query feature."""

    def __init__(self, config: CombinerConfig):
        super().__init__()
        self.config = config
        d, p, h = (
            config.dim,
            config.projection_factor * config.dim,
            config.hidden_factor * config.dim,
        )
        self.text_projection = nn.Sequential(nn.Linear(d, p), nn.ReLU(), nn.Dropout(config.dropout))
        self.image_projection = nn.Sequential(
            nn.Linear(d, p), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.combiner = nn.Sequential(
            nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(h, d)
        )
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * p, h),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(h, 1),
            nn.Sigmoid(),
        )

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        combined = torch.cat(
            [self.text_projection(text_features), self.image_projection(image_features)], dim=-1
        )
        mix = self.dynamic_scalar(combined)
        output = self.combiner(combined) + mix * text_features + (1 - mix) * image_features
        return F.normalize(output, dim=-1)


def new_combiner(dim: int, **config) -> Combiner:
    return Combiner(CombinerConfig(dim=dim, **config))


def save_combiner(combiner: Combiner, directory: str | Path) -> Path:
    """Write combiner.safetensors + combiner_config.json (what `load_combiner` reads)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in combiner.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(combiner.config), indent=2))
    return directory


def _combiner_dir(spec: str | Path) -> Path:
    from retrieval.hub import fetch, is_hub_location

    spec = str(spec)
    path = (
        fetch(spec, repo_type="model")
        if is_hub_location(spec)
        else Path(spec.removeprefix("local-dir:"))
    )
    path = path.expanduser()
    if path.is_file():
        path = path.parent
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise NotFound(
            f"{spec} is not a Combiner folder: expected {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    return path


def load_combiner(spec: str | Path, device: str | torch.device | None = None) -> Combiner:
    """A Combiner from a folder ("local-dir:" optional) or the Hub ("hf-hub:org/repo[@revision]")."""
    directory = _combiner_dir(spec)
    try:
        config = CombinerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    except (TypeError, json.JSONDecodeError) as error:
        raise BadInput(
            f"{directory / CONFIG_FILE} is not a valid Combiner config: {error}"
        ) from error
    combiner = Combiner(config)
    combiner.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return combiner.to(device or "cpu").eval()


# --------------------------------------------------------------------------- search


class CombinerComposer:
    """Composer "combiner": `composer(backbone, image_features (B,d), texts) -> (B,d)` normalised."""

    def __init__(self, combiner: Combiner):
        self.combiner = combiner.eval()
        self._checked: set[int] = set()

    def check(self, backbone) -> None:
        """Refuse a backbone of another dimension, or the same dimension with other weights."""
        if id(backbone.model) in self._checked:
            return
        config = self.combiner.config
        trained_on = config.model_spec or "another model"
        if backbone.dim != config.dim:
            raise IndexMismatch(
                f"this Combiner was trained on {trained_on} (features {config.dim}); the model in use "
                f"embeds into {backbone.dim}: train a Combiner for this model (train-combiner)"
            )
        if not fingerprint_matches(config.model_fingerprint, backbone):
            raise IndexMismatch(
                f"this Combiner was trained on {trained_on}; the model in use ({backbone.spec}) has the "
                "same dimension but different weights: train a Combiner for it (train-combiner)"
            )
        self._checked.add(id(backbone.model))

    @torch.no_grad()
    def __call__(self, backbone, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        self.check(backbone)
        if len(texts) != len(image_features):
            raise BadInput(f"{len(image_features)} reference images but {len(texts)} texts")
        device = next(self.combiner.parameters()).device
        text_features = backbone.encode_token_ids(backbone.tokenize(list(texts))).to(
            device, torch.float32
        )
        query = self.combiner(image_features.to(device, torch.float32), text_features)
        return query.to(image_features.device)


def combiner_composer(
    combiner: Combiner | str | Path, device: str | None = None
) -> CombinerComposer:
    """Composer for `Searcher.composers["combiner"]`; `combiner` is a Combiner, folder or hf-hub: id."""
    if not isinstance(combiner, Combiner):
        combiner = load_combiner(combiner, device=device)
    return CombinerComposer(combiner)


# --------------------------------------------------------------------------- stage 2: the Combiner


class TripletFeatures(Dataset):
    """(reference feature, caption feature, target feature) batches from precomputed features.

    Each query has one or more caption variants (FashionIQ: four); a batch draws one per query,
    seeded by (seed, epoch, first index) so a resumed run sees the same draws.
    """

    def __init__(
        self,
        references: torch.Tensor,
        targets: torch.Tensor,
        variants: list[list[int]],
        images: torch.Tensor,
        texts: torch.Tensor,
        seed: int = 0,
    ):
        self.references, self.targets, self.variants = references, targets, variants
        self.images, self.texts, self.seed, self.epoch = images, texts, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.references)

    def __getitems__(self, indices: list[int]):
        rng = np.random.default_rng([self.seed, self.epoch, int(indices[0]), len(indices)])
        chosen = [self.variants[i][int(rng.integers(len(self.variants[i])))] for i in indices]
        rows = torch.as_tensor(indices, dtype=torch.long)
        return (
            self.images[self.references[rows]],
            self.texts[torch.as_tensor(chosen)],
            self.images[self.targets[rows]],
        )

    def __getitem__(self, index: int):
        return self.__getitems__([index])


def _keep_batch(batch):
    return batch


def triplet_features(
    backbone, splits: list[ComposedSplit], cache=True, seed: int = 0, progress: bool = True
) -> TripletFeatures:
    """Precompute (once, cached) the image features and the caption-variant text features of splits."""
    names = list(dict.fromkeys(name for split in splits for name in split.images))
    paths = {name: path for split in splits for name, path in split.images.items()}
    features = image_features(backbone, [paths[n] for n in names], cache, progress)
    row = {name: i for i, name in enumerate(names)}
    references, targets, variant_texts = [], [], []
    for split in splits:
        for query in split.queries:
            if not query.targets:
                raise BadInput(f"{split.name} has no targets: it cannot be used for training")
            references.append(row[query.reference])
            targets.append(row[query.targets[0]])
            variant_texts.append(split.training_texts(query))
    distinct, rows = unique_rows([text for variants in variant_texts for text in variants])
    variants, start = [], 0
    for texts_of_query in variant_texts:
        variants.append(rows[start : start + len(texts_of_query)].tolist())
        start += len(texts_of_query)
    text_features = encode_texts(backbone, distinct, progress=progress)
    return TripletFeatures(
        torch.tensor(references), torch.tensor(targets), variants, features, text_features, seed
    )


def combiner_step(model: Combiner, batch) -> torch.Tensor:
    """CLIP4Cir loss: cross-entropy over 100 * combined @ targets^T, the i-th target is the positive."""
    references, texts, targets = batch
    return composed_loss(model(references, texts), targets)


class _FeatureComposer:
    """Validation composer: the Combiner under training on precomputed caption features."""

    def __init__(self, model: Combiner, texts: dict[str, torch.Tensor]):
        self.model, self.texts = model, texts

    def __call__(self, backbone, image_features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        text_features = torch.stack([self.texts[text] for text in texts]).to(device)
        return self.model(image_features.to(device, torch.float32), text_features)


def split_validator(
    backbone, splits: list[ComposedSplit], protocol: str, cache=True, progress: bool = False
):
    """A `validate(model)` for train_loop: features and caption features computed once, metrics per call."""
    prepared = []
    for split in splits:
        names = list(split.images)
        features = image_features(backbone, [split.images[n] for n in names], cache, progress)
        texts = list(dict.fromkeys(split.query_text(q) for q in split.queries))
        prepared.append(
            (split, (names, features), dict(zip(texts, encode_texts(backbone, texts), strict=True)))
        )

    def validate(model: Combiner) -> dict[str, float]:
        results = [
            evaluate_split(split, backbone, _FeatureComposer(model, texts), feats, progress=False)
            for split, feats, texts in prepared
        ]
        return summarise(protocol, results)

    return validate


def stage2_config(**overrides) -> TrainConfig:
    """CLIP4Cir stage 2: Adam lr 2e-5, constant, large batches, no clipping, mixed precision on CUDA."""
    base = dict(
        lr=STAGE2_LR,
        batch_size=STAGE2_BATCH,
        weight_decay=0.0,
        warmup_steps=0,
        schedule="constant",
        grad_clip=0.0,
        amp=True,
        train_logit_scale=False,
    )
    return TrainConfig(**{**base, **overrides})


def train_combiner(
    backbone,
    train_splits: list[ComposedSplit],
    cfg: TrainConfig,
    val_splits: list[ComposedSplit] | None = None,
    protocol: str = "cirr",
    cache=True,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[Combiner, TrainResult]:
    """Stage 2 on a frozen backbone; returns the best Combiner (by the protocol's metric) and the run."""
    data = triplet_features(backbone, train_splits, cache, cfg.seed, progress)
    loader = DataLoader(
        data,
        batch_size=min(cfg.batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) > cfg.batch_size,
        collate_fn=_keep_batch,
        num_workers=num_workers,
    )
    validate = (
        split_validator(backbone, val_splits, protocol, cache, progress) if val_splits else None
    )
    if validate is not None and not cfg.select_metric:
        cfg.select_metric = SELECT_METRIC[protocol]
    cfg.extra.setdefault("stage", 2)
    model = new_combiner(
        backbone.dim,
        model_spec=str(backbone.spec),
        preprocessing=backbone.preprocessing,
        model_fingerprint=model_fingerprint(backbone),
    )
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    result = train_loop(
        model, loader, cfg, combiner_step, validate=validate, optimizer=optimizer, progress=progress
    )
    if cfg.out_dir and (Path(cfg.out_dir) / "best" / MODEL_FILE).is_file():
        load_checkpoint(Path(cfg.out_dir) / "best", model, map_location=device)
    model.config.training = {
        "recipe": "CLIP4Cir stage 2 (frozen backbone)",
        "protocol": protocol,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "best_step": result.best_step,
        "best_metrics": result.best_metrics,
        "train_queries": len(data),
        "train_splits": [split.name for split in train_splits],
        **run_record(result, device),
        **cfg.extra,
    }
    return model.cpu().eval(), result


# --------------------------------------------------------------------------- stage 1: fine-tuning CLIP


class TripletImages(Dataset):
    """(reference pixels, caption, target pixels) for stage-1 fine-tuning; FashionIQ captions vary."""

    def __init__(self, splits: list[ComposedSplit], transform, tokenizer, seed: int = 0):
        self.items = [
            (split, query) for split in splits for query in split.queries if query.targets
        ]
        self.transform, self.tokenizer, self.seed, self.epoch = transform, tokenizer, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from retrieval.images import open_image

        split, query = self.items[index]
        variants = split.training_texts(query)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        text = variants[int(rng.integers(len(variants)))]
        reference = self.transform(open_image(split.images[query.reference]))
        target = self.transform(open_image(split.images[query.targets[0]]))
        return reference, text, target

    def collate(self, samples):
        references, texts, targets = zip(*samples, strict=True)
        return torch.stack(references), self.tokenizer(list(texts)), torch.stack(targets)


def _model_config(backbone) -> dict:
    """The open_clip model config of a backbone spec (local folder, hf-hub: id or architecture name)."""
    import open_clip

    from retrieval.backbone import CONFIG_FILE as OPEN_CLIP_CONFIG
    from retrieval.backbone import _local_dir

    spec = str(backbone.spec)
    local = _local_dir(spec)
    if local is None and spec.startswith("hf-hub:"):
        from retrieval.hub import fetch

        local = fetch(spec, repo_type="model")
    if local is not None:
        return json.loads((Path(local) / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    config = open_clip.get_model_config(spec.partition("/")[0])
    if config is None:
        raise BadInput(f"cannot find the open_clip config of {spec}")
    return config


def train_stage1(
    backbone,
    train_splits: list[ComposedSplit],
    cfg: TrainConfig,
    out: str | Path,
    val_splits: list[ComposedSplit] | None = None,
    protocol: str = "cirr",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Path, TrainResult]:
    """CLIP4Cir stage 1: fine-tune a copy of the backbone with the sum objective; saves a loadable model."""
    from retrieval.backbone import Backbone, save_backbone
    from retrieval.search import sum_composer

    model = copy.deepcopy(backbone.model).float()  # the loaded model is shared: train a copy
    tuned = Backbone(
        backbone.spec,
        model,
        backbone.base_transform,
        backbone.tokenizer,
        resolve_device(cfg.device),
        backbone.preprocessing,
    )
    data = TripletImages(train_splits, backbone.transform, backbone.tokenizer, cfg.seed)
    if not len(data):
        raise BadInput("no labelled training triplets")
    loader = DataLoader(
        data,
        batch_size=min(cfg.batch_size, len(data)),
        shuffle=True,
        drop_last=len(data) > cfg.batch_size,
        collate_fn=data.collate,
        num_workers=num_workers,
    )
    validate = None
    if val_splits:
        cfg.select_metric = cfg.select_metric or SELECT_METRIC[protocol]

        def validate(_model) -> dict[str, float]:
            results = [
                evaluate_split(s, tuned, sum_composer, cache=False, progress=False)
                for s in val_splits
            ]
            return summarise(protocol, results)

    cfg.extra.setdefault("stage", 1)
    cfg.out_dir = cfg.out_dir or str(Path(out) / "checkpoints")
    result = train_composed(model, loader, cfg, validate=validate, progress=progress)
    best = Path(cfg.out_dir) / "best"
    if (best / MODEL_FILE).is_file():
        load_checkpoint(best, model, map_location=tuned.device)
    model_dir = save_backbone(model.eval(), _model_config(backbone), Path(out))
    (Path(out) / "stage1.json").write_text(
        json.dumps(
            {
                "base_model": str(backbone.spec),
                "best_step": result.best_step,
                "best_metrics": result.best_metrics,
                "history": result.history,
                **run_record(result, tuned.device),
                "config": asdict(cfg),
            },
            indent=2,
            default=str,
        )
    )
    return model_dir, result


# --------------------------------------------------------------------------- command line


def _splits_for(args, split: str) -> list[ComposedSplit]:
    dataset = "cirr" if args.dataset == "shapes" else args.dataset
    categories = getattr(args, "categories", None) or FASHIONIQ_CATEGORIES
    return load_splits(dataset, args.root, split, categories)


def _steps(args, queries: int) -> int:
    if args.steps:
        return args.steps
    return max(1, args.epochs * max(1, queries // args.batch_size))


def _train_setup(args):
    from retrieval.backbone import load_backbone

    backbone = load_backbone(args.model, preprocessing=args.preprocessing, device=args.device)
    train = _splits_for(args, args.train_split)
    val = [] if args.val_split == "none" else _splits_for(args, args.val_split)
    queries = sum(len(split.queries) for split in train)
    extra = {
        "dataset": args.dataset,
        "root": str(args.root),
        "model": args.model,
        "train_split": args.train_split,
        "val_split": args.val_split,
    }
    protocol = "fashioniq" if args.dataset == "fashioniq" else "cirr"
    return backbone, train, val, queries, extra, protocol


def run_train_combiner(args) -> Path:
    """`python -m retrieval train-combiner`: stage 2 on a frozen backbone -> a Combiner folder."""
    backbone, train, val, queries, extra, protocol = _train_setup(args)
    out = Path(args.out)
    cfg = stage2_config(
        steps=_steps(args, queries),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=str(backbone.device),
        validate_every=args.validate_every,
        out_dir=str(out / "checkpoints"),
        resume=args.resume or "",
        extra=extra,
    )
    cache = False if args.no_cache else (args.cache_dir or True)
    started = time.perf_counter()
    combiner, result = train_combiner(backbone, train, cfg, val, protocol, cache, num_workers=0)
    save_combiner(combiner, out)
    print(
        f"Combiner trained on {queries} triplets in {time.perf_counter() - started:.0f} s "
        f"(best step {result.best_step}: {_short(result.best_metrics)}) -> {out}"
    )
    return out


def run_train_stage1(args) -> Path:
    """`python -m retrieval train-stage1`: fine-tune CLIP with the sum objective -> an open_clip folder."""
    backbone, train, val, queries, extra, protocol = _train_setup(args)
    cfg = TrainConfig.composed_defaults(
        steps=_steps(args, queries),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=str(backbone.device),
        validate_every=args.validate_every,
        towers=args.towers,
        out_dir=str(Path(args.out) / "checkpoints"),
        resume=args.resume or "",
        extra=extra,
    )
    model_dir, result = train_stage1(backbone, train, cfg, args.out, val, protocol, args.workers)
    print(
        f"stage-1 model (best step {result.best_step}: {_short(result.best_metrics)}) -> {model_dir}\n"
        f"next: python -m retrieval train-combiner --dataset {args.dataset} --root {args.root} "
        f"--model {model_dir} --out OUT"
    )
    return model_dir


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "/" not in k) or "no validation"


def _common_train_arguments(parser, lr: float, batch_size: int, epochs: int) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        choices=["cirr", "fashioniq", "shapes"],
        help="dataset layout (shapes = the generated Shapes world, CIRR layout and protocol)",
    )
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--model", required=True, help="CLIP spec, folder or hf-hub: id")
    parser.add_argument(
        "--out", required=True, help="output folder (checkpoints/ inside for resuming)"
    )
    parser.add_argument("--train-split", default="train", help="split to train on (default train)")
    parser.add_argument("--val-split", default="val", help="validation split, or 'none'")
    parser.add_argument(
        "--categories",
        nargs="+",
        choices=FASHIONIQ_CATEGORIES,
        default=list(FASHIONIQ_CATEGORIES),
        help="FashionIQ categories trained and validated on (default: all three)",
    )
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"passes over the triplets (default {epochs})"
    )
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    parser.add_argument("--lr", type=float, default=lr, help=f"default {lr:g}")
    parser.add_argument(
        "--validate-every", type=int, default=0, help="steps between validations (0: at the end)"
    )
    parser.add_argument(
        "--resume", help="checkpoint folder to continue from (OUT/checkpoints/last)"
    )
    add_preprocessing(parser)
    add_seed(parser)
    add_device(parser)


def add_train_combiner_arguments(parser) -> None:
    _common_train_arguments(parser, STAGE2_LR, STAGE2_BATCH, 100)
    parser.add_argument("--cache-dir", help="image feature cache (default: SR_CACHE_DIR/features)")
    parser.add_argument(
        "--no-cache", action="store_true", help="embed images again, write no cache"
    )


def add_train_stage1_arguments(parser) -> None:
    _common_train_arguments(parser, 2e-6, 128, 10)
    parser.add_argument(
        "--towers",
        default="both",
        choices=["both", "image", "text"],
        help="encoders fine-tuned (CLIP4Cir: both)",
    )
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
