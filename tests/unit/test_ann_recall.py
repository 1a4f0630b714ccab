"""ANN indexes keep their recall (issue #17): the `auto` type, the HNSW / IVF-PQ defaults,
IVF-PQ's exact re-ranking, per-query ef_search / nprobe, and the recall each build records."""

import json

import faiss
import numpy as np
import pytest

from retrieval.cli.main import main
from retrieval.errors import BadInput
from retrieval.index import (
    SearchEffort,
    build_index,
    choose_index_type,
    exact_search,
    write_version,
)
from retrieval.search import Searcher
from tests.helpers import make_collection

DIM = 64


def clip_like(count: int, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """CLIP-like unit vectors: a shared mean direction + one of 30 popular concepts + noise."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=DIM)
    concepts = rng.normal(size=(30, DIM))
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    vectors = 0.6 * mean / np.linalg.norm(mean) + 0.5 * concepts[rng.integers(0, 30, count)]
    vectors += noise * rng.normal(size=(count, DIM)) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def manifest(**fields) -> dict:
    base = {"format": 1, "model_spec": "x", "dim": DIM, "preprocessing": "standard"}
    return {**base, "index_type": "flat", "index_params": {}, **fields}


def written(tmp_path, vectors, name="index", **fields):
    items = [{"id": str(n)} for n in range(len(vectors))]
    return write_version(tmp_path / name, manifest(**fields), items, vectors)


def recall(index, queries, effort=SearchEffort(), k=10) -> float:
    """recall@k of the index's search against exact search, for queries not in the index."""
    _, truth = exact_search(queries, index.vectors, k)
    _, found = index.search(queries, k, effort=effort)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found, strict=True)]))


@pytest.fixture(scope="module")
def collection():
    """3,000 items and 100 held-out queries from the same distribution."""
    vectors = clip_like(3100)
    return vectors[:3000], vectors[3000:]


def test_auto_is_flat_up_to_the_threshold_and_hnsw_above(tmp_path):
    assert choose_index_type("auto", 200_000) == "flat"
    assert choose_index_type("auto", 200_001) == "hnsw"
    assert choose_index_type("auto", 50, flat_max_items=49) == "hnsw"
    assert choose_index_type("ivfpq", 3) == "ivfpq"  # an explicit type is kept
    with pytest.raises(BadInput, match="unknown index type 'lsh'"):
        choose_index_type("lsh", 3)
    vectors = clip_like(30)
    choice = {"index_choice": {"requested": "auto", "flat_max_items": 20}}
    small = written(tmp_path, vectors[:20], "small", **choice)
    large = written(tmp_path, vectors, "large", **choice)  # as an update that grew past it
    assert (small.manifest["index_type"], small.ann) == ("flat", None)
    assert large.manifest["index_type"] == "hnsw" and large.ann is not None


