"""Deletion and insertion curves (Petsiuk et al. 2018), with ROAD's noisy linear imputation."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.loading.models import extract_logits

Imputation = Literal["constant", "road"]
CurveKind = Literal["deletion", "insertion"]


# --------------------------------------------------------------------------- deletion / insertion


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B×C×H×W images (σ in pixels, kernel radius 4σ, mirrored borders).

    Mirrored as :func:`torch.nn.functional.pad`'s ``reflect`` (scipy's ``mirror``); the radius is
    capped at the image size minus one, which that padding needs.
    """
    if sigma <= 0:
        return images.clone()
    _, c, h, w = images.shape
    radius = min(int(4.0 * sigma + 0.5), h - 1, w - 1)
    if radius < 1:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_ROAD_STENCIL = (
    (1 / 12, 1 / 6, 1 / 12),
    (1 / 6, 0.0, 1 / 6),
    (1 / 12, 1 / 6, 1 / 12),
)


def noisy_linear_imputation(
    images: torch.Tensor,
    unknown: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022), batched on the images' device.

    Each unknown pixel (``unknown``: B×H×W, True = impute) is set to the weighted mean of its eight
    neighbours (weights 1/6 side, 1/12 diagonal, normalised over the neighbours inside the image),
    the known pixels fixed, per channel; then Gaussian noise of σ = ``noise`` is added to the
    imputed pixels (drawn from ``generator`` on the CPU). The linear system is symmetric positive
    (semi-)definite and is solved by conjugate gradients, one system per image and channel, all in
    the same batched convolutions. Pixels cut off from every known pixel keep ``init`` (default:
    the image itself), which is where the solver starts.
    """
    b, c, h, w = images.shape
    dtype, device = images.dtype, images.device
    kernel = torch.tensor(_ROAD_STENCIL, dtype=dtype, device=device).view(1, 1, 3, 3)

    def conv(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, padding=1)

    m = unknown[:, None].to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    x = images.reshape(b * c, 1, h, w)
    z = conv(torch.ones(1, 1, h, w, dtype=dtype, device=device))
    rhs = m * conv(x * (1 - m))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return m * (z * v - conv(m * v))

    start = x if init is None else init.to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    u = m * start
    r = rhs - apply(u)
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    target = (tol * tol) * torch.clamp((rhs * rhs).sum(dim=(1, 2, 3), keepdim=True), min=1e-30)
    iterations = max_iter if max_iter is not None else 4 * (h + w) + 50
    for _ in range(iterations):
        if bool((rs <= target).all()):
            break
        ap = apply(p)
        den = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(den > 0, rs / torch.where(den > 0, den, 1.0), torch.zeros_like(den))
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1.0), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    out = x * (1 - m) + u
    if noise > 0:
        eps = torch.randn((b * c, 1, h, w), generator=generator, dtype=torch.float32)
        out = out + m * noise * eps.to(device, dtype)
    return out.view(b, c, h, w)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """N×H×W maps -> N×(H·W) rank of each pixel, 0 = most important (largest value).

    Ties are broken by pixel index (row-major), lowest first, so the order is deterministic.
    """
    flat = torch.nan_to_num(maps.flatten(1).double(), nan=-math.inf)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels changed after each of ``steps`` equal steps: round(k · pixels / steps), k = 0..steps."""
    return np.rint(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def perturbation_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    kind: CurveKind,
    baseline: torch.Tensor,
    steps: int = 16,
    batch_size: int = 64,
    imputation: Imputation = "constant",
    road_noise: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """K×Q×(steps+1) probabilities of the target class along deletion or insertion curves.

    ``maps``: K×Q×H×W (K maps per image: methods and the random control). Pixels are taken in
    :func:`pixel_ranks` order; after step s the first ``step_counts(H·W, steps)[s]`` pixels are
    changed. Deletion replaces them by ``baseline`` (broadcastable to Q×C×H×W: the fill); insertion
    starts from ``baseline`` (the blurred images) and puts them back. With ``imputation="road"``
    the pixels not taken from the image are imputed from those that are (:func:`noisy_linear_imputation`,
    noise σ ``road_noise``, seeded) starting from ``baseline``. Every (map, image, step) is one job;
    jobs run ``batch_size`` at a time under :func:`torch.inference_mode`.
    """
    k, q, h, w = maps.shape
    device = inputs.device
    counts = torch.as_tensor(step_counts(h * w, steps), device=device)
    ranks = pixel_ranks(maps.reshape(k * q, h, w).to(device)).view(k, q, h * w)
    base = baseline.to(device, inputs.dtype).expand_as(inputs)
    targets = targets.to(device)
    per_map = q * (steps + 1)
    total = k * per_map
    probs = torch.empty(total, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            job = torch.arange(start, min(start + batch_size, total), device=device)
            km, rem = job // per_map, job % per_map
            qi, si = rem // (steps + 1), rem % (steps + 1)
            taken = (ranks[km, qi] < counts[si][:, None]).view(-1, 1, h, w)
            image, other = inputs[qi], base[qi]
            if kind == "deletion":
                batch = torch.where(taken, other, image)
                unknown = taken[:, 0]
            else:
                batch = torch.where(taken, image, other)
                unknown = ~taken[:, 0]
            if imputation == "road":
                batch = noisy_linear_imputation(
                    batch, unknown, init=other, noise=road_noise, generator=gen
                )
            logits = extract_logits(model(batch)).float()
            probs[job] = logits.softmax(1).gather(1, targets[qi][:, None])[:, 0]
    return probs.view(k, q, steps + 1).cpu().numpy()


def curve_auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve (last axis) over ``fractions`` (0 to 1)."""
    widths = np.diff(fractions)
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * widths).sum(axis=-1)
