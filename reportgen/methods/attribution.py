"""Gradient attribution methods: compute only (tensors in, tensors out, all on the device).

One function per method; each explains ``targets[i]`` for ``inputs[i]`` and batches its samples
(noisy copies, path points) into forward/backward passes of at most ``batch_size`` images. Since
the model is in eval mode, each image's logit depends on that image only, so the gradient of the
summed target logits of a batch gives every image's own gradient in one backward pass.

Guided backprop changes ReLU's backward pass without touching the model: a
:class:`~torch.overrides.TorchFunctionMode` routes every ReLU call made during the forward pass
(``nn.ReLU`` modules — however often one is reused — and functional ``F.relu``/``torch.relu``/
``Tensor.relu``, in place or not, and ReLU6 / LeakyReLU) through :class:`GuidedGate`. Module-hook approaches miss the
functional calls (torchvision's DenseNet ends with ``F.relu(features, inplace=True)``) and trip
over in-place ReLUs; a function mode sees them all and leaves no hook or modified module behind.
Grad-CAM uses one forward hook, removed in ``finally``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.heads import MULTICLASS, Head
from reportgen.loading.models import extract_logits
from reportgen.methods.hooks import hooks

IGMethod = Literal["gausslegendre", "riemann_middle"]


def target_logits(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head = MULTICLASS
) -> torch.Tensor:
    """B explained scores, the head's (:meth:`Head.explained_score`): the target class' logit
    (before the softmax or sigmoid); for a binary head ``z`` or ``−z``."""
    return head.explained_score(extract_logits(model(x)).float(), targets.to(x.device))


def _batched_input_gradients(
    model: nn.Module,
    points: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    weights: torch.Tensor | None = None,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """d score[target] / d input for every row of ``points`` (N×C×H×W), ``batch_size`` at a
    time; the score is the head's explained score.

    ``weights`` (N) multiplies each row's gradient (quadrature weights).
    """
    out = torch.empty_like(points)
    with torch.enable_grad():
        for start in range(0, points.shape[0], batch_size):
            x = points[start : start + batch_size].detach().clone().requires_grad_(True)
            score = target_logits(model, x, targets[start : start + batch_size], head)
            if weights is not None:
                score = score * weights[start : start + batch_size]
            (grad,) = torch.autograd.grad(score.sum(), x)
            out[start : start + batch_size] = grad
    return out


def input_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 32,
    *,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """Vanilla gradient (Simonyan et al.): Q×C×H×W d score[target] / d input."""
    return _batched_input_gradients(model, inputs, targets, batch_size, head=head)


def saliency_map(gradients: torch.Tensor) -> torch.Tensor:
    """Q×C×H×W gradients -> Q×H×W: max over colour channels of the absolute value."""
    return gradients.abs().amax(dim=1)


def smoothgrad_noise(
    image: torch.Tensor, samples: int, noise_level: float, seed: int
) -> torch.Tensor:
    """samples×C×H×W Gaussian noise for one image, σ = noise_level · (max − min of the image).

    Drawn on the CPU from its own seeded generator, so the noise does not depend on the device,
    the batch size, or the other query images.
    """
    gen = torch.Generator().manual_seed(seed)
    sigma = noise_level * float(image.max() - image.min())
    noise = torch.randn((samples, *image.shape), generator=gen, dtype=torch.float32)
    return (noise * sigma).to(image.device, image.dtype)


def smoothgrad(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int = 32,
    *,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al.): the gradient averaged over noisy copies, Q×C×H×W.

    Image ``i`` uses :func:`smoothgrad_noise` with seed ``seed + i``.
    """
    q = inputs.shape[0]
    noisy = torch.cat(
        [inputs[i] + smoothgrad_noise(inputs[i], samples, noise_level, seed + i) for i in range(q)]
    )
    grads = _batched_input_gradients(
        model, noisy, targets.repeat_interleave(samples), batch_size, head=head
    )
    return grads.view(q, samples, *inputs.shape[1:]).mean(dim=1)


