"""Exact k-NN (chunked matrix products + top-k) against scikit-learn's NearestNeighbors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from reportgen.methods.knn import knn, leave_one_out_agreement, pairwise_distances


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_knn_matches_sklearn(metric: str, chunk: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 16))
    queries = rng.normal(size=(33, 16))
    nn = NearestNeighbors(n_neighbors=6, metric=metric, algorithm="brute").fit(base)
    want_d, want_i = nn.kneighbors(queries)
    got_d, got_i = knn(
        torch.from_numpy(queries),
        torch.from_numpy(base),
        6,
        metric=metric,
        chunk=chunk,  # type: ignore[arg-type]
    )
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    np.testing.assert_allclose(got_d.numpy(), want_d, atol=1e-4)


def test_knn_leave_one_out_excludes_self() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    want = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(return_distance=False)
    xt = torch.from_numpy(x)
    _, got = knn(xt, xt, 3, exclude=torch.arange(50), chunk=8)
    np.testing.assert_array_equal(got.numpy(), want)


def test_pairwise_distances() -> None:
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        pairwise_distances(a, b), torch.cdist(a, b).float(), atol=1e-5, rtol=1e-5
    )


def test_leave_one_out_agreement() -> None:
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert leave_one_out_agreement(x, labels, 2) == 1.0
    assert leave_one_out_agreement(x, torch.tensor([0, 1, -1, -1, -1, -1]), 1) == 0.0
    assert leave_one_out_agreement(x, torch.tensor([0, -1, -1, -1, -1, -1]), 1) is None


def test_knn_needs_two_points() -> None:
    with pytest.raises(ValueError):
        knn(torch.zeros(1, 2), torch.zeros(1, 2), 3, exclude=torch.zeros(1, dtype=torch.long))
