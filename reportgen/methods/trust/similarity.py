"""How similar two sets of maps are: Spearman rank correlation of |map| and SSIM."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

# --------------------------------------------------------------------------- similarity


def spearman_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of |a| and |b| per map (over the last two axes).

    ``a``, ``b``: (..., H, W). Ties share their average rank. NaN where a map is constant (the
    correlation is undefined there, as in :func:`scipy.stats.spearmanr`).
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    lead = a.shape[:-2]
    fa = np.abs(a.reshape(-1, a.shape[-2] * a.shape[-1]).astype(np.float64))
    fb = np.abs(b.reshape(-1, b.shape[-2] * b.shape[-1]).astype(np.float64))
    ra = rankdata(fa, axis=1)
    rb = rankdata(fb, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return rho.reshape(lead)


def normalise_maps01(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map (last two axes) to [0, 1]; a constant map becomes all zeros."""
    m = maps.astype(np.float64)
    lo = m.min(axis=(-2, -1), keepdims=True)
    hi = m.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    window: Literal["gaussian", "uniform"] = "gaussian",
    sigma: float = 1.5,
    win_size: int = 7,
) -> np.ndarray:
    """Mean structural similarity per map (last two axes) of maps already scaled to [0, 1].

    Wang et al. (2004) with data range 1, K1 = 0.01, K2 = 0.03, as scikit-image computes it:
    ``gaussian``: Gaussian-weighted window (σ = ``sigma``, truncated at 3.5σ) with population
    covariances; ``uniform``: a ``win_size`` box with sample covariances (scikit-image's default).
    Local statistics use reflected borders; the mean leaves out the half-window border. A map
    smaller than the window is compared with the largest odd box that fits.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    h, w = a.shape[-2:]
    x = a.reshape(-1, h, w).astype(np.float64)
    y = b.reshape(-1, h, w).astype(np.float64)
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    if window == "gaussian" and 2 * radius + 1 <= min(h, w):
        size = 2 * radius + 1

        def filt(v: np.ndarray) -> np.ndarray:
            return np.asarray(
                ndimage.gaussian_filter(
                    v, sigma=(0, sigma, sigma), truncate=truncate, mode="reflect"
                )
            )

        cov_norm = 1.0
    else:
        size = min(win_size, min(h, w) - (1 - min(h, w) % 2))
        if window == "gaussian":
            size = min(h, w) - (1 - min(h, w) % 2)

        def filt(v: np.ndarray) -> np.ndarray:
            return np.asarray(ndimage.uniform_filter(v, size=(1, size, size), mode="reflect"))

        n = size * size
        cov_norm = n / (n - 1) if n > 1 else 1.0
    c1, c2 = 0.01**2, 0.03**2
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (size - 1) // 2
    inner = s[:, pad : h - pad, pad : w - pad]
    return inner.mean(axis=(1, 2)).reshape(a.shape[:-2])
