"""Feature visualisation by optimisation: the image a class or a channel responds to most.

Gradient ascent on the input (Simonyan et al. 2014 for class scores; Olah et al., Distill 2017,
for channels): one image per objective, all objectives of one batch optimised together. Each
step renders every image, takes ``crops`` random views of it (resampled to the model's input
size), scores them and takes one Adam step on the image's parameters; the objectives of a batch
are independent (Adam is elementwise and the loss is a sum of per-image terms), so one image
does not depend on the others beside it.

Two parameterisations:

* **MACO** (Fel et al., NeurIPS 2023): only the Fourier *phase* is optimised; the amplitude is
  fixed to the mean amplitude spectrum of the user's own images (measured during the dataset
  pass, :class:`~reportgen.methods.spectra.SpectrumAccumulator`), so the image keeps natural-image statistics and does not
  drift into high-frequency noise. The constant term's amplitude is the spread of the images'
  mean colour around the data's mean, so the mean colour can move within that spread. Views are
  random crops whose smallest size shrinks over the steps, with a little Gaussian noise.
* **Fourier** (Lucid / Lucent's baseline): the whole spectrum is optimised, scaled by 1/f,
  colours decorrelated with the square root of the data's own colour covariance, squashed with
  a sigmoid; views are random jitter, scale and rotation.

The accumulated |gradient| of the objective with respect to the image's pixels is MACO's
transparency (attribution) map: where the optimisation changed the image to raise the score.

Nothing here knows the report; the class score and its probability are computed by one function
each (:func:`class_objective`, :func:`class_probability`), so a task with another output head
changes them in one place.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.heads import MULTICLASS, Head
from reportgen.loading.models import extract_logits
from reportgen.methods.spectra import PixelStatistics, colour_basis

Parameterisation = Literal["maco", "fourier"]
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(model inputs N×C×h×w, owner of each input N) -> N objective values (differentiable)."""


# --------------------------------------------------------------------------- objectives


def class_objective(
    logits: torch.Tensor, classes: torch.Tensor, head: Head = MULTICLASS
) -> torch.Tensor:
    """The score a class image maximises: row i's explained score of ``classes[i]`` (the
    head's: the class' logit before the softmax, so that it is not raised by lowering the
    other classes; a binary model's z or −z; a label's logit)."""
    return head.explained_score(logits.float(), classes.to(logits.device))


def class_probability(
    logits: torch.Tensor, classes: torch.Tensor, head: Head = MULTICLASS
) -> torch.Tensor:
    """The model's probability of ``classes[i]`` on row i (the head's: softmax, or the sigmoid
    of the binary logit or of the label's)."""
    return head.explained_probability(logits.float(), classes.to(logits.device))


@dataclass(frozen=True)
class Target:
    """What one objective raises: the logit of class ``index`` (``module`` None), or how much
    channel ``index`` of ``module``'s output fires — the mean over the map of its positive part
    (a linear layer's plain mean would only follow the image's mean colour)."""

    index: int
    module: nn.Module | None = None
    name: str = "output"


class _Reached(Exception):
    """Raised by a hook once every layer the objectives need has run: the rest of the forward
    is not needed (the backward starts from those layers)."""


class LayerNotReached(RuntimeError):
    def __init__(self, layer: str) -> None:
        super().__init__(f"layer {layer} was not called in the model's forward")


