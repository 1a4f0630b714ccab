"""Composed retrieval on the Shapes world: baselines, the Combiner (frozen and stage-1 CLIP), zero-shot.

Trains (unless the outputs exist or --skip-train), evaluates on the held-out Shapes test split with
the CIRR protocol (whole test gallery, reference removed, Recall_subset over the img_set), and
measures the CPU cost of one composed query on a 100k-item index, relative to the bare text encoder.

    python -m bench.composed_benchmark                  # train what is missing, evaluate, report
    python -m bench.composed_benchmark --retrain        # retrain both Combiners and the stage-1 CLIP
    python -m bench.composed_benchmark --retrain stage1 # retrain only the stage-1 CLIP and its Combiner
    python -m bench.composed_benchmark --cost-only      # only the per-query cost table

Ships the frozen-CLIP Combiner at precomputed/shapes-combiner/ (the app's method "combiner"); the
stage-1 CLIP and its Combiner stay under runs/composed/. The defaults are the shipped recipe: the
frozen-CLIP Combiner on 16,000 generated train sets (160,000 triplets), 30,000 steps (about 35 min
on one CPU thread); stage 1 on 4,000 sets, 3,000 steps (about an hour on one CPU thread, under
3 min on one H200) and its Combiner, 10,000 steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.report import write_section
from retrieval.backbone import (
    fingerprint_matches,
    load_backbone,
    model_fingerprint,
    new_model,
    save_backbone,
)
from retrieval.composed.baselines import image_only_composer, sum_composer, text_only_composer
from retrieval.composed.combiner import combiner_composer, load_combiner, save_combiner
from retrieval.config import ROOT
from retrieval.data.composed import read_cirr
from retrieval.data.features import split_features
from retrieval.eval.composed import evaluate_split
from retrieval.eval.metrics import recall_gain
from retrieval.eval.report import markdown_table
from retrieval.train.composed import stage2_config, train_combiner, train_stage1
from retrieval.train.loop import TrainConfig

DATA = ROOT / "precomputed" / "shapes"
MODEL = ROOT / "precomputed" / "shapes-clip-tiny"
COMBINER = ROOT / "precomputed" / "shapes-combiner"
PHI = ROOT / "precomputed" / "shapes-phi"
WORK = ROOT / "runs" / "composed"
COLUMNS = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "mean"]
INDEX_SIZE = 100_000
COST_QUERY = "make the red circle on the left a large blue square"
PARTS = ("frozen", "stage1")  # the frozen-CLIP Combiner; the stage-1 CLIP and its Combiner


# --------------------------------------------------------------------------- data


def training_root(args, sets: int) -> Path:
    """precomputed/shapes when it ships a train split, else a generated train split under runs/ (same world)."""
    if (args.data / "captions" / "cap.rc2.train.json").is_file():
        return args.data
    root = WORK / f"shapes-train-{sets}"
    if not (root / "captions" / "cap.rc2.train.json").is_file():
        print(f"precomputed/shapes has no train split: generating {sets} train sets in {root}")
        command = [sys.executable, "-m", "retrieval", "shapes", "generate", "--out", str(root)]
        command += ["--train-sets", str(sets), "--val-sets", "48", "--test-sets", "0"]
        subprocess.run(command, check=True)
    return root


# --------------------------------------------------------------------------- training


def stage2(backbone, root: Path, args, out: Path, steps: int) -> None:
    """Train and save a Combiner; its config records the data, the recipe and the time it took."""
    train, val = read_cirr(root, "train"), read_cirr(root, "val")
    cfg = stage2_config(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        validate_every=args.validate_every or max(1, steps // 6),
        out_dir=str(WORK / f"{out.name}-checkpoints"),
        extra={"dataset": "shapes", "train_sets": root.name},
    )
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # a fresh run, not a resumed one
    combiner, _ = train_combiner(backbone, [train], cfg, [val], "cirr", progress=args.progress)
    save_combiner(combiner, out)


def stage1(backbone, root: Path, args, out: Path) -> None:
    """Fine-tune CLIP with the sum objective (both towers); stage1.json records the time it took."""
    train, val = read_cirr(root, "train"), read_cirr(root, "val")
    cfg = TrainConfig.composed_defaults(
        steps=args.stage1_steps,
        batch_size=128,
        lr=args.stage1_lr,
        seed=args.seed,
        validate_every=max(1, args.stage1_steps // 5),
        out_dir=str(WORK / "stage1-checkpoints"),
        extra={"dataset": "shapes", "train_sets": root.name},
    )
    train_stage1(backbone, [train], cfg, out, [val], "cirr", progress=args.progress)


# --------------------------------------------------------------------------- evaluation


def evaluate(backbone, composers: dict, test, ranks: dict) -> dict[str, dict]:
    """Metrics per composer; each one's per-query target ranks go into `ranks` (paired tests)."""
    features = split_features(test, backbone, cache=False, progress=False)
    results = {}
    for name, composer in composers.items():
        result = evaluate_split(test, backbone, composer, features, progress=False)
        results[name], ranks[name] = result.metrics, result.ranks
        print(name, {key: round(value, 2) for key, value in results[name].items()})
    return results


