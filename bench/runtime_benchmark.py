"""Runtimes on a CPU: PyTorch fp32 against ONNX Runtime fp32 and int8, all measured in one run.

1. Encoders (ViT-B-32, random weights): image and text forward at batch 1 and 32, 1 and 2 threads,
   and the lowest cosine of each runtime's embeddings to PyTorch's.
2. Indexing pipeline (`build_index` over generated JPEGs) with each runtime: target onnx-int8 >= 2x.
3. One text query end to end (tokenise + encode + search 100k): target onnx-int8 >= 2x.
4. Quality on the Shapes test split with the shipped model: text -> image R@1/R@10 and the
   Combiner's composed R@1 per runtime, and a torch index searched with onnx-int8 queries.
5. Cold start: `python app.py` to the first answered query, and its parts.

    python -m bench.runtime_benchmark                  # everything (about 15 minutes here)
    python -m bench.runtime_benchmark --only quality
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import torch

from bench.pipeline_benchmark import QUERIES, ensure_images, fake_index, percentiles, pipeline_run
from bench.report import write_section
from retrieval.backbone import load_backbone, new_model, save_backbone
from retrieval.config import ROOT, SHAPES_MODEL_DIR, Settings
from retrieval.eval.metrics import feature_ranks, recall_at_k
from retrieval.eval.report import markdown_table
from retrieval.index import Index, build_index
from retrieval.runtime import MIN_AGREEMENT, RUNTIMES
from retrieval.search import Searcher

ARCH = "ViT-B-32"
TARGET = 2.0


def timed(call, repeats: int) -> float:
    """Median seconds of `call()` after one warm-up."""
    call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def backbones(model: str, cache: Path) -> dict:
    return {
        runtime: load_backbone(model, device="cpu", runtime=runtime, cache_dir=cache)
        for runtime in RUNTIMES
    }


# -- 1. encoders -------------------------------------------------------------------------------
def encoder_rows(model_dir: Path, cache: Path, images: list[Path]) -> list[list]:
    rows = []
    texts = (QUERIES * 4)[:32]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        loaded = backbones(str(model_dir), cache)
        pixels = torch.stack([loaded["torch"].preprocess(path) for path in images[:32]])
        tokens = loaded["torch"].tokenize(texts)
        truth = (
            loaded["torch"].encode_image_tensors(pixels),
            loaded["torch"].encode_token_ids(tokens),
        )
        reference = None
        for runtime, backbone in loaded.items():
            image1 = timed(lambda b=backbone, x=pixels: b.encode_image_tensors(x[:1]), 10)
            image32 = timed(lambda b=backbone, x=pixels: b.encode_image_tensors(x), 2)
            text1 = timed(lambda b=backbone, t=tokens: b.encode_token_ids(t[:1]), 20)
            text32 = timed(lambda b=backbone, t=tokens: b.encode_token_ids(t), 3)
            cosine = min(
                float((backbone.encode_image_tensors(pixels) * truth[0]).sum(1).min()),
                float((backbone.encode_token_ids(tokens) * truth[1]).sum(1).min()),
            )
            speeds = [image1 * 1000, 32 / image32, text1 * 1000, 32 / text32]
            reference = reference or speeds
            ratios = [reference[0] / speeds[0], speeds[1] / reference[1]]
            ratios += [reference[2] / speeds[2], speeds[3] / reference[3]]
            cells = [f"{v:.1f} ({r:.2f}x)" for v, r in zip(speeds, ratios, strict=True)]
            agreement = f"{backbone.runtime_agreement:.5f}"
            rows.append([runtime, threads, *cells, f"{cosine:.5f}", agreement])
    return rows


def export_seconds(model_dir: Path, cache: Path) -> float:
    """A first export of these weights (fp32 + int8 + agreement), in a fresh cache."""
    start = time.perf_counter()
    load_backbone(str(model_dir), device="cpu", runtime="onnx-int8", cache_dir=cache)
    return time.perf_counter() - start


# -- 2. indexing --------------------------------------------------------------------------------
def indexing_rows(model_dir: Path, cache: Path, folder: Path, count: int, workdir: Path) -> list:
    torch.set_num_threads(2)
    loaded = backbones(str(model_dir), cache)
    settings = replace(Settings.from_env(), batch_size=32)
    runs = {runtime: [] for runtime in loaded}
    for _ in range(2):  # interleaved rounds: load changes hit every runtime alike
        for runtime, backbone in loaded.items():
            runs[runtime].append(pipeline_run(backbone, folder, workdir / runtime, count, settings))
    best = {runtime: max(r["ips"] for r in rounds) for runtime, rounds in runs.items()}
    return [[runtime, f"{ips:.1f}", f"{ips / best['torch']:.2f}x"] for runtime, ips in best.items()]


# -- 3. one text query ---------------------------------------------------------------------------
def query_rows(model_dir: Path, cache: Path, items: int, workdir: Path, repeats: int) -> list:
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        loaded = backbones(str(model_dir), cache)
        searchers = {}
        for (
            runtime,
            backbone,
        ) in loaded.items():  # vectors "from" each runtime: mixing may be refused
            fake_index(workdir / f"index-{runtime}", backbone, items)
            searchers[runtime] = Searcher(
                Index.load(workdir / f"index-{runtime}", backbone), backbone
            )
        samples = {runtime: [] for runtime in searchers}
        for repeat in range(repeats):  # interleaved query by query
            for runtime, searcher in searchers.items():
                start = time.perf_counter()
                searcher.text(QUERIES[repeat % len(QUERIES)], k=10)
                samples[runtime].append(time.perf_counter() - start)
        torch_p50 = percentiles(samples["torch"])[0]
        for runtime, values in samples.items():
            p50, p95 = percentiles(values)
            rows.append([runtime, threads, f"{p50:.1f}", f"{p95:.1f}", f"{torch_p50 / p50:.2f}x"])
    return rows


# -- 4. quality -----------------------------------------------------------------------------------
def quality_rows(cache: Path) -> list[list]:
    from retrieval.catalog import Catalog, composers_for
    from retrieval.data.composed import read_cirr
    from retrieval.data.features import split_features
    from retrieval.eval.composed import evaluate_split
    from retrieval.shapes import world as shapes

    torch.set_num_threads(2)
    test = read_cirr(ROOT / "precomputed" / "shapes", "test")
    metadata = {
        row["id"]: row for row in shapes.read_metadata_rows(ROOT / "precomputed" / "shapes", "test")
    }
    names = list(test.images)
    descriptions = [metadata[name]["description"] for name in names]
    combiner = composers_for(Catalog.from_file(ROOT / "collections.json").specs["shapes"])[
        "combiner"
    ]
    loaded = backbones(str(SHAPES_MODEL_DIR), cache)
    gallery = {r: split_features(test, b, cache=False, progress=False) for r, b in loaded.items()}
    rows = []
    pairs = [(r, r) for r in RUNTIMES] + [("torch", "onnx-int8")]
    for index_runtime, query_runtime in pairs:
        features, backbone = gallery[index_runtime], loaded[query_runtime]
        texts = torch.from_numpy(backbone.encode_texts(descriptions))
        truth = torch.tensor([features[0].index(name) for name in names])
        t2i = recall_at_k(feature_ranks(texts, features[1], truth), (1, 10))
        composed = evaluate_split(test, backbone, combiner, features, progress=False).metrics
        rows.append(
            [
                index_runtime,
                query_runtime,
                f"{t2i['R@1']:.1f}",
                f"{t2i['R@10']:.1f}",
                f"{composed['R@1']:.1f}",
            ]
        )
    return rows


# -- 5. cold start ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_answer_seconds(env: dict, collection: str) -> float:
    """Seconds from starting `python app.py` to the first answered text query."""
    port = free_port()
    env = {**os.environ, **env, "SR_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}/api/collections/{collection}/search/text?q=a+red+circle&k=5"
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - start < 600:
            try:
                with urllib.request.urlopen(url, timeout=120) as response:
                    if response.status == 200 and json.load(response)["hits"]:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"no answer from {url}")
    finally:
        server.terminate()
        server.wait(timeout=30)


PARTS_SCRIPT = """
import json, sys, time
start = time.perf_counter(); marks = {}
import torch, open_clip
marks['import torch + open_clip'] = time.perf_counter()
import gradio, app
marks['import gradio + the app'] = time.perf_counter()
from retrieval import backbone as b
from retrieval.index import Index
spec, index_dir, runtime, cache = sys.argv[1:5]
b._load_cached(spec, 'cpu')
marks['model load (torch)'] = time.perf_counter()
if runtime != 'torch':
    b._towers(spec, 'cpu', runtime, cache, torch.get_num_threads())