def ig_rule(steps: int, method: IGMethod) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1] for the path integral of integrated gradients.

    ``gausslegendre``: Gauss–Legendre nodes mapped from [-1, 1] (exact for polynomials of degree
    2·steps−1); ``riemann_middle``: midpoints (k + ½)/steps, weights 1/steps.
    """
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"unknown integration method {method!r}")


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    baseline: torch.Tensor | None = None,
    steps: int = 32,
    method: IGMethod = "gausslegendre",
    batch_size: int = 32,
    *,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al.), Q×C×H×W.

    (x − baseline) · Σₖ wₖ ∇f(baseline + αₖ(x − baseline)), with the rule of :func:`ig_rule`.
    ``baseline``: broadcastable to ``inputs`` (model input space); default zeros.
    """
    base = torch.zeros_like(inputs) if baseline is None else baseline.to(inputs).expand_as(inputs)
    alphas_np, weights_np = ig_rule(steps, method)
    alphas = torch.tensor(alphas_np, dtype=inputs.dtype, device=inputs.device)
    weights = torch.tensor(weights_np, dtype=torch.float32, device=inputs.device)
    q = inputs.shape[0]
    delta = inputs - base
    # Q·steps path points, image-major, so a batch holds consecutive steps of one or more images.
    points = (base[:, None] + alphas.view(1, -1, 1, 1, 1) * delta[:, None]).flatten(0, 1)
    grads = _batched_input_gradients(
        model,
        points,
        targets.repeat_interleave(steps),
        batch_size,
        weights=weights.repeat(q),
        head=head,
    )
    return delta * grads.view(q, steps, *inputs.shape[1:]).sum(dim=1)


# --------------------------------------------------------------------------- guided backprop


class GuidedGate(torch.autograd.Function):
    """A ReLU-family gate whose backward pass is guided (Springenberg et al.).

    Forward: ``clamp(x, lo, hi)`` (ReLU: lo=0, hi=inf; ReLU6 and hard-tanh used as ReLU6: lo=0,
    hi=6) or, with ``slope`` set, LeakyReLU. Backward: only positive gradients pass, times the
    gate's own derivative at the input (1 where it lets the input through, 0 where it clamps,
    ``slope`` on LeakyReLU's negative side). For ReLU this is exactly guided backprop's rule.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, lo: float, hi: float, slope: float | None
    ) -> torch.Tensor:
        if slope is None:
            out = x.clamp(min=lo, max=hi)
            deriv = ((x > lo) & (x < hi)).to(x.dtype)
        else:
            out = F.leaky_relu(x, slope)
            deriv = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))
        # Save the derivative, not the input: an in-place caller overwrites the input afterwards.
        ctx.save_for_backward(deriv)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (deriv,) = ctx.saved_tensors
        return grad.clamp(min=0) * deriv, None, None, None


_RELU_OUT_OF_PLACE: set[Callable[..., Any]] = {torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE: set[Callable[..., Any]] = {torch.relu_, torch.Tensor.relu_, F.relu_}
_INF = float("inf")


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


class GuidedReLUMode(TorchFunctionMode):
    """While active, every ReLU-family call (ReLU, ReLU6, hard-tanh with a floor of 0, i.e. ReLU6
    written as ``Hardtanh(0, 6)``, LeakyReLU; in place or not, module or functional) runs
    :class:`GuidedGate`. Other activations are left alone and counted as not guided."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.relu:
            return self._guided(args[0], bool(_arg(args, kwargs, 1, "inplace", False)), 0.0, _INF)
        if func in _RELU_OUT_OF_PLACE:
            return self._guided(args[0], False, 0.0, _INF)
        if func in _RELU_IN_PLACE:
            return self._guided(args[0], True, 0.0, _INF)
        if func is F.relu6:
            return self._guided(args[0], bool(_arg(args, kwargs, 1, "inplace", False)), 0.0, 6.0)
        if func in (F.hardtanh, F.hardtanh_):
            lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
            hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
            inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
            if lo == 0.0:  # a ReLU with a ceiling (nn.ReLU6 is Hardtanh(0, 6))
                return self._guided(args[0], inplace, lo, hi)
        if func in (F.leaky_relu, F.leaky_relu_):
            slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            inplace = func is F.leaky_relu_ or bool(_arg(args, kwargs, 2, "inplace", False))
            return self._guided(args[0], inplace, 0.0, _INF, slope)
        return func(*args, **kwargs)

    def _guided(
        self, x: torch.Tensor, inplace: bool, lo: float, hi: float, slope: float | None = None
    ) -> torch.Tensor:
        self.calls += 1
        out = GuidedGate.apply(x, lo, hi, slope)
        if not inplace:
            return out
        # Keep in-place semantics (callers may rely on ``x`` itself changing): copy the guided
        # result into x, so autograd routes x's gradient through the guided gate.
        x.copy_(out)
        return x