def zero_shot_row(backbone):
    """The zero-shot composer when textual inversion and its Shapes weights are shipped."""
    if not (PHI / "phi_config.json").is_file():
        return None
    try:
        from retrieval.composed.phi import zero_shot_composer
    except ImportError:
        return None
    return zero_shot_composer(str(PHI))


# --------------------------------------------------------------------------- cost per query


def _median_ms(function, repeats: int) -> float:
    function()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def query_cost(backbone, combiner, repeats: int) -> list:
    """Milliseconds per query (median) on CPU, one thread: text encoder alone vs the composed search."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((INDEX_SIZE, backbone.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(backbone.dim)
    index.add(vectors)
    reference = torch.from_numpy(vectors[:1])
    tokens = backbone.tokenize([COST_QUERY])

    def text_only():
        backbone.encode_token_ids(tokens)

    def composed(method):
        def run():
            with torch.inference_mode():
                text = backbone.encode_token_ids(backbone.tokenize([COST_QUERY]))
                query = text + reference if method == "sum" else combiner(reference, text)
                query = torch.nn.functional.normalize(query, dim=-1)
            index.search(query.numpy(), 50)

        return run

    encoder = _median_ms(text_only, repeats)
    summed = _median_ms(composed("sum"), repeats)
    combined = _median_ms(composed("combiner"), repeats)
    combiner_alone = _median_ms(lambda: combiner(reference, reference), repeats)
    search_alone = _median_ms(lambda: index.search(vectors[:1], 50), repeats)
    return [encoder, search_alone, combiner_alone, summed, combined]


def cost_table(args) -> str:
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rows = []
    for name, backbone in cost_backbones(args):
        combiner = (
            load_combiner(COMBINER) if name == args.model.name and COMBINER.is_dir() else None
        )
        if combiner is None or combiner.config.dim != backbone.dim:
            from retrieval.composed.combiner import new_combiner

            combiner = new_combiner(backbone.dim)  # same size and cost as a trained one
        combiner.eval()
        with torch.inference_mode():
            encoder, search, combiner_ms, summed, combined = query_cost(
                backbone, combiner, args.repeats
            )
        rows.append(
            [
                name,
                backbone.dim,
                encoder,
                search,
                combiner_ms,
                summed,
                combined,
                f"{summed / encoder:.2f}x",
                f"{combined / encoder:.2f}x",
            ]
        )
        print(rows[-1])
    header = [
        "backbone",
        "d",
        "text encoder ms",
        f"flat search {INDEX_SIZE // 1000}k ms",
        "Combiner ms",
        "sum query ms",
        "Combiner query ms",
        "sum / encoder",
        "Combiner / encoder",
    ]
    return markdown_table(header, rows)


def cost_backbones(args):
    """The shipped tiny CLIP, and ViT-B-32 with random weights (same cost as the real one)."""
    if args.model.is_dir():
        yield args.model.name, load_backbone(str(args.model), device="cpu")
    directory = WORK / "vit-b-32-random"
    if not (directory / "open_clip_config.json").is_file():
        torch.manual_seed(0)
        model, _, _ = new_model("ViT-B-32", device="cpu")
        save_backbone(model, "ViT-B-32", directory)
    yield "ViT-B-32 (random weights)", load_backbone(str(directory), device="cpu")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument(
        "--train-sets",
        type=int,
        default=16000,
        help="generated train sets (10 triplets each) for the frozen-CLIP Combiner",
    )
    parser.add_argument("--combiner-steps", type=int, default=30000)
    parser.add_argument(
        "--stage1-train-sets",
        type=int,
        default=4000,
        help="train sets for stage 1 and its Combiner",
    )
    parser.add_argument("--stage1-combiner-steps", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4, help="stage 2 (CLIP4Cir: 2e-5)")
    parser.add_argument(
        "--validate-every", type=int, default=0, help="stage 2 (default: 6 times per run)"
    )
    parser.add_argument("--stage1-steps", type=int, default=3000)
    parser.add_argument(
        "--stage1-lr", type=float, default=1e-4, help="stage 1 (CLIP4Cir: 2e-6 for pretrained CLIP)"
    )
    parser.add_argument(
        "--retrain",
        nargs="*",
        choices=PARTS,
        help="train again even if outputs exist: the named parts, or all when none is named",
    )
    parser.add_argument("--skip-train", action="store_true", help="evaluate what exists")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="a sentence added under the tables")
    parser.add_argument(
        "--combiner-out", type=Path, default=COMBINER, help="where the frozen-CLIP Combiner goes"
    )
    parser.add_argument(
        "--work", type=Path, default=WORK, help="stage-1 model, checkpoints, train data"
    )
    args = parser.parse_args()
    globals().update(COMBINER=args.combiner_out, WORK=args.work)  # one run, one set of paths
    torch.set_num_threads(args.threads)
    body = []
    if not args.cost_only:
        body.append(quality_section(args))
    body += [
        "",
        f"**Cost of one composed query on CPU** (1 thread, median of {args.repeats}): text "
        f"encoding + composition + exact inner-product search (FAISS flat) over {INDEX_SIZE:,} "
        "synthetic normalised vectors, top 50, relative to the bare text-encoder forward.",
        "",
        cost_table(args),
    ]
    if args.note:
        body += ["", f"Note: {args.note}"]
    text = "\n".join(body)
    print(text)
    if not args.no_report:
        write_section("composed", "Composed retrieval on Shapes: Combiner vs baselines", text)


def wants(args, part: str) -> bool:
    """True when --retrain names this part (or names none, meaning all)."""
    return args.retrain is not None and (not args.retrain or part in args.retrain)


def train_missing(args, backbone, stage1_dir: Path, stage1_combiner: Path) -> None:
    """Train what is asked for, missing or stale; each artifact records its own training time."""
    if args.skip_train:
        return
    trained = (COMBINER / "combiner_config.json").is_file()
    if wants(args, "frozen") or not trained or _stale(COMBINER, backbone):
        stage2(backbone, training_root(args, args.train_sets), args, COMBINER, args.combiner_steps)
    if wants(args, "stage1") or _stage1_stale(stage1_dir, backbone):
        shutil.rmtree(WORK / "stage1-checkpoints", ignore_errors=True)
        stage1(backbone, training_root(args, args.stage1_train_sets), args, stage1_dir)
        base = {"model": str(args.model), "fingerprint": model_fingerprint(backbone)}
        (stage1_dir / "base.json").write_text(json.dumps(base))
        shutil.rmtree(stage1_combiner, ignore_errors=True)
    if stage1_dir.is_dir() and not stage1_combiner.is_dir():
        root = training_root(args, args.stage1_train_sets)
        tuned = load_backbone(str(stage1_dir))
        stage2(tuned, root, args, stage1_combiner, args.stage1_combiner_steps)


def quality_section(args) -> str:
    backbone = load_backbone(str(args.model))
    stage1_dir, stage1_combiner = WORK / "stage1-clip", WORK / "stage1-combiner"
    train_missing(args, backbone, stage1_dir, stage1_combiner)
    tuned = load_backbone(str(stage1_dir)) if stage1_dir.is_dir() else None
    test = read_cirr(args.data, "test")
    composers = {
        "image only": image_only_composer,
        "text only": text_only_composer,
        "sum (frozen CLIP)": sum_composer,
        "Combiner (frozen CLIP)": combiner_composer(str(COMBINER)),
    }
    zero_shot = zero_shot_row(backbone)
    composers["zero-shot (textual inversion)"] = zero_shot
    ranks = {}
    results = evaluate(backbone, {k: v for k, v in composers.items() if v is not None}, test, ranks)
    if tuned is not None:
        stage1_composers = {"sum (stage-1 CLIP)": sum_composer}
        if stage1_combiner.is_dir():
            stage1_composers["Combiner (stage-1 CLIP)"] = combiner_composer(str(stage1_combiner))
        results.update(evaluate(tuned, stage1_composers, test, ranks))
    rows = []
    order = [
        "image only",
        "text only",
        "sum (frozen CLIP)",
        "Combiner (frozen CLIP)",
        "sum (stage-1 CLIP)",
        "Combiner (stage-1 CLIP)",
        "zero-shot (textual inversion)",
    ]
    for name in order:
        if name in results:
            rows.append([name] + [results[name][key] for key in COLUMNS])
        else:
            rows.append([name] + ["not available"] + [""] * (len(COLUMNS) - 1))
    best = max(("image only", "text only", "sum (frozen CLIP)"), key=lambda k: results[k]["R@1"])
    baseline = results[best]["R@1"]
    lines = [
        f"Shapes **test** split (held out; scenes disjoint from training): {len(test.queries)} "
        f"triplets, gallery of {len(test.gallery)} images, CIRR protocol (reference removed; "
        "Rs@K within the 5 other images of the reference's set; mean = mean of the 7 metrics). "
        f"Backbone `{args.model.name}`. All numbers in %.",
        "",
        markdown_table(["query", *COLUMNS], rows),
        "",
        f"Best training-free baseline (image-only / text-only / sum on the frozen CLIP): R@1 "
        f"{baseline:.1f} ({best}). Target: the Combiner beats it by >= 10 points. In brackets: "
        "bootstrap 95% interval of the gain, paired over the test queries (10,000 resamples).",
        *gain_lines(results, ranks, best),
        "",
        combiner_line("frozen CLIP", COMBINER),
    ]
    if tuned is not None:
        lines += stage1_lines(stage1_dir, stage1_combiner)
    if zero_shot is None:
        lines.append(
            "Zero-shot row: precomputed/shapes-phi is not shipped yet; rerun this script once it is."
        )
    return "\n".join(lines)


def r1_gain(ranks: dict, method: str, baseline: str) -> str:
    """'+x.x points (+low to +high)': R@1 gain with its paired bootstrap interval."""
    gain, low, high = recall_gain(ranks[method], ranks[baseline], 1)
    return f"{gain:+.1f} points ({low:+.1f} to {high:+.1f})"


def gain_lines(results: dict, ranks: dict, best: str) -> list[str]:
    lines = []
    for backbone in ("frozen CLIP", "stage-1 CLIP"):
        name = f"Combiner ({backbone})"
        if name in results:
            verdict = "met" if results[name]["R@1"] - results[best]["R@1"] >= 10 else "NOT met"
            lines.append(f"- {name}: **{r1_gain(ranks, name, best)}** ({verdict}).")
    if "Combiner (stage-1 CLIP)" in results and "sum (stage-1 CLIP)" in results:
        extra = r1_gain(ranks, "Combiner (stage-1 CLIP)", "sum (stage-1 CLIP)")
        lines.append(
            f"- On the same stage-1 CLIP, the Combiner adds {extra} R@1 over the sum "
            "(stage 1 itself is part of the CLIP4Cir method, so this is an ablation, not a baseline)."
        )
    return lines


def time_taken(record: dict) -> str:
    """' N s on DEVICE with T thread(s)', from what the training functions save."""
    return (
        f" {record['seconds']:.0f} s on {record.get('device', 'cpu')} with "
        f"{record.get('threads', '?')} thread(s)"
    )


def combiner_line(label: str, directory: Path) -> str:
    info = load_combiner(directory).config.training
    took = ", trained in" + time_taken(info) if "seconds" in info else ""
    return (
        f"Combiner on the {label} (stage 2): {info.get('train_queries')} train triplets, "
        f"{info.get('steps')} steps of batch {info.get('batch_size')}, Adam lr {info.get('lr')}, "
        f"best val mean at step {info.get('best_step')}{took}."
    )


def stage1_lines(stage1_dir: Path, stage1_combiner: Path) -> list[str]:
    report = json.loads((stage1_dir / "stage1.json").read_text())
    config = report["config"]
    took = "," + time_taken(report) if "seconds" in report else ""
    lines = [
        f"Stage 1: {config['steps']} steps of batch {config['batch_size']}, AdamW lr "
        f"{config['lr']}, towers {config['towers']}; best val mean "
        f"{report['best_metrics'].get('mean', float('nan')):.2f} at step {report['best_step']}{took}."
    ]
    if stage1_combiner.is_dir():
        lines.append(combiner_line("stage-1 CLIP", stage1_combiner))
    return lines


def _stage1_stale(stage1_dir: Path, backbone) -> bool:
    """The stage-1 CLIP must be fine-tuned again when the base model's weights changed."""
    base = stage1_dir / "base.json"
    if not (stage1_dir / "open_clip_config.json").is_file() or not base.is_file():
        return True
    recorded = json.loads(base.read_text())["fingerprint"]
    return not fingerprint_matches(recorded, backbone)


def _stale(combiner_dir: Path, backbone) -> bool:
    """A shipped Combiner trained on other backbone weights must be retrained."""
    config = load_combiner(combiner_dir).config
    return config.dim != backbone.dim or not fingerprint_matches(config.model_fingerprint, backbone)


if __name__ == "__main__":
    main()
