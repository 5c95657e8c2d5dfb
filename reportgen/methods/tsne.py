"""t-SNE pieces that run on the device: perplexity affinities, an exact-gradient t-SNE for GPUs,
and a chunked trustworthiness that needs no N×N matrix.

The t-SNE here computes the repulsive forces exactly (all pairs, in row chunks), which is
O(N²) work per iteration but only O(chunk × N) memory: on a GPU that is a few seconds at N = 50k,
on a CPU far slower than openTSNE's FFT approximation, so :func:`reportgen.analyses.embedding`
picks it only on CUDA. Every reduction has a fixed order (no atomics), so a seed gives the same
map on the same device every run.

Degenerate input crashes native t-SNE code (scikit-learn's Barnes-Hut and openTSNE segfault when
every point is equal: their PCA initialisation divides by a zero standard deviation) or gives
NaN maps here. :func:`tsne_input_problem` names the problem before any t-SNE runs, and
:func:`scale_for_tsne` brings any feature scale to unit RMS (float32 distances of features at
1e-30 underflow to all-equal, at 1e30 overflow to Inf — both crash the native code); the map does
not change, as t-SNE's affinities are calibrated per point by the perplexity and the
initialisation is rescaled anyway.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reportgen.methods.knn import DegenerateInput, knn, point_set_problem

MIN_TSNE_POINTS = 5
"""Below this, t-SNE has no neighbourhoods to keep (perplexity would be under 1.4)."""


def tsne_input_problem(x: torch.Tensor | np.ndarray, what: str = "points") -> str | None:
    """Why t-SNE cannot run on the rows of ``x`` (too few, non-finite, all equal), or None.

    Call it before scikit-learn, openTSNE or :func:`torch_tsne` sees the data: those crash the
    process (segfault) or return NaN maps on such input.
    """
    t = torch.as_tensor(x)
    return point_set_problem(t, min_points=MIN_TSNE_POINTS, what=what)


def scale_for_tsne(x: np.ndarray) -> np.ndarray:
    """``x`` centred and divided by its RMS distance to the mean (float64), for any feature scale.

    t-SNE's result does not depend on a global scale (each point's Gaussian bandwidth is
    calibrated to the perplexity, and the initialisation is rescaled), but float32 distances do:
    features around 1e-30 underflow to zero distances and around 1e30 overflow to Inf. Raises
    :class:`~reportgen.methods.knn.DegenerateInput` when the points have no spread at all.
    """
    xd = np.asarray(x, dtype=np.float64)
    centred = xd - xd.mean(axis=0)
    rms = float(np.sqrt((centred * centred).sum(axis=1).mean()))
    if not np.isfinite(rms) or rms == 0.0:
        raise DegenerateInput("t-SNE input has no spread (all points equal) or is not finite")
    return centred / rms


def perplexity_affinities(
    x: torch.Tensor, perplexity: float, *, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional affinities p(j|i) on each point's 3·perplexity nearest neighbours.

    Returns (neighbour indices N×k, p(j|i) N×k, rows summing to 1), found by a bisection on each
    point's Gaussian precision until the row's entropy is log(perplexity) (as in van der Maaten's
    reference implementation, vectorised over all points).
    """
    n = x.shape[0]
    k = int(min(n - 1, max(1, math.floor(3 * perplexity))))
    dist, idx = knn(x, x, k, exclude=torch.arange(n, device=x.device), chunk=chunk)
    d2 = dist.double() ** 2
    d2 = d2 - d2[:, :1]  # shifting each row leaves p(j|i) unchanged and avoids underflow
    target = math.log(min(perplexity, k))
    beta = torch.ones(n, 1, dtype=torch.float64, device=x.device)
    lo = torch.full_like(beta, 0.0)
    hi = torch.full_like(beta, math.inf)
    for _ in range(100):
        w = torch.exp(-d2 * beta)
        s = w.sum(1, keepdim=True)
        p = w / s
        entropy = torch.log(s) + beta * (d2 * p).sum(1, keepdim=True)
        too_flat = entropy > target  # entropy too high: raise the precision
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    w = torch.exp(-d2 * beta)
    return idx, (w / w.sum(1, keepdim=True)).float()


