"""Flat search through BLAS (few queries, large collection) ranks exactly like faiss.knn."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval import index as index_module


@pytest.mark.parametrize("queries", [1, 3, 40])
@pytest.mark.parametrize("k", [1, 10, 500])
def test_exact_search_matches_faiss(monkeypatch, queries, k):
    monkeypatch.setattr(index_module, "BLAS_MIN_ELEMENTS", 0)  # take the BLAS path on small data
    rng = np.random.default_rng(queries * 1000 + k)
    vectors = rng.standard_normal((500, 32), dtype=np.float32)
    query = rng.standard_normal((queries, 32), dtype=np.float32)
    scores, positions = index_module.exact_search(query, vectors, k)
    expected_scores, expected_positions = faiss.knn(query, vectors, k, faiss.METRIC_INNER_PRODUCT)
    assert positions.shape == (queries, k) and positions.dtype == np.int64
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    np.testing.assert_array_equal(positions[:, :10], expected_positions[:, :10])
    assert np.all(np.diff(scores, axis=1) <= 0)