def test_build_defaults_to_auto(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images")
    default = build_index(folder, tmp_path / "default", micro_backbone, progress=False).index
    assert default.manifest["index_type"] == "flat"
    assert default.manifest["index_choice"]["requested"] == "auto"
    above = build_index(
        folder, tmp_path / "above", micro_backbone, progress=False, flat_max_items=4
    ).index
    assert above.manifest["index_type"] == "hnsw" and above.ann is not None
    fixed = build_index(folder, tmp_path / "fixed", micro_backbone, "hnsw", progress=False)
    assert "index_choice" not in fixed.index.manifest
    assert "--index-type hnsw" in fixed.index.rebuild_command()


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_the_defaults_keep_recall_on_clip_like_vectors(tmp_path, collection, index_type):
    vectors, queries = collection
    index = written(tmp_path, vectors, index_type=index_type)
    assert recall(index, queries) >= 0.95
    assert index.manifest["recall"]["value"] >= 0.95


def test_reranking_on_the_stored_vectors_lifts_ivfpq_recall(tmp_path, collection):
    vectors, queries = collection
    reranked = written(tmp_path, vectors, "reranked", index_type="ivfpq")
    codes_only = written(tmp_path, vectors, "codes", index_type="ivfpq", index_params={"rerank": 0})
    assert recall(reranked, queries) >= recall(codes_only, queries) + 0.05
    scores, positions = reranked.search(queries[:1], 5)
    assert np.allclose(scores[0], vectors[positions[0]] @ queries[0], atol=1e-5)  # exact scores


def test_per_query_effort_reaches_faiss_without_touching_the_shared_index(tmp_path):
    vectors, queries = clip_like(3100, noise=2.0)[:3000], clip_like(100, noise=2.0, seed=1)
    sparse = {"m": 8, "ef_construction": 16, "ef_search": 10}
    hnsw = written(tmp_path, vectors, "hnsw", index_type="hnsw", index_params=sparse)
    low, high = (recall(hnsw, queries, SearchEffort(ef_search=e)) for e in (10, 400))
    assert high > low and high >= 0.95
    assert faiss.downcast_index(hnsw.ann).hnsw.efSearch == 10
    fixed = {"nlist": 64, "nprobe": 16}  # fixed effort: the build does not tune it
    ivf = written(tmp_path, vectors, "ivf", index_type="ivfpq", index_params=fixed)
    few, many = (recall(ivf, queries, SearchEffort(nprobe=p)) for p in (1, 64))
    assert many > few + 0.2
    assert faiss.extract_index_ivf(ivf.ann).nprobe == 16


@pytest.mark.parametrize("value", [0, -3, 5000, 2.5, "8", True])
@pytest.mark.parametrize("name", ["ef_search", "nprobe"])
def test_bad_effort_is_refused_naming_the_parameter(name, value):
    with pytest.raises(BadInput, match=f"{name} must be a whole number between 1 and 4096"):
        SearchEffort(**{name: value})


def test_a_knob_the_index_does_not_have_is_ignored_with_a_note(tmp_path, micro_backbone):
    folder = make_collection(tmp_path / "images")
    flat = build_index(folder, tmp_path / "flat", micro_backbone, "flat", progress=False).index
    result = Searcher(flat, micro_backbone).text("a red circle", ef_search=32)
    assert result.hits and result.notes == [
        "ef_search was ignored: it tunes hnsw indexes and this collection's index is flat "
        "(exact search)"
    ]
    hnsw = build_index(folder, tmp_path / "hnsw", micro_backbone, "hnsw", progress=False).index
    searcher = Searcher(hnsw, micro_backbone)
    assert searcher.text("a red circle", ef_search=32).notes == []
    assert "nprobe was ignored" in searcher.text("a red circle", nprobe=4).notes[0]
    with pytest.raises(BadInput, match="ef_search must be"):
        searcher.similar("red-circle", ef_search=0)


def test_the_manifest_records_recall_and_info_shows_it(tmp_path, collection, capsys):
    vectors, _ = collection
    flat = written(tmp_path, vectors[:500], "flat")
    assert flat.manifest["recall"] == {
        "k": 10, "value": 1.0, "queries": 0, "search": {}, "exact": True
    }  # fmt: skip
    hnsw = written(tmp_path, vectors, "hnsw", index_type="hnsw")
    recorded = hnsw.manifest["recall"]
    assert recorded["queries"] == 200 and recorded["k"] == 10 and not recorded["exact"]
    assert recorded["search"] == {"ef_search": 64} and 0.95 <= recorded["value"] <= 1.0
    assert main(["info", str(tmp_path / "hnsw")]) == 0
    assert json.loads(capsys.readouterr().out)["recall"] == recorded


def test_recorded_recall_excludes_the_query_item_and_sees_a_poor_index(tmp_path):
    vectors = clip_like(3000, noise=2.0)
    poor = {"m": 4, "ef_construction": 8, "ef_search": 1}
    index = written(tmp_path, vectors, index_type="hnsw", index_params=poor)
    measured = recall(index, clip_like(200, noise=2.0, seed=1))
    assert index.manifest["recall"]["value"] < 0.9
    assert abs(index.manifest["recall"]["value"] - measured) < 0.15