def symmetric_affinities(
    idx: torch.Tensor, p_cond: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """P = (P_cond + P_condᵀ) / 2N as edges sorted by row: (rows, cols, weights, row degrees).

    Forces are summed per row with ``segment_reduce`` over these sorted edges (a fixed order,
    unlike scatter-adds with atomics), so a run is deterministic on the GPU too.
    """
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    cols = idx.flatten()
    vals = p_cond.flatten() / (2.0 * n)
    sym = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
        torch.cat([vals, vals]),
        (n, n),
        check_invariants=False,
    ).coalesce()
    r, c = sym.indices()
    return r, c, sym.values(), torch.bincount(r, minlength=n)


def _pca_init(x: torch.Tensor) -> torch.Tensor:
    xc = x.double() - x.double().mean(0)
    # The top-2 right singular vectors; signs fixed so the map does not flip between runs.
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    v = vh[:2].T
    signs = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    y = xc @ (v * signs)
    return (y / y[:, 0].std() * 1e-4).float()


def torch_tsne(
    x: torch.Tensor,
    *,
    perplexity: float = 30.0,
    n_iter: int = 750,
    early_iter: int = 250,
    exaggeration: float = 12.0,
    chunk: int = 4096,
) -> torch.Tensor:
    """2-D t-SNE of the rows of ``x`` on its device: PCA initialisation, exact gradient.

    The schedule follows the usual recipe (early exaggeration 12 with momentum 0.5 for
    ``early_iter`` steps, then momentum 0.8, per-coordinate gains), learning rate N / 48
    (the factor 4 of the gradient folded in), at least 50.
    """
    n = x.shape[0]
    problem = tsne_input_problem(x)
    if problem:
        raise DegenerateInput(f"t-SNE {problem}")
    x = x.float()
    idx, p_cond = perplexity_affinities(x, perplexity)
    rows, cols, w, degree = symmetric_affinities(idx, p_cond)
    y = _pca_init(x)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    lr = max(n / exaggeration / 4.0, 50.0)
    for it in range(n_iter):
        exag, momentum = (exaggeration, 0.5) if it < early_iter else (1.0, 0.8)
        diff = y[rows] - y[cols]  # edges×2
        q_edge = 1.0 / (1.0 + (diff * diff).sum(1))
        attract = torch.segment_reduce((w * q_edge)[:, None] * diff, "sum", lengths=degree)
        repulse = torch.zeros_like(y)
        z = torch.zeros((), dtype=torch.float64, device=y.device)
        sq = (y * y).sum(1)
        for s in range(0, n, chunk):
            yc = y[s : s + chunk]
            d2 = (sq[s : s + chunk, None] + sq[None, :] - 2.0 * yc @ y.T).clamp_(min=0.0)
            q = 1.0 / (1.0 + d2)
            z = z + (q.sum(dtype=torch.float64) - yc.shape[0])  # minus the diagonal's q = 1
            q2 = q * q
            repulse[s : s + chunk] = yc * q2.sum(1, keepdim=True) - q2 @ y
        grad = 4.0 * (exag * attract - repulse / z.float())
        same = torch.sign(grad) == torch.sign(update)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_(min=0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
        y = y - y.mean(0)
    return y


def trustworthiness(high: torch.Tensor, low: torch.Tensor, k: int, *, chunk: int = 1024) -> float:
    """scikit-learn's ``trustworthiness`` (euclidean) in O(chunk × N) memory, on any device.

    For each point, how far (in rank, in the high-dimensional space) its k nearest neighbours in
    the low-dimensional map really are; 1 = every map neighbour is a true k-nearest neighbour.
    Computed in float64 so ranks match scikit-learn's.
    """
    n = high.shape[0]
    if not 1 <= k < n / 2:
        raise ValueError(f"trustworthiness needs 1 <= k < N/2 (k={k}, N={n})")
    high = high.double()
    low = low.double().to(high.device)
    own = torch.arange(n, device=high.device)
    _, low_nn = knn(low, low, k, exclude=own, chunk=chunk)
    sq = (high * high).sum(1)
    penalty = torch.zeros((), dtype=torch.float64, device=high.device)
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(s + chunk, n), device=high.device)
        d = sq[rows, None] + sq[None, :] - 2.0 * high[rows] @ high.T
        d[torch.arange(rows.numel(), device=d.device), rows] = math.inf
        d_nn = d.gather(1, low_nn[rows])  # chunk×k distances to the map's neighbours
        # Rank (1 = nearest) of each map neighbour among the point's high-dimensional neighbours.
        rank = torch.stack([(d < d_nn[:, j : j + 1]).sum(1) for j in range(k)], 1) + 1
        penalty += (rank - k).clamp(min=0).sum().double()
    return float(1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))
