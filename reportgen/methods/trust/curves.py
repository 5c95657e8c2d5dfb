"""Deletion and insertion curves (Petsiuk et al. 2018), with ROAD's noisy linear imputation."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.heads import MULTICLASS, Head
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


def _evaluate_jobs(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    jobs: torch.Tensor,
    fill: torch.Tensor,
    blurred: torch.Tensor,
    *,
    batch_size: int,
    imputation: Imputation,
    road_noise: float,
    seed: int,
    head: Head,
) -> torch.Tensor:
    """Probability of the target class (the head's explained probability) for each job (J×4: kind 0 deletion / 1 insertion, map,
    image, step), ``batch_size`` perturbed images per forward under inference mode.

    Deletion's image replaces the first ``counts[step]`` pixels of the map's order by ``fill``;
    insertion's starts from ``blurred`` and puts them back. Either way the pixels not taken from
    the image are the unknown ones ROAD imputes (seeded, in job order).
    """
    h, w = int(inputs.shape[2]), int(inputs.shape[3])
    probs = torch.empty(len(jobs), dtype=torch.float32, device=inputs.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            job = jobs[start : start + batch_size]
            kind, km, qi, si = job.unbind(1)
            taken = ranks[km, qi] < counts[si][:, None]
            unknown = torch.where(kind[:, None] == 0, taken, ~taken).view(-1, 1, h, w)
            other = torch.where((kind == 0).view(-1, 1, 1, 1), fill[qi], blurred[qi])
            batch = torch.where(unknown, other, inputs[qi])
            if imputation == "road":
                batch = noisy_linear_imputation(
                    batch, unknown[:, 0], init=other, noise=road_noise, generator=gen
                )
            logits = extract_logits(model(batch)).float()
            probs[start : start + len(job)] = head.explained_probability(logits, targets[qi])
    return probs


def _ranked(
    maps: torch.Tensor, steps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels changed after each step, K×Q×(H·W) rank of each pixel) for K×Q×H×W maps."""
    k, q, h, w = maps.shape
    counts = torch.as_tensor(step_counts(h * w, steps), device=device)
    ranks = pixel_ranks(maps.reshape(k * q, h, w).to(device)).view(k, q, h * w)
    return counts, ranks


def _grid(*sizes: int) -> torch.Tensor:
    """All index combinations of ``sizes`` (row-major), one per row."""
    axes = [torch.arange(n) for n in sizes]
    return torch.cartesian_prod(*axes).reshape(-1, len(sizes))


def curve_passes(maps: int, images: int, steps: int, imputation: Imputation) -> int:
    """Forward passes :func:`deletion_insertion_curves` makes for ``maps`` maps per image."""
    if imputation == "constant":
        return 2 * maps * images * (steps - 1) + 3 * images
    return 2 * maps * images * (steps + 1) + images


def deletion_insertion_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    fill: torch.Tensor,
    blurred: torch.Tensor,
    steps: int = 16,
    batch_size: int = 64,
    imputation: Imputation = "constant",
    road_noise: float = 0.01,
    seed: int = 0,
    head: Head = MULTICLASS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deletion, insertion: K×Q×(steps+1) probabilities of the target class; the Q unchanged
    images' probabilities), both curves of every map through one queue of perturbed images.

    ``maps``: K×Q×H×W (methods and the random control); ``fill``: broadcastable to Q×C×H×W
    (what deleted pixels become); ``blurred``: Q×C×H×W (where insertion starts). With constant
    imputation the images every map shares are evaluated once per image, not once per map and
    curve: the unchanged image (deletion's first point, insertion's last, the base probability),
    the fully deleted one and the fully blurred one. With ROAD every point is imputed with its
    own noise, so only the unchanged image is shared.
    """
    k, q, _, _ = maps.shape
    device = inputs.device
    counts, ranks = _ranked(maps, steps, device)
    fill_b = fill.to(device, inputs.dtype).expand_as(inputs)
    blurred = blurred.to(device, inputs.dtype)
    targets = targets.to(device)
    shared = imputation == "constant"
    inner = _grid(2, k, q, steps - 1 if shared else steps + 1)
    inner[:, 3] += 1 if shared else 0
    images = torch.arange(q)
    zeros = torch.zeros(q, dtype=torch.long)
    ends = [torch.stack([zeros, zeros, images, zeros], 1)]  # the unchanged image
    if shared:
        ends.append(torch.stack([zeros, zeros, images, zeros + steps], 1))  # all deleted
        ends.append(torch.stack([zeros + 1, zeros, images, zeros], 1))  # all blurred
    jobs = torch.cat([inner, *ends]).to(device)
    probs = _evaluate_jobs(
        model,
        inputs,
        targets,
        ranks,
        counts,
        jobs,
        fill_b,
        blurred,
        batch_size=batch_size,
        imputation=imputation,
        road_noise=road_noise,
        seed=seed,
        head=head,
    ).cpu()
    tables = torch.empty(2, k, q, steps + 1)
    n = len(inner)
    first = 1 if shared else 0
    tables[:, :, :, first : steps + 1 - first] = probs[:n].view(2, k, q, -1)
    base = probs[n : n + q]
    if shared:
        tables[0, :, :, 0] = base
        tables[0, :, :, steps] = probs[n + q : n + 2 * q]
        tables[1, :, :, 0] = probs[n + 2 * q : n + 3 * q]
        tables[1, :, :, steps] = base
    return tables[0].numpy(), tables[1].numpy(), base.numpy()


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
    head: Head = MULTICLASS,
) -> np.ndarray:
    """K×Q×(steps+1) probabilities of the target class along deletion or insertion curves.

    ``maps``: K×Q×H×W (K maps per image: methods and the random control). Pixels are taken in
    :func:`pixel_ranks` order; after step s the first ``step_counts(H·W, steps)[s]`` pixels are
    changed. Deletion replaces them by ``baseline`` (broadcastable to Q×C×H×W: the fill); insertion
    starts from ``baseline`` (the blurred images) and puts them back. With ``imputation="road"``
    the pixels not taken from the image are imputed from those that are (:func:`noisy_linear_imputation`,
    noise σ ``road_noise``, seeded) starting from ``baseline``. Every (map, image, step) is one job;
    jobs run ``batch_size`` at a time under :func:`torch.inference_mode`. (The report computes
    both curves at once with :func:`deletion_insertion_curves`.)
    """
    k, q, _, _ = maps.shape
    device = inputs.device
    counts, ranks = _ranked(maps, steps, device)
    base = baseline.to(device, inputs.dtype).expand_as(inputs)
    jobs = _grid(1, k, q, steps + 1)
    jobs[:, 0] = 0 if kind == "deletion" else 1
    probs = _evaluate_jobs(
        model,
        inputs,
        targets.to(device),
        ranks,
        counts,
        jobs.to(device),
        base,
        base,
        batch_size=batch_size,
        imputation=imputation,
        road_noise=road_noise,
        seed=seed,
        head=head,
    )
    return probs.view(k, q, steps + 1).cpu().numpy()


def curve_auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve (last axis) over ``fractions`` (0 to 1)."""
    widths = np.diff(fractions)
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * widths).sum(axis=-1)