marks['ONNX export or cache lookup + sessions'] = time.perf_counter()
backbone = b.load_backbone(spec, device='cpu', runtime=runtime, cache_dir=cache)
index = Index.load(index_dir, backbone)
marks['index load + model check'] = time.perf_counter()
from retrieval.search import Searcher
Searcher(index, backbone).text('a red circle', k=5)
marks['first query'] = time.perf_counter()
last, parts = start, {}
for name, mark in marks.items():
    parts[name] = mark - last; last = mark
print(json.dumps(parts))
"""


def cold_parts(spec: str, index_dir: Path, runtime: str, cache: Path) -> dict:
    command = [sys.executable, "-c", PARTS_SCRIPT, spec, str(index_dir), runtime, str(cache)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def vit_collection(workdir: Path, folder: Path) -> Path:
    """A ViT-B-32 collection from a local model folder, the way a museum sets one up."""
    torch.manual_seed(0)
    model, _, _ = new_model(ARCH, device="cpu")
    model_dir = save_backbone(model, ARCH, workdir / "vit-b-32")
    index_dir = workdir / "vit-index"
    build_index(folder, index_dir, load_backbone(str(model_dir), device="cpu"), progress=False)
    entry = {"name": "museum", "title": "museum", "index": str(index_dir)}
    collections = workdir / "collections.json"
    collections.write_text(json.dumps({"collections": [entry]}))
    return collections


def cold_rows(workdir: Path, folder: Path) -> tuple[list, list]:
    collections = vit_collection(workdir, folder)
    totals = []
    cases = [
        ("Shapes", "shapes", {}, "torch"),
        ("Shapes", "shapes", {}, "onnx-int8"),
        ("ViT-B-32 folder", "museum", {"SR_COLLECTIONS_FILE": str(collections)}, "torch"),
        ("ViT-B-32 folder", "museum", {"SR_COLLECTIONS_FILE": str(collections)}, "onnx-int8"),
    ]
    for label, name, env, runtime in cases:
        cache = workdir / f"cache-{name}-{runtime}"
        env = {**env, "SR_RUNTIME": runtime, "SR_CACHE_DIR": str(cache)}
        first = first_answer_seconds(env, name)
        again = first_answer_seconds(env, name)
        totals.append([label, runtime, f"{first:.1f}", f"{again:.1f}"])
    parts = []
    specs = [
        ("Shapes", str(SHAPES_MODEL_DIR), ROOT / "precomputed" / "shapes" / "index"),
        ("ViT-B-32 folder", str(workdir / "vit-b-32"), workdir / "vit-index"),
    ]
    for label, spec, index_dir in specs:
        for runtime in ("torch", "onnx-int8"):
            cache = workdir / f"parts-{label}-{runtime}"
            for when in ("first start", "cached"):
                measured = cold_parts(spec, index_dir, runtime, cache)
                parts.append([label, runtime, when, *(f"{v:.2f}" for v in measured.values())])
    return totals, parts


# -- report ------------------------------------------------------------------------------------------
def report(results: dict) -> str:
    sections = []
    if "encoders" in results:
        rows, export_s = results["encoders"]
        headers = [
            "runtime",
            "threads",
            "image b1 ms",
            "image b32 img/s",
            "text b1 ms",
            "text b32 texts/s",
            "min cosine to torch",
            "probe agreement",
        ]
        sections.append(
            f"### Encoders (ViT-B-32, random weights)\n\nMedians; in brackets the speed-up over torch "
            f"at the same thread count. A first export of ViT-B-32 (both towers, fp32 + int8, "
            f"agreement check) took {export_s:.0f} s; later starts reuse it. Min cosine: over 32 "
            f"generated photos and 32 queries; probe agreement: what the export recorded on its "
            f"probe set, which decides whether an index and queries from different runtimes may "
            f"meet (>= {MIN_AGREEMENT}).\n\n" + markdown_table(headers, rows)
        )
    if "indexing" in results:
        rows, count = results["indexing"]
        ratio = float(rows[-1][2].rstrip("x"))
        met = "met" if ratio >= TARGET else f"NOT met{why_not_met(results.get('encoders'))}"
        sections.append(
            f"### Indexing pipeline (ViT-B-32, {count} generated JPEGs, batch 32, 2 threads)\n\n"
            f"`build_index` end to end (decode in workers, forward, thumbnails, write), best of 2 "
            f"interleaved rounds. Target onnx-int8 >= {TARGET:.0f}x torch: **{met}**.\n\n"
            + markdown_table(["runtime", "images/s", "vs torch"], rows)
        )
    if "query" in results:
        rows, items = results["query"]
        sections.append(
            f"### One text query end to end (ViT-B-32, {items:,} items, flat)\n\n`Searcher.text`: "
            f"tokenise, encode, exact search, metadata; the runtimes interleaved query by query. "
            f"Target onnx-int8 >= {TARGET:.0f}x torch: **{query_met(rows)}**.\n\n"
            + markdown_table(["runtime", "threads", "p50 ms", "p95 ms", "p50 vs torch"], rows)
        )
    if "quality" in results:
        sections.append(
            "### Quality on the Shapes test split (shipped Shapes CLIP and Combiner)\n\n"
            "Text -> image with each scene's description over the test gallery; composed R@1 of the "
            "shipped Combiner (CIRR protocol). Target: onnx-int8 within 1 point of torch.\n\n"
            + markdown_table(
                ["index runtime", "query runtime", "t2i R@1", "t2i R@10", "Combiner R@1"],
                results["quality"],
            )
        )
    if "cold" in results:
        totals, parts = results["cold"]
        sections.append(
            "### Cold start\n\n`python app.py` to the first answered REST text query, in seconds; "
            "the first start has an empty cache (so onnx-int8 exports), the second reuses it. "
            "About 8 s of every start are imports (torch + open_clip, gradio), which no runtime "
            "changes; `python app.py` loads the first collection in a thread while Gradio is "
            "imported.\n\n"
            + markdown_table(["collection", "runtime", "first start", "second start"], totals)
            + "\n\nThe parts, each in a fresh process (seconds):\n\n"
            + markdown_table(
                [
                    "collection",
                    "runtime",
                    "cache",
                    "imports: torch + open_clip",
                    "imports: gradio + app",
                    "model load",
                    "ONNX export / lookup + sessions",
                    "index load",
                    "first query",
                ],
                parts,
            )
        )
    return "\n\n".join(sections)


def query_met(rows: list[list]) -> str:
    ratios = [float(row[-1].rstrip("x")) for row in rows if row[0] == "onnx-int8"]
    return "met" if min(ratios) >= TARGET else "NOT met"


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def why_not_met(encoders) -> str:
    """The reason this CPU gives, in words: int8 products gain most with VNNI (or AMX)."""
    fast = {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()
    if fast:
        return f" (this CPU has {', '.join(sorted(fast))})"
    rows = encoders[0] if encoders else []
    model_only = next((r[3].split()[-1] for r in rows if r[:2] == ["onnx-int8", 2]), "(?)")
    return (
        ": this CPU has AVX2 but no VNNI/AMX int8 instructions, so the int8 image forward at "
        f"batch 32 and 2 threads is itself only {model_only.strip('()')} PyTorch (encoder table), "
        "and decoding in the workers shares the same 2 cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["encoders", "indexing", "query", "quality", "cold"])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sr-runtime-"))
    wanted = lambda name: args.only in (None, name)  # noqa: E731
    results = {}
    try:
        folder = workdir / "photos"
        images = ensure_images(folder, args.images)
        if wanted("encoders") or wanted("indexing") or wanted("query"):
            torch.manual_seed(0)
            model, _, _ = new_model(ARCH, device="cpu")
            model_dir = save_backbone(model, ARCH, workdir / "model")
            cache = workdir / "cache"
            export_s = export_seconds(model_dir, cache)
        if wanted("encoders"):
            results["encoders"] = encoder_rows(model_dir, cache, images), export_s
        if wanted("indexing"):
            results["indexing"] = (
                indexing_rows(model_dir, cache, folder, len(images), workdir),
                len(images),
            )
        if wanted("query"):
            results["query"] = (
                query_rows(model_dir, cache, args.items, workdir, args.repeats),
                args.items,
            )
        if wanted("quality"):
            results["quality"] = quality_rows(workdir / "shapes-cache")
        if wanted("cold"):
            results["cold"] = cold_rows(workdir, folder)
        body = report(results)
        print(body)
        if args.only is None:
            write_section("runtimes", "Runtimes on a CPU: PyTorch and ONNX Runtime", body)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
