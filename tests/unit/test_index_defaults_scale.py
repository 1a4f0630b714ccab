"""ANN defaults that keep recall as a collection grows (issue #17, part 2): IVF-Flat as an index
type, an nprobe that grows with nlist, what the manifest records, and the benchmark data's
statistics (a generator and an estimator that the benchmark's claims rest on)."""

import faiss
import numpy as np
import pytest

from bench.clip_like_vectors import (
    ClipLike,
    clip_like_vectors,
    local_intrinsic_dimension,
    neighbour_statistics,
)
from retrieval.errors import BadInput
from retrieval.index import (
    Index,
    SearchEffort,
    build_faiss,
    choose_index_type,
    default_nlist,
    default_nprobe,
    exact_search,
    search_settings,
    write_version,
)

DIM = 64
SPEC = ClipLike(dim=DIM)


def manifest(**fields) -> dict:
    base = {"format": 1, "model_spec": "x", "dim": DIM, "preprocessing": "standard"}
    return {**base, "index_type": "flat", "index_params": {}, **fields}


def written(tmp_path, vectors, name="index", **fields) -> Index:
    items = [{"id": str(n)} for n in range(len(vectors))]
    layout = np.zeros((len(vectors), 2), np.float32)  # a given map: no layout to draw
    return write_version(tmp_path / name, manifest(**fields), items, vectors, layout)


def recall(index, queries, effort=SearchEffort(), k=10) -> float:
    _, truth = exact_search(queries, index.vectors, k)
    _, found = index.search(queries, k, effort=effort)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found, strict=True)]))


@pytest.fixture(scope="module")
def collection():
    """3,000 CLIP-like items and 100 held-out queries drawn from the same concepts."""
    return clip_like_vectors(3000, seed=0, spec=SPEC), clip_like_vectors(100, seed=1, spec=SPEC)


def test_nprobe_grows_with_nlist_so_big_indexes_probe_the_same_share():
    assert [default_nprobe(n) for n in (8, 64, 1024, 4096)] == [16, 16, 64, 256]
    assert [default_nlist(n) for n in (0, 3000, 1_000_000, 10**8)] == [1, 219, 4000, 4096]
    assert search_settings("ivfpq", {}, 1_000_000) == {"nprobe": 250, "rerank": 100}
    assert search_settings("ivfflat", {}, 100_000) == {"nprobe": 79}  # nlist 1264
    assert search_settings("ivfflat", {"nlist": 2048}, 10) == {"nprobe": 128}
    assert search_settings("ivfpq", {"nlist": 2048, "nprobe": 7, "rerank": 0}, 10) == {
        "nprobe": 7,
        "rerank": 0,
    }


def test_ivfflat_is_an_index_type_with_exact_scores_in_its_lists(collection):
    vectors, queries = collection
    assert choose_index_type("ivfflat", 5) == "ivfflat"
    ivf = build_faiss(vectors, "ivfflat", {"nlist": 16})
    assert isinstance(ivf, faiss.IndexIVFFlat) and (ivf.nlist, ivf.ntotal) == (16, 3000)
    ivf.nprobe = 16  # every list: the same answer as exact search, scores included
    scores, positions = ivf.search(queries, 10)
    exact_scores, exact_positions = exact_search(queries, vectors, 10)
    assert np.allclose(scores, exact_scores, atol=1e-5)
    assert (
        np.mean([set(a) == set(b) for a, b in zip(positions, exact_positions, strict=True)]) > 0.95
    )
    with pytest.raises(BadInput, match="IVF-Flat needs at least 16 vectors to train"):
        build_faiss(vectors[:15], "ivfflat", {"nlist": 16})


def test_an_ivfflat_collection_records_its_recall_and_takes_per_query_nprobe(tmp_path, collection):
    vectors, queries = collection
    index = written(tmp_path, vectors, index_type="ivfflat")
    assert faiss.extract_index_ivf(index.ann).nprobe == 16
    recorded = index.manifest["recall"]
    assert recorded["search"] == {"nprobe": 16} and not recorded["exact"]
    assert recorded["value"] >= 0.95 and recall(index, queries) >= 0.95
    assert recall(index, queries, SearchEffort(nprobe=219)) == 1.0  # every list probed
    assert recall(index, queries, SearchEffort(nprobe=1)) < recall(index, queries)
    assert index.effort_notes(SearchEffort(nprobe=4)) == []
    assert index.effort_notes(SearchEffort(ef_search=4)) == [
        "ef_search was ignored: it tunes hnsw indexes and this collection's index is ivfflat"
    ]


def test_a_large_nlist_gets_its_share_of_probes_when_loaded(tmp_path, collection):
    vectors, _ = collection
    index = written(tmp_path, vectors, index_type="ivfpq", index_params={"nlist": 512})
    assert faiss.extract_index_ivf(Index.load(index.directory).ann).nprobe == 32
    assert index.manifest["recall"]["search"] == {"nprobe": 32, "rerank": 100}
    hnsw = written(tmp_path, vectors[:300], "hnsw", index_type="hnsw")
    assert "it tunes ivfflat / ivfpq indexes" in hnsw.effort_notes(SearchEffort(nprobe=4))[0]


def test_the_generator_draws_queries_from_the_collection_s_distribution(collection):
    vectors, queries = collection
    assert np.array_equal(vectors, clip_like_vectors(3000, seed=0, spec=SPEC))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    nearest, _ = exact_search(queries, vectors, 1)
    unrelated = clip_like_vectors(100, seed=1, spec=ClipLike(dim=DIM, latent=6))
    stranger, _ = exact_search(unrelated, vectors, 1)
    assert nearest.mean() > 0.95 > stranger.mean()


def test_local_intrinsic_dimension_finds_a_known_dimension():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((DIM, 4)))[0].T
    points = rng.standard_normal((20_000, 4)) * 0.05 @ basis
    points[:, 0] += 1.0  # a small 4-d patch around one direction, then onto the sphere
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    stats = neighbour_statistics(points, sample=300)
    assert 3.3 < stats["LID median"] < 4.7
    assert stats["1st"] > stats["10th"] > stats["100th"] > stats["random pair"]
    cosines = np.array([[0.99, 0.98, 0.97]])  # distances grow: a finite, positive estimate
    assert 0 < local_intrinsic_dimension(cosines)[0] < np.inf
