"""Flat vs HNSW vs IVF-PQ at 1M clustered 512-d vectors: latency, recall@10, bytes/vector, build time.

Structures are built by the project's own `retrieval.index.build_faiss`, written with
`faiss.write_index` and read back the way `Index.load` reads them (memory-mapped), so the numbers
are those of a served index. Recall@10 is measured against exact (flat) search.

    python -m bench.index_benchmark                       # 1M vectors (several minutes)
    python -m bench.index_benchmark --count 100000 --hnsw-m 32 --hnsw-ef-construction 80
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.report import write_section
from retrieval.eval.report import markdown_table
from retrieval.index import HNSW_DEFAULTS, IVF_DEFAULTS, build_faiss, exact_search, rerank_exact

DIM = 512
K = 10


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


def single_query_latency(search, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """p50, p95 in ms of one query at a time (what a user request does) and the positions."""
    search(queries[:1])
    times, found = [], []
    for query in queries:
        start = time.perf_counter()
        found.append(search(query[None]))
        times.append(time.perf_counter() - start)
    return (
        float(np.percentile(times, 50)) * 1000,
        float(np.percentile(times, 95)) * 1000,
        np.vstack(found),
    )


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


def measure_ann(name, params, search_params, vectors, queries, truth, workdir, count) -> list[list]:
    """Build with build_faiss, write, mmap-read like Index.load, then time each search setting."""
    start = time.perf_counter()
    built = build_faiss(vectors, name, params)
    build_s = time.perf_counter() - start
    path = workdir / f"{name}.faiss"
    faiss.write_index(built, str(path))
    del built
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    ann_bytes = path.stat().st_size / count
    rows = []
    for setting in search_params:
        knobs = dict(setting)
        if name == "hnsw":
            index.hnsw.efSearch = knobs["ef_search"]
        else:
            index.nprobe = knobs["nprobe"]
        search = reranked(index, vectors, knobs.get("rerank", 0))
        p50, p95, found = single_query_latency(search, queries)
        shown = ", ".join(f"{k}={v}" for k, v in knobs.items())
        rows.append(
            [
                f"{name} ({', '.join(f'{k}={v}' for k, v in params.items())}; {shown})",
                p50,
                p95,
                recall_at_k(found, truth),
                f"{ann_bytes:.0f} (+{DIM * 4} vectors.npy)",
                f"{build_s:.0f}",
            ]
        )
        print(rows[-1], load(), flush=True)
    path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-queries", type=int, default=50)
    parser.add_argument("--hnsw-m", type=int, default=HNSW_DEFAULTS["m"])
    parser.add_argument(
        "--hnsw-ef-construction", type=int, default=HNSW_DEFAULTS["ef_construction"]
    )
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--rerank", type=int, nargs="+", default=[0, IVF_DEFAULTS["rerank"]],
        help="IVF-PQ candidates re-scored exactly on the vectors (0: the codes' own ranking)",
    )  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=["hnsw", "ivfpq"])
    args = parser.parse_args()
    started, load_start = time.perf_counter(), load()
    workdir = Path(tempfile.mkdtemp(prefix="sr-ann-"))
    try:
        vectors, _ = clustered_vectors(args.count, args.clusters, seed=1)
        queries, _ = clustered_vectors(args.queries, args.clusters, seed=2)
        generate_s = time.perf_counter() - started
        start = time.perf_counter()
        _, truth = faiss.knn(queries, vectors, K, faiss.METRIC_INNER_PRODUCT)
        truth_s = time.perf_counter() - start
        np.save(workdir / "vectors.npy", vectors)
        flat_bytes = (workdir / "vectors.npy").stat().st_size / args.count
        flat_queries = queries[: args.flat_queries]
        rows = []
        for label, search in (
            (
                "flat, faiss.knn (Index.search before exact_search)",
                lambda q: faiss.knn(q, vectors, K, faiss.METRIC_INNER_PRODUCT)[1][0],
            ),
            ("flat, exact_search (Index.search now)", lambda q: exact_search(q, vectors, K)[1][0]),
        ):
            p50, p95, found = single_query_latency(search, flat_queries)
            recall = recall_at_k(found, truth[: args.flat_queries])
            rows.append([label, p50, p95, recall, f"{flat_bytes:.0f}", "0"])
            print(rows[-1], load(), flush=True)
        if "hnsw" not in args.skip:
            params = {"m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction}
            rows += measure_ann(
                "hnsw",
                params,
                [(("ef_search", v),) for v in args.ef_search],
                vectors,
                queries,
                truth,
                workdir,
                args.count,
            )
        if "ivfpq" not in args.skip:
            params = {"nlist": args.nlist, "m": args.pq_m}
            rows += measure_ann(
                "ivfpq",
                params,
                [(("nprobe", v), ("rerank", r)) for v in args.nprobe for r in args.rerank],
                vectors,
                queries,
                truth,
                workdir,
                args.count,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total_min = (time.perf_counter() - started) / 60
    table = markdown_table(
        ["index", "p50 ms", "p95 ms", f"recall@{K} vs flat", "bytes/vector on disk", "build s"],
        rows,
    )
    body = f"""
{args.count:,} normalised {DIM}-d vectors in {args.clusters} clusters (each spread along its own
32-d subspace + isotropic noise), generated in {generate_s:.0f} s; {args.queries} held-out queries
from the same distribution, one query at a time, k={K} (flat: the first {args.flat_queries}).
Ground truth: exact inner-product search ({truth_s:.0f} s batched). HNSW and IVF-PQ are built by
`retrieval.index.build_faiss` and searched after `faiss.read_index(..., IO_FLAG_MMAP)` as in
`Index.load`. IVF-PQ: 8-bit codes, training sample max(40 x nlist, 10,000); rerank=N re-scores\nits top N candidates exactly on the vectors (`Index.search`'s default is {IVF_DEFAULTS["rerank"]}).
"bytes/vector on disk" is the FAISS file; every index version also keeps `vectors.npy`
({DIM * 4} bytes/vector), which flat search uses directly. {faiss.omp_get_max_threads()} FAISS
threads, {os.cpu_count()} cores shared with other jobs: load avg {load_start} at start,
{load()} at the end (1/5/15 min); total {total_min:.1f} min.

{table}
"""
    write_section("ann-indexes", f"Flat vs HNSW vs IVF-PQ at {args.count:,} vectors (CPU)", body)
    print(body)


if __name__ == "__main__":
    main()