SMOOTH_ACTIVATIONS = (
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
)


def smooth_activations(model: nn.Module) -> list[str]:
    """Names of the smooth activation types a model uses (guided backprop does not apply to them)."""
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, SMOOTH_ACTIVATIONS)})


def guided_backprop(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 32,
    *,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """Guided backprop (Springenberg et al.), Q×C×H×W.

    Raises :class:`NotApplicable` when the forward pass made no ReLU-family call the mode could
    see (a TorchScript model, or a model with only smooth activations such as GELU or SiLU): the
    result would silently be the plain gradient.
    """
    mode = GuidedReLUMode()
    with mode:
        grads = _batched_input_gradients(model, inputs, targets, batch_size, head=head)
    if mode.calls == 0:
        smooth = smooth_activations(model)
        if smooth:
            raise NotApplicable(
                f"not applicable: the model's activations ({', '.join(smooth)}) are smooth; "
                "guided backprop is defined for ReLU-family gates only"
            )
        raise NotApplicable("not applicable: the forward pass made no ReLU-family call")
    return grads


class NotApplicable(RuntimeError):
    """An attribution method that is not defined for this model (the message says why)."""


# --------------------------------------------------------------------------- Grad-CAM


def spatial_layers_in_call_order(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, int]]:
    """(module name, H·W) of every submodule output that is a 4-D map, in the order produced.

    Runs one forward pass on ``sample`` with temporary hooks (removed on exit, also on error).
    A container's hook fires after its children's, so a stage's name follows its blocks' names.
    """
    seen: list[tuple[str, int]] = []

    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((name, int(out.shape[2] * out.shape[3])))

        return hook

    def register() -> list[Any]:
        return [m.register_forward_hook(make(n)) for n, m in model.named_modules() if n]

    with torch.inference_mode(), hooks(register):
        model(sample)
    return seen


def default_gradcam_layer(model: nn.Module, sample: torch.Tensor) -> str:
    """The last convolutional stage: the last module whose output is a map larger than 1×1."""
    spatial = [name for name, hw in spatial_layers_in_call_order(model, sample) if hw > 1]
    if not spatial:
        raise ValueError("the model has no layer with a spatial (N×C×H×W) output for Grad-CAM")
    return spatial[-1]


def grad_cam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layer: nn.Module,
    batch_size: int = 32,
    *,
    head: Head = MULTICLASS,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) at the layer's resolution, Q×h×w, ReLU applied.

    Channel weights are the spatial means of d score[target] / d activation (the head's
    explained score). A layer called
    several times per forward pass is explained at its last call.
    """
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        act = out[0] if isinstance(out, (tuple, list)) else out
        captured.append(act)
        # Hand the rest of the network a copy, so an in-place op downstream cannot overwrite the
        # activation we differentiate against.
        return act.clone() if not isinstance(out, (tuple, list)) else out

    cams = []
    with torch.enable_grad(), hooks(lambda: [layer.register_forward_hook(hook)]):
        for start in range(0, inputs.shape[0], batch_size):
            captured.clear()
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            score = target_logits(model, x, targets[start : start + batch_size], head)
            if not captured:
                raise RuntimeError("the Grad-CAM layer was not called in the forward pass")
            act = captured[-1]
            (grad,) = torch.autograd.grad(score.sum(), act)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cams.append((weights * act).sum(dim=1).clamp(min=0).detach())
    return torch.cat(cams)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Q×h×w -> Q×H×W, bilinear (the usual way to lay a Grad-CAM over its image)."""
    if tuple(maps.shape[1:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when one is constant."""
    ra = _ranks(a.ravel())
    rb = _ranks(b.ravel())
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0 or math.isnan(sa) or math.isnan(sb):
        return float("nan")
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's definition needs."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    ranks = np.empty(len(v), dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    mean_rank = (starts + ends - 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
