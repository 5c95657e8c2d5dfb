"""The device t-SNE, its affinities, the chunked trustworthiness and the backend choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.manifold import trustworthiness as sk_trustworthiness

from reportgen.analyses.embedding import EmbeddingParams, run_tsne, tsne_backend
from reportgen.methods.tsne import (
    perplexity_affinities,
    symmetric_affinities,
    torch_tsne,
    trustworthiness,
)


def blobs(n_per: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8, size=(3, dims))
    x = np.concatenate([c + rng.normal(size=(n_per, dims)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), n_per)


@pytest.mark.parametrize(("n", "k", "chunk"), [(40, 3, 7), (101, 5, 1024), (64, 1, 16)])
def test_trustworthiness_equals_sklearn(n: int, k: int, chunk: int) -> None:
    rng = np.random.default_rng(n)
    high = rng.normal(size=(n, 12))
    low = high[:, :2] + rng.normal(scale=0.5, size=(n, 2))
    want = sk_trustworthiness(high, low, n_neighbors=k)
    got = trustworthiness(torch.from_numpy(high), torch.from_numpy(low), k, chunk=chunk)
    assert got == pytest.approx(want, abs=1e-12)


def test_trustworthiness_rejects_large_k() -> None:
    with pytest.raises(ValueError, match="k < N/2"):
        trustworthiness(torch.zeros(10, 3), torch.zeros(10, 2), 5)


def test_affinities_reach_the_perplexity() -> None:
    x, _ = blobs(30, 6)
    idx, p = perplexity_affinities(torch.from_numpy(x), perplexity=10.0)
    assert idx.shape == p.shape == (90, 30)
    torch.testing.assert_close(p.sum(1), torch.ones(90))
    entropy = -(p.double() * torch.log(p.double().clamp_min(1e-300))).sum(1)
    torch.testing.assert_close(entropy, torch.full((90,), math.log(10.0), dtype=torch.float64))
    rows, cols, w, degree = symmetric_affinities(idx, p)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(degree.sum()) == rows.numel() == cols.numel()
    assert bool((rows[1:] >= rows[:-1]).all())  # sorted by row: segment sums in fixed order
    dense = torch.zeros(90, 90)
    dense[rows, cols] = w
    torch.testing.assert_close(dense, dense.T)


def test_torch_tsne_separates_clusters_and_is_deterministic() -> None:
    x, labels = blobs(40, 10, seed=1)
    a = torch_tsne(torch.from_numpy(x), perplexity=15, n_iter=300, early_iter=100)
    b = torch_tsne(torch.from_numpy(x), perplexity=15, n_iter=300, early_iter=100)
    assert torch.equal(a, b)
    d = torch.cdist(a, a)
    d.fill_diagonal_(math.inf)
    assert (labels[d.argmin(1).numpy()] == labels).mean() == 1.0
    assert trustworthiness(torch.from_numpy(x), a, 5) > 0.9


def test_run_tsne_torch_backend() -> None:
    x, _ = blobs(12, 8, seed=2)
    emb, name = run_tsne(x, EmbeddingParams(backend="torch", perplexity=5), seed=0)
    assert emb.shape == (36, 2) and "torch" in name


def test_backend_choice_by_size_and_device() -> None:
    p = EmbeddingParams()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert tsne_backend(500, p, cpu) == "sklearn"
    assert tsne_backend(5000, p, cpu) == "opentsne"
    assert tsne_backend(5000, p, cuda) == "torch"
    assert tsne_backend(p.torch_max_points + 1, p, cuda) == "opentsne"
    assert tsne_backend(50, EmbeddingParams(backend="opentsne"), cuda) == "opentsne"
