"""Feature visualisation's science against independent references: the class score and its
probability, the data's spectrum (NumPy's FFT), MACO's fixed amplitude, the views, and the
optimisation itself on models whose preferred input is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.methods import feature_viz as fv
from reportgen.methods import spectra


def _stats(images: torch.Tensor) -> spectra.PixelStatistics:
    """The pixel statistics of N×C×H×W images in [0, 1], measured as the pass does (identity
    preprocessing)."""
    acc = spectra.SpectrumAccumulator()
    acc.update(images)
    spectrum = acc.result()
    assert spectrum is not None
    c = images.shape[1]
    return spectrum.in_pixels(torch.zeros(c), torch.ones(c))


def test_class_objective_and_probability_match_a_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 7))
    classes = np.array([0, 6, 3, 3, 1])
    t = torch.from_numpy(logits)
    got = fv.class_objective(t, torch.from_numpy(classes)).numpy()
    np.testing.assert_allclose(got, logits[np.arange(5), classes], rtol=1e-6)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    want = (exp / exp.sum(1, keepdims=True))[np.arange(5), classes]
    prob = fv.class_probability(t, torch.from_numpy(classes)).numpy()
    np.testing.assert_allclose(prob, want, rtol=1e-5)


def test_spectrum_matches_numpy_and_does_not_depend_on_batch_order() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 12, 16, generator=gen) * 2 - 0.5
    whole = spectra.SpectrumAccumulator()
    for start in range(0, 10, 4):
        whole.update(x[start : start + 4])
    spectrum = whole.result()
    assert spectrum is not None and spectrum.count == 10 and spectrum.size == (12, 16)
    spec = np.fft.rfft2(x.double().numpy())
    ref = np.mean(np.abs(spec) ** 2, axis=0)
    np.testing.assert_allclose(spectrum.power.numpy(), ref, rtol=1e-5)
    cross = np.einsum("bchw,bdhw->cdhw", spec, spec.conj()) / 10
    np.testing.assert_allclose(spectrum.cross.numpy(), cross, rtol=1e-5, atol=1e-4)
    values = x.double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(spectrum.mean.numpy(), values.mean(1), rtol=1e-6)
    np.testing.assert_allclose(
        spectrum.covariance.numpy(), np.cov(values, bias=True), rtol=1e-5, atol=1e-7
    )
    # The same batches split between two accumulators (two torchrun ranks), folded together in
    # either order: the same bytes.
    a, b = spectra.SpectrumAccumulator(), spectra.SpectrumAccumulator()
    a.update(x[0:4])
    a.update(x[8:10])
    b.update(x[4:8])
    for first, second in ((a, b), (b, a)):
        merged = spectra.SpectrumAccumulator()
        merged.add(first)
        merged.add(second)
        assert merged.cross is not None and whole.cross is not None
        assert torch.equal(merged.cross, whole.cross)
        assert merged.sums is not None and whole.sums is not None
        assert torch.equal(merged.sums, whole.sums)


def test_pixel_statistics_undo_the_preprocessing_in_the_principal_colour_basis() -> None:
    gen = torch.Generator().manual_seed(1)
    grey = torch.rand(6, 1, 8, 8, generator=gen)
    pixels = 0.6 * grey + 0.4 * torch.rand(6, 3, 8, 8, generator=gen)  # correlated colours
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    acc = spectra.SpectrumAccumulator()
    acc.update((pixels - mean[:, None, None]) / std[:, None, None])
    spectrum = acc.result()
    assert spectrum is not None
    stats = spectrum.in_pixels(mean, std)
    p = pixels.double().numpy()
    values = p.transpose(1, 0, 2, 3).reshape(3, -1)
    cov = np.cov(values, bias=True)
    np.testing.assert_allclose(stats.covariance.numpy(), cov, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats.mean.numpy(), values.mean(1), rtol=1e-5)
    # The basis: orthonormal principal directions, largest variance first.
    basis = stats.basis.numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-10)
    variances = np.einsum("ck,cd,dk->k", basis, cov, basis)
    np.testing.assert_allclose(np.sort(variances)[::-1], np.linalg.eigvalsh(cov)[::-1], rtol=1e-4)
    assert (np.diff(variances) <= 0).all()
    # Each component's amplitude: the RMS spectrum of the images projected on it.
    components = np.einsum("ck,bchw->bkhw", basis, p)
    ref = np.sqrt(np.mean(np.abs(np.fft.rfft2(components)) ** 2, axis=0))
    got = stats.amplitude.numpy()
    np.testing.assert_allclose(got[:, 1:, :], ref[:, 1:, :], rtol=1e-4)
    np.testing.assert_allclose(got[:, 0, 1:], ref[:, 0, 1:], rtol=1e-4)
    # The constant term: the spread (RMS deviation) of the images' means around the data's.
    spread = 64 * components.mean(axis=(2, 3)).std(axis=0)
    np.testing.assert_allclose(got[:, 0, 0], spread, rtol=1e-4)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 17), (16, 15)])
def test_maco_image_keeps_the_amplitude_and_changes_only_phases(h: int, w: int) -> None:
    """Each principal colour component of the image has exactly the data's amplitude at every
    frequency but the constant term (whose real value moves the mean), whatever the phases —
    also in the columns whose rows hold each other's conjugates; small amplitudes, so nothing
    is clipped."""
    gen = torch.Generator().manual_seed(2)
    stats = _stats(torch.rand(4, 3, h, w, generator=gen) * 0.2)
    stats = spectra.PixelStatistics(
        stats.amplitude, stats.basis, torch.full((3,), 0.5), stats.covariance, (h, w)
    )
    phase = torch.stack([fv.MacoImage.initial(stats, gen) for _ in range(2)])
    image = fv.MacoImage(stats, phase)
    pixels = image.pixels().detach()
    assert pixels.shape == (2, 3, h, w)
    assert float(pixels.min()) > 0.0 and float(pixels.max()) < 1.0  # not clipped
    components = np.einsum("ck,bchw->bkhw", stats.basis.numpy(), pixels.double().numpy() - 0.5)
    spectrum = np.abs(np.fft.rfft2(components))
    amplitude = stats.amplitude.numpy()[None].repeat(2, 0)
    spectrum[..., 0, 0] = amplitude[..., 0, 0] = 0.0
    np.testing.assert_allclose(spectrum, amplitude, atol=1e-5)
    assert image.parameters() == [image.phase]


def test_resized_statistics_keep_the_power_per_pixel() -> None:
    """Resampled to a larger image, the amplitude gives the same pixel variance (Parseval)."""
    gen = torch.Generator().manual_seed(3)
    stats = _stats(torch.rand(8, 1, 16, 16, generator=gen))

    def variance(s: spectra.PixelStatistics) -> float:
        a = s.amplitude.clone()
        a[:, 0, 0] = 0
        full = a**2
        full[:, :, 1:-1] *= 2  # the half spectrum stands for both signs of the column frequency
        n = s.size[0] * s.size[1]
        return float(full.sum() / n**2)

    big = stats.resized((32, 32))
    assert big.amplitude.shape == (1, 32, 17)
    assert variance(big) == pytest.approx(variance(stats), rel=0.1)
    assert stats.resized((16, 16)) is stats


def test_spectral_slope_of_known_spectra() -> None:
    gen = torch.Generator().manual_seed(4)
    h = w = 64
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    radius = (fy**2 + fx**2).sqrt().clamp(min=1.0 / h)
    phase = torch.rand(1, h, w // 2 + 1, generator=gen) * 2 * torch.pi
    pink = torch.fft.irfft2(torch.polar(1.0 / radius, phase), s=(h, w))  # power ∝ f^-2
    white = torch.randn(1, h, w, generator=gen)
    assert spectra.spectral_slope(pink) == pytest.approx(-2.0, abs=0.15)
    assert spectra.spectral_slope(white) == pytest.approx(0.0, abs=0.2)


def test_views_whole_image_first_and_crops_shrinking_inside_the_image() -> None:
    gen = torch.Generator().manual_seed(5)
    early = fv.view_transforms("maco", 64, 0.0, gen)
    late = fv.view_transforms("maco", 64, 1.0, gen)
    for theta in (early, late):
        side = theta[:, 0, 0]
        assert torch.equal(theta[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        assert bool(((theta[:, :2, 2].abs() + side[:, None]) <= 1 + 1e-6).all())  # inside
    assert float(early[:, 0, 0].min()) == pytest.approx(1.0)
    assert float(late[:, 0, 0].min()) >= fv.MIN_CROP and float(late[:, 0, 0].min()) < 0.6
    jitter = fv.view_transforms("fourier", 64, 0.5, gen)
    zoom = jitter[:, :, :2].det().abs().sqrt()
    assert bool((zoom > 1 / 1.11).all() and (zoom < 1 / 0.89).all())
    # The identity view of an image is the image.
    x = torch.rand(2, 3, 10, 12, generator=gen)
    same = fv.render_views(x, early[:1].repeat(2, 1, 1), (10, 12), "border")
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


class RedMinusBlue(nn.Module):
    """Logit 0: mean red − mean blue; logit 1: its negative (a model whose preferred input is
    known: all red, or all blue)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
        return torch.stack([score, -score], dim=1)


