"""The data's spectra and colours, measured during the dataset pass, for feature visualisation.

:class:`SpectrumAccumulator` sums each image's cross-power spectrum between its channels and the
moments of its values; :class:`DataSpectrum` is their mean, and :meth:`DataSpectrum.in_pixels`
turns it into :class:`PixelStatistics` — the amplitude spectrum of each principal colour
component of the pixels, which MACO keeps fixed (:mod:`reportgen.methods.feature_viz`).
:func:`spectral_slope` measures how natural an image's spectrum is.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DataSpectrum:
    """Statistics of the model inputs (what the model was fed)."""

    cross: torch.Tensor
    """C×C×H×(W//2+1) mean cross-power rfft2(x_c)·conj(rfft2(x_d)) per image (complex128): each
    channel's power spectrum on the diagonal, and what is needed to have it for any mix of
    channels (a decorrelated colour basis known only after the pass)."""
    mean: torch.Tensor
    """C mean value."""
    covariance: torch.Tensor
    """C×C covariance of the values (over every pixel of every image)."""
    size: tuple[int, int]
    count: int

    @property
    def power(self) -> torch.Tensor:
        """C×H×(W//2+1) each channel's mean power spectrum."""
        return torch.diagonal(self.cross, dim1=0, dim2=1).real.permute(2, 0, 1)

    def in_pixels(self, mean: torch.Tensor, std: torch.Tensor) -> PixelStatistics:
        """The statistics of the pixels (inputs·std + mean: the preprocessing undone) in their
        principal colour basis (the eigenvectors of the pixel covariance): in it the colour
        components are uncorrelated, so MACO can give each its own phases and natural colours
        come back when the components are mixed again."""
        std = std.double().flatten().to(self.cross.device)
        scale = std[:, None] * std[None, :]
        covariance = self.covariance * scale
        basis = colour_basis(covariance)
        cross = self.cross * scale[:, :, None, None]
        power = torch.einsum("ck,cdhw,dk->khw", basis.to(cross), cross, basis.to(cross)).real
        amplitude = power.clamp(min=0.0).sqrt()
        # The constant term: the spread of the images' mean colour around the data's (the shift
        # by the preprocessing's mean drops out), per component.
        pixels = self.size[0] * self.size[1]
        mean_spread = self.cross[:, :, 0, 0].real / pixels**2 - torch.outer(self.mean, self.mean)
        spread = torch.einsum("ck,cd,dk->k", basis, mean_spread * scale, basis)
        amplitude[:, 0, 0] = pixels * spread.clamp(min=0.0).sqrt()
        return PixelStatistics(
            amplitude=amplitude,
            basis=basis,
            mean=self.mean * std + mean.double().flatten().to(self.cross.device),
            covariance=covariance,
            size=self.size,
        )


def colour_basis(covariance: torch.Tensor) -> torch.Tensor:
    """C×C orthonormal principal directions of a colour covariance (columns, largest variance
    first, each with its largest entry positive, so that the basis is the same every time)."""
    values, vectors = torch.linalg.eigh(covariance.double().cpu())
    vectors = vectors[:, torch.argsort(values, descending=True, stable=True)]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    return (vectors * torch.where(signs == 0, 1.0, signs)).to(covariance.device)


@dataclass(frozen=True)
class PixelStatistics:
    """The data's statistics in pixel units ([0, 1] per channel)."""

    amplitude: torch.Tensor
    """C×H×(W//2+1) root mean power per frequency of each principal colour component (the
    constant term: the spread of the images' mean colour along it)."""
    basis: torch.Tensor
    """C×C principal colour directions (columns): pixel = mean + basis · component."""
    mean: torch.Tensor
    covariance: torch.Tensor
    size: tuple[int, int]

    def resized(self, size: tuple[int, int]) -> PixelStatistics:
        """For an image of ``size``: the same power per cycle-per-pixel (each bin's amplitude
        resampled over frequency and scaled with the number of pixels)."""
        if size == self.size:
            return self
        (h, w), (nh, nw) = self.size, size
        full = torch.fft.fftshift(self.amplitude.float(), dim=1)[None]  # 1×C×H×Wf
        fy = torch.fft.fftshift(torch.fft.fftfreq(nh))  # cycles per pixel, centred rows
        fx = torch.fft.rfftfreq(nw)
        # grid_sample coordinates (align_corners=True): row index (fy·h + h//2) of 0..h−1.
        gy = (fy * h + h // 2) / max(h - 1, 1) * 2 - 1
        gx = (fx * w) / max(w // 2, 1) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        grid = grid.to(full.device, full.dtype)
        sampled = F.grid_sample(full, grid, mode="bilinear", align_corners=True)[0]
        amplitude = torch.fft.ifftshift(sampled, dim=1).double() * math.sqrt(nh * nw / (h * w))
        amplitude[:, 0, 0] = self.amplitude[:, 0, 0] * (nh * nw) / (h * w)
        return PixelStatistics(amplitude, self.basis, self.mean, self.covariance, size)


@dataclass
class SpectrumAccumulator:
    """Sums, over the dataset pass, each image's cross-power spectrum between its channels and
    its values' first and second moments (a dataclass of tensors: torchrun moves it between
    ranks whole). Each batch's sums are rounded to single precision and added in double: for
    the dynamic ranges of images those additions are exact, so the totals do not depend on the
    order of the batches (torchrun ranks give the one-process bytes)."""

    cross: torch.Tensor | None = None
    """C×C×H×(W//2+1) sum of rfft2(x_c)·conj(rfft2(x_d)) (complex)."""
    sums: torch.Tensor | None = None
    products: torch.Tensor | None = None
    """C sum and C×C sum of products of the values (every pixel of every image)."""
    count: int = 0
    size: tuple[int, int] = (0, 0)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        b, c, h, w = x.shape
        spec = torch.fft.rfft2(x).to(torch.complex128)
        cross = torch.einsum("bchw,bdhw->cdhw", spec, spec.conj())
        flat = x.double().transpose(0, 1).reshape(c, -1)
        self._add(
            cross.to(torch.complex64).to(torch.complex128),
            flat.sum(1).float().double(),
            (flat @ flat.T).float().double(),
            count=b,
            size=(h, w),
        )

    def add(self, other: SpectrumAccumulator) -> None:
        """Fold in another accumulator's totals (another rank's images)."""
        if other.cross is None or other.sums is None or other.products is None:
            return
        self._add(other.cross, other.sums, other.products, count=other.count, size=other.size)

    def _add(
        self,
        cross: torch.Tensor,
        sums: torch.Tensor,
        products: torch.Tensor,
        *,
        count: int,
        size: tuple[int, int],
    ) -> None:
        if self.cross is None or self.sums is None or self.products is None:
            self.cross, self.sums, self.products = cross, sums, products
        else:
            device = self.cross.device
            self.cross = self.cross + cross.to(device)
            self.sums = self.sums + sums.to(device)
            self.products = self.products + products.to(device)
        self.count += count
        self.size = size

    def result(self) -> DataSpectrum | None:
        if self.cross is None or self.sums is None or self.products is None or not self.count:
            return None
        values = self.count * self.size[0] * self.size[1]
        mean = self.sums / values
        covariance = self.products / values - mean[:, None] * mean[None, :]
        return DataSpectrum(self.cross / self.count, mean, covariance, self.size, self.count)


def spectral_slope(image: torch.Tensor) -> float:
    """The slope of log power against log frequency of a C×H×W image (see :func:`power_slope`):
    about −2 for natural photographs, steeper for smooth images, flatter for noise."""
    x = image.double() - image.double().mean(dim=(1, 2), keepdim=True)
    spectrum = torch.fft.rfft2(x)
    return power_slope(spectrum.real**2 + spectrum.imag**2, image.shape[-1])


def power_slope(power: torch.Tensor, width: int) -> float:
    """The least-squares slope of log power against log frequency of a C×H×(W//2+1) power
    spectrum (rfft2's layout, of ``width``-pixel rows), averaged over channels and over 12 rings spaced evenly in log
    frequency; the constant term is left out."""
    h, w = power.shape[1], width
    p = power.double().mean(0)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt()
    edges = torch.logspace(math.log10(1.0 / max(h, w)), math.log10(0.5), 13, dtype=torch.float64)
    xs, ys = [], []
    for lo, hi in itertools.pairwise(edges.tolist()):
        ring = (radius >= lo) & (radius < hi)
        if ring.any():
            xs.append(float(radius[ring].mean().log()))
            ys.append(float(p[ring].mean().clamp(min=1e-30).log()))
    if len(xs) < 2:
        return float("nan")
    xt, yt = torch.tensor(xs), torch.tensor(ys)
    xc = xt - xt.mean()
    return float((xc * (yt - yt.mean())).sum() / (xc**2).sum())
