"""Paired statistics for two models on the same images: McNemar, a paired bootstrap, confusion
counts, linear CKA, k-NN neighbourhood overlap, filter cosine similarity. Arrays in, numbers out."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import binomtest

from reportgen.methods.knn import knn

BOOTSTRAP_SAMPLES = 2000
_BOOTSTRAP_CHUNK = 1 << 22
"""Random numbers per bootstrap chunk (32 MB of float64): memory stays flat for large N."""


def mcnemar_exact(old_only: int, new_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    ``old_only``: images only the old model gets right; ``new_only``: only the new one. Under no
    difference each discordant image is a fair coin, so the p-value is the two-sided binomial
    test of ``old_only`` successes in ``old_only + new_only`` trials at 1/2 (1 without any).
    """
    n = old_only + new_only
    if n == 0:
        return 1.0
    return float(binomtest(min(old_only, new_only), n, 0.5).pvalue)


def paired_bootstrap_ci(
    correct_old: np.ndarray,
    correct_new: np.ndarray,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of accuracy(new) - accuracy(old), resampling images with replacement.

    Paired: one resample of the images serves both models. Replicate b draws ``n`` uniforms
    ``u`` from ``numpy.random.default_rng(seed)`` (in order) and takes images ``floor(u·n)``;
    replicates are drawn in chunks so memory stays flat, and the stream does not depend on the
    chunk size (uniform doubles are not buffered, unlike bounded integers).
    """
    d = correct_new.astype(np.float64) - correct_old.astype(np.float64)
    n = d.shape[0]
    if n == 0:
        raise ValueError("the bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    deltas = np.empty(samples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CHUNK // n)
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        idx = (rng.random((rows, n)) * n).astype(np.intp)
        deltas[start : start + rows] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(deltas, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def confusion_counts(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """n×n counts, rows = true class, columns = predicted class."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float | None:
    """Linear CKA (Kornblith et al., ICML 2019) between N×p and N×q features (any widths).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F · ||Yc^T Yc||_F)`` with column-centred features, in float64;
    the N×N Gram form is used instead when N is smaller than the widths (same value, less work).
    None when one feature set is constant.
    """
    xc = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    yc = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(f"CKA needs the same images: {xc.shape[0]} vs {yc.shape[0]} rows")
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    n, p, q = xc.shape[0], xc.shape[1], yc.shape[1]
    if n * n * (p + q) < n * (p * p + q * q + p * q):
        k, lg = xc @ xc.T, yc @ yc.T
        num = float((k * lg).sum())
        den = float(np.sqrt((k * k).sum() * (lg * lg).sum()))
    else:
        cross = yc.T @ xc
        num = float((cross * cross).sum())
        den = float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    if den <= 0.0 or not math.isfinite(den):
        return None
    return num / den


def knn_overlap(
    features_old: np.ndarray,
    features_new: np.ndarray,
    k: int,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per image, the Jaccard overlap of its k nearest other images in the two feature spaces.

    Leave-one-out, Euclidean, exact (:func:`reportgen.methods.knn.knn`, chunked, on ``device``).
    1 = the same neighbours, 0 = none in common.
    """
    n = features_old.shape[0]
    if features_new.shape[0] != n:
        raise ValueError(f"k-NN overlap needs the same images: {n} vs {features_new.shape[0]}")
    own = torch.arange(n, device=device)
    xo, xn = _t(features_old).to(device), _t(features_new).to(device)
    an = knn(xo, xo, k, exclude=own)[1].cpu().numpy()
    bn = knn(xn, xn, k, exclude=own)[1].cpu().numpy()
    inter = (an[:, :, None] == bn[:, None, :]).any(axis=2).sum(axis=1)
    kk = an.shape[1]
    out: np.ndarray = inter / (2 * kk - inter)
    return out.astype(np.float64)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1))


def filter_cosine(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Cosine similarity of each filter's flattened weights (same shapes; NaN for a zero filter)."""
    a = np.asarray(old, dtype=np.float64).reshape(old.shape[0], -1)
    b = np.asarray(new, dtype=np.float64).reshape(new.shape[0], -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    out = np.full(a.shape[0], np.nan)
    ok = norms > 0
    out[ok] = dots[ok] / norms[ok]
    return out