@pytest.mark.parametrize("kind", ["maco", "fourier"])
def test_optimisation_raises_the_objective_and_keeps_images_apart(kind: str) -> None:
    gen = torch.Generator().manual_seed(6)
    # Images of varied colours: MACO may move an image's mean colour within their spread.
    colours = torch.rand(16, 3, 1, 1, generator=gen) * 0.6
    stats = _stats(colours + torch.rand(16, 3, 16, 16, generator=gen) * 0.4)
    model = RedMinusBlue()
    classes = torch.tensor([0, 1])
    seeds = [fv.objective_seed(0, "class:0"), fv.objective_seed(0, "class:1")]
    budget = fv.Budget(steps=20, crops=2, lr=fv_lr(kind), batch_size=3)

    def run(cls: torch.Tensor, ss: list[int]) -> fv.Optimised:
        return fv.optimise(
            kind,  # type: ignore[arg-type]
            stats,
            fv.scorer(model, [fv.Target(int(c)) for c in cls], lambda _n, _o, _b: None),
            lambda p: p,
            ss,
            budget,
            (16, 16),
            torch.device("cpu"),
        )

    both = run(classes, seeds)
    history = both.history.numpy()
    assert (history[-3:].mean(0) > history[:3].mean(0) + 0.05).all(), history
    red, blue = both.pixels[0].mean((1, 2)), both.pixels[1].mean((1, 2))
    assert float(red[0] - red[2]) > 0.05 and float(blue[2] - blue[0]) > 0.05
    assert both.transparency.shape == (2, 16, 16) and float(both.transparency.min()) >= 0
    # An objective's image does not depend on the others in its batch.
    alone = run(classes[1:], seeds[1:])
    torch.testing.assert_close(alone.pixels[0], both.pixels[1], atol=1e-5, rtol=0)