def scorer(
    model: nn.Module,
    targets: Sequence[Target],
    to_map: Callable[[str, Any, int], torch.Tensor | None],
    head: Head = MULTICLASS,
) -> Scorer:
    """Scores each input by its owner's target, whatever mix of classes and channels of several
    layers one batch holds, in one forward pass that stops once the deepest layer it needs has
    run (the whole model when a class is among them). ``to_map(name, output, batch)`` turns a
    layer's output into N×C×h×w (a transformer's tokens onto their patch grid) or None."""

    def score(x: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        chosen = [targets[i] for i in owners.tolist()]
        layers = {t.name: t.module for t in chosen if t.module is not None}
        whole = any(t.module is None for t in chosen)
        outputs, logits = _run(model, x, layers, whole)
        values: list[torch.Tensor] = []
        maps = {name: to_map(name, out, x.shape[0]) for name, out in outputs.items()}
        for row, t in enumerate(chosen):
            if t.module is None:
                assert logits is not None
                index = torch.tensor([t.index], device=logits.device)
                values.append(class_objective(logits[row : row + 1], index, head)[0])
                continue
            layer_map = maps[t.name]
            if layer_map is None:
                raise LayerNotReached(f"{t.name} (no spatial output map)")
            values.append(layer_map[row, t.index].float().relu().mean())
        return torch.stack(values)

    return score


def _run(
    model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module], whole: bool
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The outputs of ``layers`` for ``x`` (and the logits when ``whole``), the forward stopped
    as soon as it has them all unless the logits are needed."""
    store: dict[str, Any] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store.setdefault(name, out[0] if isinstance(out, tuple | list) else out)
            if not whole and len(store) == len(layers):
                raise _Reached

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers.items()]
    logits = None
    try:
        out = model(x)
        if whole:
            logits = extract_logits(out)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    for name in layers:
        if name not in store:
            raise LayerNotReached(name)
    return store, logits


# --------------------------------------------------------------------------- parameterisations


class ImageParameters(Protocol):
    def parameters(self) -> list[torch.Tensor]: ...

    def pixels(self) -> torch.Tensor:
        """B×C×H×W pixels in [0, 1], differentiable in the parameters."""
        ...


def _straight_through_clip(x: torch.Tensor) -> torch.Tensor:
    """Clipped to [0, 1] on the way forward; the gradient passes as if unclipped (the phase-only
    image's values are bounded by its fixed amplitudes, so nothing runs away)."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


class MacoImage:
    """Pixels = the data's mean + basis · irfft2(amplitude · e^{iφ}): each principal colour
    component has the data's amplitude spectrum; only the phases φ are optimised."""

    def __init__(self, stats: PixelStatistics, phase: torch.Tensor) -> None:
        self.amplitude = stats.amplitude.float().to(phase.device)
        self.basis = stats.basis.float().to(phase.device)
        self.mean = stats.mean.float().to(phase.device)[None, :, None, None]
        self.size = stats.size
        self.phase = phase.detach().clone().requires_grad_(True)

    @staticmethod
    def initial(stats: PixelStatistics, generator: torch.Generator) -> torch.Tensor:
        c, h, wf = stats.amplitude.shape
        return (torch.rand(c, h, wf, generator=generator) * 2 - 1) * math.pi

    def parameters(self) -> list[torch.Tensor]:
        return [self.phase]

    def pixels(self) -> torch.Tensor:
        phase = hermitian_phase(self.phase, self.size[1])
        spectrum = torch.polar(self.amplitude.expand_as(phase), phase)
        components = torch.fft.irfft2(spectrum, s=self.size)
        mixed = torch.einsum("ck,bkhw->bchw", self.basis, components)
        return _straight_through_clip(self.mean + mixed)


def hermitian_phase(phase: torch.Tensor, width: int) -> torch.Tensor:
    """Phases whose half spectrum is that of a real image: in the column of zero horizontal
    frequency (and, for an even width, the last column) row ``k`` is the conjugate of row
    ``H − k``, so each gets the negated phase of the other; otherwise irfft2 would drop the
    mismatched part and with it some of the amplitude that is meant to stay fixed. The constant
    term keeps its free phase: its real value A·cos φ moves the mean colour within the data's
    spread."""
    columns = [0, phase.shape[-1] - 1] if width % 2 == 0 else [0]
    parts = list(phase.unbind(-1))
    for c in columns:
        column = parts[c]
        mirrored = torch.roll(torch.flip(column, dims=[-1]), 1, dims=-1)  # row k -> row H − k
        odd = column - mirrored
        if c == 0:
            odd = torch.cat([column[..., :1], odd[..., 1:]], dim=-1)
        parts[c] = odd
    return torch.stack(parts, dim=-1)


class FourierImage:
    """Lucid's parameterisation: a free spectrum scaled by 1/f, colours recorrelated with the
    square root of the data's colour covariance, a sigmoid around the data's mean colour."""

    def __init__(self, stats: PixelStatistics, spectrum: torch.Tensor) -> None:
        device = spectrum.device
        h, w = stats.size
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        scale = 1.0 / torch.maximum((fy**2 + fx**2).sqrt(), torch.tensor(1.0 / max(h, w)))
        self.scale = (scale * math.sqrt(h * w)).to(device)
        self.size = stats.size
        self.colour = colour_square_root(stats.covariance).float().to(device)
        mean = stats.mean.float().clamp(0.05, 0.95)
        self.offset = torch.logit(mean).to(device)[None, :, None, None]
        self.spectrum = spectrum.detach().clone().requires_grad_(True)

    @staticmethod
    def initial(stats: PixelStatistics, generator: torch.Generator) -> torch.Tensor:
        c, h, wf = stats.amplitude.shape
        return torch.randn(c, h, wf, 2, generator=generator) * 0.01

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def pixels(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        z = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0
        return torch.sigmoid(torch.einsum("cd,bdhw->bchw", self.colour, z) + self.offset)


def colour_square_root(covariance: torch.Tensor) -> torch.Tensor:
    """A square root of the colour covariance (principal directions scaled by their standard
    deviations) scaled to a largest column norm of 1: Lucid's decorrelation, from the user's
    data instead of ImageNet's; the identity for one channel."""
    c = covariance.shape[0]
    if c == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    basis = colour_basis(covariance).cpu()
    variances = torch.einsum("ck,cd,dk->k", basis, covariance.double().cpu(), basis)
    root = basis @ torch.diag(variances.clamp(min=0.0).sqrt())
    norm = root.norm(dim=0).max()
    return root / norm if norm > 0 else torch.eye(c, dtype=torch.float64)


# --------------------------------------------------------------------------- views


MIN_CROP = 0.4
"""MACO: the smallest crop side (a fraction of the image's) reached at the last step."""
NOISE = 0.02
"""MACO: Gaussian noise added to each view (pixel units)."""
ROTATE, SCALE, JITTER = 10.0, 0.1, 0.075
"""Fourier: rotation ±10°, scale ×(1 ± 0.1), translation ± 7.5 % of the side."""


def view_transforms(
    kind: Parameterisation, count: int, progress: float, generator: torch.Generator
) -> torch.Tensor:
    """``count`` affine sampling transforms (count×2×3, ``F.affine_grid``'s convention).

    MACO: square crops of side U[lo, 1] with lo falling linearly from 1 to :data:`MIN_CROP` as
    ``progress`` goes from 0 to 1, placed uniformly inside the image. Fourier: rotation, scale
    and translation (the image reflected at its border).
    """
    u = torch.rand(count, 4, generator=generator, dtype=torch.float64)
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    if kind == "maco":
        lo = 1.0 - (1.0 - MIN_CROP) * progress
        side = lo + (1.0 - lo) * u[:, 0]
        side[0] = 1.0  # the whole image is always one of the views
        theta[:, 0, 0] = side
        theta[:, 1, 1] = side
        theta[:, 0, 2] = (1.0 - side) * (2 * u[:, 1] - 1)
        theta[:, 1, 2] = (1.0 - side) * (2 * u[:, 2] - 1)
        return theta.float()
    angle = torch.deg2rad((2 * u[:, 0] - 1) * ROTATE)
    zoom = 1.0 / (1.0 + SCALE * (2 * u[:, 1] - 1))
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, 0, 2] = 2 * JITTER * (2 * u[:, 2] - 1)
    theta[:, 1, 2] = 2 * JITTER * (2 * u[:, 3] - 1)
    return theta.float()


def render_views(
    pixels: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], padding: str
) -> torch.Tensor:
    """N×C×h×w views: ``pixels[i]`` resampled through ``theta[i]`` (bilinear). A view that is
    the whole image at its own size is the image itself (no resampling: on the CPU that
    resampling costs about a tenth of a small model's forward+backward)."""
    theta = theta.to(pixels)
    whole = (theta == torch.eye(2, 3, dtype=theta.dtype, device=theta.device)).all(dim=(1, 2))
    if tuple(pixels.shape[2:]) != size:
        whole = torch.zeros_like(whole)
    if bool(whole.all()):
        return pixels
    rest = (~whole).nonzero()[:, 0]
    grid = F.affine_grid(theta[rest], [rest.numel(), pixels.shape[1], *size], False)
    sampled = F.grid_sample(
        pixels[rest], grid, mode="bilinear", padding_mode=padding, align_corners=False
    )
    if rest.numel() == pixels.shape[0]:
        return sampled
    parts = iter(sampled.unbind(0))
    return torch.stack([pixels[i] if bool(w) else next(parts) for i, w in enumerate(whole)])


def resize_to(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The whole images at the model's input size (unchanged when they are that size)."""
    if tuple(pixels.shape[2:]) == size:
        return pixels
    scale = size[0] / pixels.shape[2]
    return F.interpolate(
        pixels, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
    ).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- the optimisation


def objective_seed(seed: int, key: str) -> int:
    """A seed for one objective from the run's seed and the objective's name (stable across
    runs, processes and batch compositions)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Budget:
    steps: int
    crops: int
    lr: float
    batch_size: int
    """Views per forward+backward pass (the views of one step are split into such passes)."""


@dataclass(frozen=True)
class Optimised:
    pixels: torch.Tensor
    """B×C×H×W final images in [0, 1] (detached, on the device)."""
    history: torch.Tensor
    """steps×B objective value at each step (mean over that step's views)."""
    transparency: torch.Tensor
    """B×H×W accumulated |∂objective/∂pixel| (summed over colour channels)."""


def make_image(
    kind: Parameterisation, stats: PixelStatistics, generators: Sequence[torch.Generator]
) -> MacoImage | FourierImage:
    """The batch's image parameters, each objective's initialised from its own generator."""
    cls = MacoImage if kind == "maco" else FourierImage
    initial = torch.stack([cls.initial(stats, g) for g in generators])
    return cls(stats, initial.to(stats.amplitude.device))


def optimise(
    kind: Parameterisation,
    stats: PixelStatistics,
    score: Scorer,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    seeds: Sequence[int],
    budget: Budget,
    input_size: tuple[int, int],
    device: torch.device,
    steps: Callable[[range], Iterable[int]] = iter,
) -> Optimised:
    """Optimise one image per seed (objective) for ``budget.steps`` Adam steps (learning rate
    on a cosine schedule to zero) on ``budget.crops`` views each: steps × crops
    forward+backward image passes per objective. Only input gradients are taken (the model's
    parameters get none). ``steps`` wraps the step range (a progress bar)."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    stats = PixelStatistics(
        stats.amplitude.to(device), stats.basis, stats.mean.to(device), stats.covariance, stats.size
    )
    image = make_image(kind, stats, generators)
    optimiser = torch.optim.Adam(image.parameters(), lr=budget.lr)
    b, k, total = len(seeds), budget.crops, budget.steps
    owners = torch.arange(b, device=device).repeat_interleave(k)
    history = torch.zeros(total, b, dtype=torch.float64)
    transparency = torch.zeros(b, *stats.size, device=device)
    with torch.enable_grad():
        for step in steps(range(total)):
            progress = step / max(total - 1, 1)
            pixels = image.pixels()
            leaf = pixels.detach().requires_grad_(True)
            grad, values = _views_gradient(
                kind, leaf, score, normalise, generators, owners, k, progress, budget, input_size
            )
            transparency += grad.abs().sum(1)
            optimiser.zero_grad(set_to_none=True)
            pixels.backward(-grad)  # ascent: the optimiser minimises
            for group in optimiser.param_groups:
                group["lr"] = budget.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            optimiser.step()
            history[step] = values.view(b, k).mean(1).double().cpu()
    with torch.no_grad():
        final = image.pixels().detach()
    return Optimised(final, history, transparency)


def _views_gradient(
    kind: Parameterisation,
    leaf: torch.Tensor,
    score: Scorer,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    generators: Sequence[torch.Generator],
    owners: torch.Tensor,
    k: int,
    progress: float,
    budget: Budget,
    input_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """d(mean objective over each image's views)/d pixels of one step, and the views' values;
    the views go through the model ``budget.batch_size`` at a time."""
    theta = torch.cat([view_transforms(kind, k, progress, g) for g in generators])
    noise = None
    if kind == "maco":
        shape = (k, leaf.shape[1], *input_size)
        noise = torch.cat([torch.randn(shape, generator=g) for g in generators])
    padding = "border" if kind == "maco" else "reflection"
    grad = torch.zeros_like(leaf)
    values = torch.empty(owners.shape[0], device=leaf.device)
    for start in range(0, owners.shape[0], budget.batch_size):
        part = slice(start, start + budget.batch_size)
        # The images these views come from, each repeated for its views (an expand: the
        # backward is a plain sum, the same bytes every time).
        first, last = start // k, (min(start + budget.batch_size, owners.shape[0]) - 1) // k
        repeated = leaf[first : last + 1, None].expand(-1, k, -1, -1, -1)
        source = repeated.reshape(-1, *leaf.shape[1:])[start - first * k :][: budget.batch_size]
        views = render_views(source, theta[part].to(leaf.device), input_size, padding)
        if noise is not None:
            views = views + NOISE * (1.0 - progress) * noise[part].to(leaf.device)
        scored = score(normalise(views), owners[part])
        # Each image's views average to its value; the sum keeps the images apart.
        (g,) = torch.autograd.grad(scored.sum() / k, leaf)
        grad += g
        values[part] = scored.detach()
    return grad, values


def evaluate(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    normalise: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    input_size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """``fn(model inputs, owners)`` on each whole image at the model's input size (forward
    passes only, ``batch_size`` images at a time), concatenated."""
    out = []
    owners = torch.arange(pixels.shape[0], device=pixels.device)
    with torch.inference_mode():
        for start in range(0, pixels.shape[0], batch_size):
            x = normalise(resize_to(pixels[start : start + batch_size], input_size))
            out.append(fn(x, owners[start : start + batch_size]).float())
    return torch.cat(out)
