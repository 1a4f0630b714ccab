"""Flat vs HNSW vs IVF-Flat vs IVF-PQ: recall@10, single-query latency, build time, bytes/vector.

Structures are built by the project's own `retrieval.index.build_faiss`, written with
`faiss.write_index` and read back the way `Index.load` reads them (memory-mapped), so the numbers
are those of a served index. Recall@10 is measured against exact (flat) search. Three datasets:

- `blobs`: the old isotropic clusters (`clustered_vectors`), section "ann-indexes";
- `clip-like`: `bench.clip_like_vectors` (low intrinsic dimension, Zipf-popular concepts),
  section "ann-scale-clip-like";
- `clip-like-diverse`: the same generator's `DIVERSE` stress case (neighbours farther apart, a
  higher local dimension), section "ann-scale-clip-like-diverse";
- `shapes`: the shipped Shapes CLIP's embeddings of rendered scenes (`bench.shapes_vectors`, made
  beforehand), section "ann-scale-shapes".

    python -m bench.index_benchmark --count 100000 --clusters 200 --nlist 256
    python -m bench.index_benchmark --data clip-like --count 1000000 --cache runs/ann-cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from bench.report import write_section
from retrieval.eval.report import markdown_table
from retrieval.index import (
    HNSW_DEFAULTS,
    IVF_DEFAULTS,
    RECALL_TARGET,
    Index,
    build_faiss,
    default_nlist,
    exact_search,
    rerank_exact,
    search_settings,
    tune_search,
)

DIM = 512
K = 10
TARGET_RECALL, TARGET_P50_MS = RECALL_TARGET, 5.0
SECTIONS = {
    "blobs": "ann-indexes",
    "clip-like": "ann-scale-clip-like",
    "clip-like-diverse": "ann-scale-clip-like-diverse",
    "shapes": "ann-scale-shapes",
}


def load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def clustered_vectors(
    count: int, clusters: int, seed: int, centres_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised vectors around `clusters` centres, each cluster spread along its own 32-d
    subspace plus a little isotropic noise: neighbourhoods with structure, like real embeddings."""
    centres_rng = np.random.default_rng(centres_seed)
    centres = centres_rng.standard_normal((clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = centres_rng.standard_normal((clusters, 32, DIM), dtype=np.float32) / np.sqrt(32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, count)
    vectors = np.empty((count, DIM), np.float32)
    for cluster in range(clusters):
        rows = np.flatnonzero(labels == cluster)
        latent = rng.standard_normal((len(rows), 32), dtype=np.float32) * 0.6
        noise = rng.standard_normal((len(rows), DIM), dtype=np.float32) * (0.3 / np.sqrt(DIM))
        vectors[rows] = centres[cluster] + latent @ bases[cluster] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels


def dataset(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(collection, held-out queries from the same distribution, description)."""
    if args.data == "blobs":
        return (
            clustered_vectors(args.count, args.clusters, seed=1)[0],
            clustered_vectors(args.queries, args.clusters, seed=2)[0],
            f"normalised {DIM}-d vectors in {args.clusters} clusters (each spread along its own "
            "32-d subspace + isotropic noise)",
        )
    if args.data.startswith("clip-like"):
        from bench.clip_like_vectors import DIVERSE, ClipLike, clip_like_vectors

        spec = DIVERSE if args.data == "clip-like-diverse" else ClipLike()
        return (
            clip_like_vectors(args.count, seed=0, spec=spec),
            clip_like_vectors(args.queries, seed=1, spec=spec),
            f"CLIP-like vectors (`bench.clip_like_vectors`, {spec})",
        )
    from bench.shapes_vectors import MODEL, shapes_vectors

    return (
        shapes_vectors(args.count, seed=0, embed=False),
        shapes_vectors(args.queries, seed=1, embed=False),
        f"embeddings by the shipped Shapes CLIP (precomputed/{MODEL.name}) of freshly rendered "
        "random Shapes scenes (`bench.shapes_vectors`; queries: other scenes rendered the same way)",
    )


def single_query_latency(search, queries: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """p50 and p95 wall ms and p50 CPU ms (this thread's own time: what other jobs on a shared
    machine cannot inflate) of one query at a time, as a user request runs, and the positions."""
    search(queries[:1])
    wall, cpu, found = [], [], []
    for query in queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        found.append(search(query[None]))
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    p50, p95 = (float(np.percentile(wall, q)) * 1000 for q in (50, 95))
    return p50, p95, float(np.percentile(cpu, 50)) * 1000, np.vstack(found)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth, strict=True)])
    )


def reranked(index, vectors: np.ndarray, rerank: int):
    """One query's top K: the index's own ranking, or its top `rerank` re-scored exactly, as
    `Index.search` does for IVF-PQ."""
    if not rerank:
        return lambda q: index.search(q, K)[1][0]
    return lambda q: rerank_exact(q, vectors, index.search(q, max(K, rerank))[1], K)[1][0]


def fingerprint(vectors: np.ndarray) -> str:
    """Names a cached structure after the data it was built from (any change: a new build)."""
    digest = hashlib.sha1(np.ascontiguousarray(vectors[:: max(1, len(vectors) // 1000)]).data)
    return f"{len(vectors)}x{vectors.shape[1]}-{digest.hexdigest()[:10]}"


def built_index(name: str, params: dict, vectors: np.ndarray, workdir: Path, keep: bool):
    """The FAISS file build_faiss makes for these vectors, and its build wall/CPU seconds: read
    from `workdir` when a previous run kept it there, else built (and kept when `keep`)."""
    label = "-".join(f"{key}{value}" for key, value in params.items()) or "defaults"
    path = workdir / f"{name}-{label}-{fingerprint(vectors)}.faiss"
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file():
        return path, json.loads(record.read_text())
    start, start_cpu = time.perf_counter(), time.process_time()
    built = build_faiss(vectors, name, params)
    cost = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu}
    faiss.write_index(built, str(path))
    if keep:
        record.write_text(json.dumps(cost))
    return path, cost


def measure_ann(name, params, settings, data, workdir, keep) -> list[list]:
    """Build (or reuse), mmap-read like Index.load, then time each search setting."""
    vectors, queries, truth = data
    path, cost = built_index(name, params, vectors, workdir, keep)
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    shown_params = ", ".join(f"{k}={v}" for k, v in params.items()) or "library defaults"
    if name != "hnsw":
        shown_params += f" (nlist={faiss.extract_index_ivf(index).nlist})"
    picked = build_pick(name, params, index, vectors)
    rows = []
    for knobs in settings + ([] if picked in settings else [picked]):
        if name == "hnsw":
            index.hnsw.efSearch = knobs["ef_search"]
        else:
            faiss.extract_index_ivf(index).nprobe = knobs["nprobe"]
        p50, p95, cpu50, found = single_query_latency(
            reranked(index, vectors, knobs.get("rerank", 0)), queries
        )
        shown = ", ".join(f"{k}={v}" for k, v in knobs.items())
        mark = " (default)" if knobs == picked else ""
        bytes_per = path.stat().st_size / len(vectors)
        build = f"{cost['wall_s']:.0f} / {cost['cpu_s']:.0f}"
        rows.append([name, shown_params, shown + mark, recall_at_k(found, truth), p50, p95, cpu50])
        rows[-1] += [build, f"{bytes_per:.0f}"]
        print(rows[-1], load(), flush=True)
    if not keep:
        path.unlink()
    return rows


def build_pick(name: str, params: dict, ann: faiss.Index, vectors: np.ndarray) -> dict:
    """The search setting a collection build gives this structure: `tune_search` on its own items."""
    manifest = {"index_type": name, "index_params": params, "dim": vectors.shape[1]}
    items = [{"id": str(n)} for n in range(len(vectors))]
    return tune_search(Index(Path("."), manifest, items, vectors, ann))["search"]


def flat_rows(vectors, queries, truth, flat_queries: int) -> list[list]:
    """Exact search one query at a time: `Index.search` for flat collections, the reference."""
    rows = []
    search = lambda q: exact_search(q, vectors, K)[1][0]  # noqa: E731
    p50, p95, cpu50, found = single_query_latency(search, queries[:flat_queries])
    recall = recall_at_k(found, truth[:flat_queries])
    bytes_per = f"0 (+{vectors.shape[1] * 4} vectors.npy)"
    rows.append(["flat", "exact_search", "-", recall, p50, p95, cpu50, "0 / 0", bytes_per])
    print(rows[-1], load(), flush=True)
    return rows


def ann_plan(args, count: int) -> list[tuple[str, dict, list[dict]]]:
    """(type, build params, search settings) to measure; nlist 0 means the library's default."""
    plan = []
    if "hnsw" not in args.skip:
        params = {"m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction}
        plan.append(("hnsw", params, [{"ef_search": v} for v in args.ef_search]))
    for nlist in [] if "ivfflat" in args.skip else args.ivfflat_nlist:
        probes = _probes(args.ivfflat_nprobe, nlist or default_nlist(count))
        plan.append(("ivfflat", {"nlist": nlist} if nlist else {}, [{"nprobe": p} for p in probes]))
    if "ivfpq" not in args.skip:
        params = {**({"nlist": args.nlist} if args.nlist else {}), "m": args.pq_m}
        probes = _probes(args.nprobe, args.nlist or default_nlist(count))
        plan.append(
            ("ivfpq", params, [{"nprobe": p, "rerank": r} for p in probes for r in args.rerank])
        )
    return plan


def _probes(asked: list[int], nlist: int) -> list[int]:
    """The asked nprobe values that fit nlist, plus the library's default for this nlist."""
    default = search_settings("ivfflat", {"nlist": nlist})["nprobe"]
    return sorted({p for p in asked if p <= nlist} | {min(default, nlist)})


def target_note(rows: list[list]) -> str:
    """Which settings meet recall@10 >= 0.95 at p50 <= 5 ms, on wall and on CPU time."""
    lines = []
    for column, clock in ((4, "wall"), (6, "CPU")):
        meeting = [row for row in rows if row[3] >= TARGET_RECALL and row[column] <= TARGET_P50_MS]
        best = min(meeting, key=lambda row: row[column], default=None)
        lines.append(
            f"- {clock} p50: "
            + (
                f"met by {len(meeting)} settings; fastest {best[0]} ({best[1]}; {best[2]}): "
                f"recall {best[3]:.3f} at {best[column]:.2f} ms"
                if best
                else "not met by any setting"
            )
        )
    return "\n".join(lines)


def shapes_note(count: int) -> str:
    """What the real vectors cost to make, from the rate the cached chunks measured."""
    from bench.shapes_vectors import measured_rate

    rate = measured_rate()
    cost = (
        f"Rendering + embedding ran at {rate['per_cpu_s']:.0f} images per CPU second "
        f"({rate['per_wall_s']:.0f} per wall second per process) over {rate['images']:,} images: "
        f"{count / rate['per_cpu_s'] / 60:.0f} CPU minutes for these {count:,}."
    )
    if count >= 1_000_000:
        return (
            f"{cost} The Shapes CLIP's embeddings are 128-d, not the 512-d of the target: a "
            "quarter of the bytes per vector and of the distance cost; the 512-d CLIP-like "
            "table is the one at the target's width."
        )
    return f"{cost} For 1M, see the CLIP-like table, tuned to these statistics (`ann-data`)."


def save_results(workdir: Path, data: str, count: int, rows: list[list]) -> None:
    """Keep this run's rows beside the cached structures, for the trend across counts."""
    (workdir / f"results-{data}-{count}.json").write_text(json.dumps(rows))


def trend_table(workdir: Path, data: str, count: int, rows: list[list]) -> str:
    """recall@10 and CPU p50 of each setting at every count a cached run measured on this data
    (the library's nlist grows with the count: rows match on the asked parameters)."""
    runs = {int(path.stem.rsplit("-", 1)[1]): json.loads(path.read_text())
            for path in workdir.glob(f"results-{data}-*.json")}  # fmt: skip
    runs[count] = rows
    if len(runs) < 2:
        return ""
    counts = sorted(runs)
    measured = {n: {_setting(row): row for row in runs[n]} for n in counts}
    table = []
    for key in measured[count]:
        cells = [measured[n].get(key) for n in counts]
        table.append([*key, *[f"{c[3]:.3f} / {c[6]:.2f}" if c else "-" for c in cells]])
    header = ["index", "build params", "search", *[f"{n:,}: recall / CPU ms" for n in counts]]
    first, last = measured[counts[0]], measured[count]
    return (
        f"Trend across the counts measured on this data. {trend_summary(first, last, rows)}\n\n"
        + markdown_table(header, table)
    )


def trend_summary(first: dict, last: dict, rows: list[list]) -> str:
    """Flat and each library default, smallest count against this run, in words."""
    defaults = [row for row in rows if row[0] == "flat" or row[2].endswith("(default)")]
    parts = []
    for row in defaults:
        key, before = _setting(row), first.get(_setting(row))
        if before is not None and "nlist=" not in key[1]:
            label = f"{key[0]} ({key[2]})" if key[2] != "-" else key[0]
            parts.append(
                f"{label} recall {before[3]:.3f} -> {row[3]:.3f}, "
                f"CPU p50 {before[6]:.2f} -> {row[6]:.2f} ms"
            )
    return "At the library defaults: " + "; ".join(parts) + "." if parts else ""


def _setting(row: list) -> tuple[str, str, str]:
    return row[0], row[1].split(" (nlist")[0], row[2].replace(" (default)", "")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(SECTIONS), default="blobs")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=1000, help="blobs only")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads (1: a request)")
    parser.add_argument("--hnsw-m", type=int, default=HNSW_DEFAULTS["m"])
    parser.add_argument("--hnsw-ef-construction", type=int, default=HNSW_DEFAULTS["ef_construction"])  # fmt: skip
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--ivfflat-nlist", type=int, nargs="+", default=[0], help="0: default")
    parser.add_argument("--ivfflat-nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--nlist", type=int, default=1024, help="IVF-PQ; 0: the default")
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--rerank", type=int, nargs="+", default=[0, IVF_DEFAULTS["rerank"]],
        help="IVF-PQ candidates re-scored exactly on the vectors (0: the codes' own ranking)",
    )  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=["hnsw", "ivfflat", "ivfpq"])
    parser.add_argument("--stats", action="store_true", help="neighbour statistics of the data")
    parser.add_argument("--cache", type=Path, help="keep built structures here between runs")
    parser.add_argument("--section", help="BENCHMARKS.md section (default: one per dataset)")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS (exact_search, re-ranking) too
    started, load_start = time.perf_counter(), load()
    workdir = args.cache or Path(tempfile.mkdtemp(prefix="sr-ann-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        vectors, queries, described = dataset(args)
        generate_s = time.perf_counter() - started
        start = time.perf_counter()
        _, truth = faiss.knn(queries, vectors, K, faiss.METRIC_INNER_PRODUCT)
        truth_s = time.perf_counter() - start
        stats = data_statistics(vectors) if args.stats else ""
        rows = flat_rows(vectors, queries, truth, args.flat_queries)
        for name, params, settings in ann_plan(args, len(vectors)):
            data = (vectors, queries, truth)
            rows += measure_ann(name, params, settings, data, workdir, args.cache is not None)
    finally:
        if args.cache is None:
            shutil.rmtree(workdir, ignore_errors=True)
    timing = dict(generate_s=generate_s, truth_s=truth_s, load_start=load_start, started=started)
    trend = trend_table(args.cache, args.data, len(vectors), rows) if args.cache else ""
    if args.cache:
        save_results(args.cache, args.data, len(vectors), rows)
    body = section_body(args, vectors, described, stats, rows, timing) + f"\n{trend}\n"
    if not args.no_write:
        kinds = {"hnsw": "HNSW", "ivfflat": "IVF-Flat", "ivfpq": "IVF-PQ"}
        measured = " vs ".join(["Flat", *[kinds[k] for k in kinds if k not in args.skip]])
        title = f"{measured}, {len(vectors):,} {args.data} vectors (CPU)"
        write_section(args.section or SECTIONS[args.data], title, body)
    print(body)


def data_statistics(vectors: np.ndarray) -> str:
    from bench.clip_like_vectors import neighbour_statistics

    stats = neighbour_statistics(vectors, sample=500)
    return (
        f"Neighbour statistics of this collection (500 sampled items): random-pair cosine "
        f"{stats['random pair']:.3f}; 1st / 10th / 100th neighbour cosine {stats['1st']:.3f} / "
        f"{stats['10th']:.3f} / {stats['100th']:.3f}; local intrinsic dimension (MLE, k=20) "
        f"{stats['LID mean']:.1f} mean, {stats['LID median']:.1f} median."
    )


def section_body(args, vectors, described, stats, rows, timing) -> str:
    count, dim = vectors.shape
    table = markdown_table(
        ["index", "build params", "search", f"recall@{K}", "p50 ms", "p95 ms", "CPU p50 ms"]
        + ["build s (wall / CPU)", "FAISS bytes/vector"],
        rows,
    )
    total_min = (time.perf_counter() - timing["started"]) / 60
    real = f"\n\n{shapes_note(count)}" if args.data == "shapes" else ""
    return f"""
{count:,} {dim}-d {described}, loaded or generated in {timing["generate_s"]:.0f} s;
{args.queries} held-out queries, one query at a time, k={K} (flat: the first
{args.flat_queries}). Ground truth: exact inner-product search ({timing["truth_s"]:.0f} s batched).
{stats}

Every ANN structure is built by `retrieval.index.build_faiss` (library defaults unless the build
params say otherwise) and searched after `faiss.read_index(..., IO_FLAG_MMAP)` as in `Index.load`;
"(default)" marks the setting a collection build picks for this data: `tune_search` starts at
ef_search 64 / nprobe 16 and doubles it until recall@10 on 200 of the collection's own items
reaches 0.95.
IVF-PQ: 8-bit codes, rerank=N re-scores its top N candidates exactly on the vectors, as
`Index.search` does. "FAISS bytes/vector" is the index file; every index version also keeps
`vectors.npy` ({dim * 4} bytes/vector; flat search and re-ranking read it). CPU p50: the
searching thread's own CPU time (what other jobs cannot inflate). {args.threads} FAISS/BLAS
thread(s), {os.cpu_count()} cores shared with other jobs (niceness {os.nice(0)}): load avg
{timing["load_start"]} at start, {load()} at the end (1/5/15 min); total {total_min:.1f} min.
Builds read back from a cache (`--cache`) report the seconds of the run that built them.

Target recall@{K} >= {TARGET_RECALL} at p50 <= {TARGET_P50_MS:.0f} ms, one query at a time:
{target_note(rows)}{real}

{table}
"""


if __name__ == "__main__":
    main()