def fv_lr(kind: str) -> float:
    return 1.0 if kind == "maco" else 0.05


class Stops(nn.Module):
    """A conv and a second conv, then a layer that must never run when only the convs' channels
    are scored."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Linear(5, 2)
        self.stop = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv(x))
        if self.stop:
            raise AssertionError("ran past the scored layers")
        return self.head(y.mean((2, 3)))


def test_one_forward_scores_classes_and_channels_of_several_layers() -> None:
    torch.manual_seed(0)
    model = Stops()
    x = torch.randn(4, 3, 8, 8)
    targets = [
        fv.Target(0, model.conv, "conv"),
        fv.Target(3, model.conv, "conv"),
        fv.Target(4, model.conv2, "conv2"),
        fv.Target(1),
    ]

    def to_map(_name: str, out: torch.Tensor, _n: int) -> torch.Tensor:
        return out

    a, b = model.conv(x), model.conv2(model.conv(x))
    channels = fv.scorer(model, targets, to_map)
    got = channels(x[:3], torch.tensor([0, 1, 2]))  # channels only: stops after conv2
    want = torch.stack([a[0, 0].relu().mean(), a[1, 3].relu().mean(), b[2, 4].relu().mean()])
    torch.testing.assert_close(got, want)
    model.stop = False  # a class among them: the whole model runs
    got = channels(x, torch.tensor([2, 3, 0, 3]))
    logits = model.head(b.mean((2, 3)))
    want = torch.stack([b[0, 4].relu().mean(), logits[1, 1], a[2, 0].relu().mean(), logits[3, 1]])
    torch.testing.assert_close(got, want)
    assert not model.conv._forward_hooks and not model.conv2._forward_hooks  # hooks gone
