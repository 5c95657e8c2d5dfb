"""Receptive fields of layer units, measured on the model itself rather than assumed.

Method (the *linearised gradient footprint*): a unit's theoretical receptive field is the set of
input pixels connected to it through the network graph. We make every connection count and then
ask autograd which pixels are connected:

1. a deep copy of the model runs in float64 with every weight matrix/kernel set to the positive
   constant ``1/fan_in``, biases to 0, BatchNorm statistics to identity, and a tiny constant
   positive input. Nothing can then cancel out and nothing saturates or dies (ReLU, ReLU6 and
   friends see small positive values), so the gradient of a unit is non-zero exactly on its
   connected pixels;
2. a :class:`~torch.overrides.TorchFunctionMode` rewrites, during that forward only, the few
   operations whose gradient would hide connections or add non-local ones: max-pooling (gradient
   only at the argmax) becomes a window mean with the same kernel/stride/padding/dilation/ceil
   mode; global pooling and spatial means (squeeze-excitation context, the classifier head) are
   detached; group/instance/layer norm become the identity (their statistics span the image);
3. one backward pass over a batch of three identical inputs gives three footprints: the top-left
   unit's (its last row/column is never clipped by the image), and the two bottom-right units'
   (their first row/column is never clipped). The mapping from a unit to its box is affine, so these
   give the stride, the offset and the size per axis: unit ``(y, x)`` covers input rows
   ``[y*stride + offset, y*stride + offset + size)`` (half-open), likewise for columns.
   Negative starts and ends past the image are the padding the unit sees.

The probe input grows until all three footprints are unclipped where they are read, so the
result does not depend on the image size the model is used with. Dilated kernels give sparse
footprints; the receptive field is their bounding box. The footprint is taken for the sum over
the layer's channels, i.e. the union over channels (models that route channels through different
paths, such as ShuffleNet's channel split, may give some channels a smaller field).

Limits: operations the mode does not know that take a max over space (e.g. ``torch.amax`` over
the spatial axes used as a pooling) would shrink the footprint; functional spatial means are
handled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.errors import ReportgenError
from reportgen.loading.types import find_layer


class ReceptiveFieldError(ReportgenError):
    """The receptive field of a layer cannot be measured (not spatial, not affine, too large)."""


@dataclass(frozen=True)
class AxisField:
    """Along one axis, unit ``u`` covers input indices ``[u*stride + offset, ... + size)``."""

    size: int
    stride: int
    offset: int

    def span(self, u: int) -> tuple[int, int]:
        start = u * self.stride + self.offset
        return start, start + self.size


@dataclass(frozen=True)
class ReceptiveField:
    """Where a layer's units look in the input (rows and columns are independent)."""

    layer: str
    rows: AxisField
    cols: AxisField
    probe_size: int
    """Side of the square probe input the measurement needed."""

    @property
    def size(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    @property
    def stride(self) -> tuple[int, int]:
        return self.rows.stride, self.cols.stride

    @property
    def offset(self) -> tuple[int, int]:
        return self.rows.offset, self.cols.offset

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), half-open, unclipped (may leave the image)."""
        top, bottom = self.rows.span(y)
        left, right = self.cols.span(x)
        return top, left, bottom, right

    def clip(self, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Padding the unit's field needs beyond a ``height``×``width`` image: top, left, bottom, right."""
        top, left, bottom, right = self.box(y, x)
        return max(0, -top), max(0, -left), max(0, bottom - height), max(0, right - width)


def crop_field(
    image: torch.Tensor, field: ReceptiveField, y: int, x: int, fill: float
) -> torch.Tensor:
    """The unit's field cut from ``image`` (C×H×W); parts outside the image are ``fill``."""
    c, h, w = image.shape
    top, left, bottom, right = field.box(y, x)
    out = torch.full((c, bottom - top, right - left), fill, dtype=image.dtype, device=image.device)
    t, lft, b, r = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if t < b and lft < r:
        out[:, t - top : b - top, lft - left : r - left] = image[:, t:b, lft:r]
    return out


# --------------------------------------------------------------------------- the probe

_GLOBAL_REDUCTIONS = {
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "logsumexp",
    "std",
    "var",
    "norm",
}
_NORMS = {"group_norm", "layer_norm", "instance_norm", "local_response_norm"}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _window_mean(
    x: torch.Tensor,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
) -> torch.Tensor:
    """Mean over the same windows a max-pool would take (same output shape)."""
    k, s = _pair(kernel), _pair(stride if stride not in (None, [], ()) else kernel)
    p, d = _pair(padding), _pair(dilation)
    if d == (1, 1):
        return F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode, count_include_pad=True)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    c, h, w = x.shape[1:]
    out_hw = []
    for size, kk, ss, pp, dd in zip((h, w), k, s, p, d, strict=True):
        span = (size + 2 * pp - dd * (kk - 1) - 1) / ss + 1
        n = math.ceil(span) if ceil_mode else math.floor(span)
        # torch drops a last ceil-mode window that would start inside the right padding
        if ceil_mode and (n - 1) * ss >= size + pp:
            n -= 1
        out_hw.append(n)
    extra = [
        max(0, (n - 1) * ss + dd * (kk - 1) + 1 - (size + 2 * pp))
        for n, size, kk, ss, pp, dd in zip(out_hw, (h, w), k, s, p, d, strict=True)
    ]
    xp = F.pad(x, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]))
    weight = torch.full((c, 1, k[0], k[1]), 1.0 / (k[0] * k[1]), dtype=x.dtype, device=x.device)
    y = F.conv2d(xp, weight, stride=s, dilation=d, groups=c)[..., : out_hw[0], : out_hw[1]]
    return y[0] if squeeze else y


def _collapsed_conv(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
    """A conv with every weight equal, computed on one channel and broadcast.

    With all weights equal, every output channel is the same map: the mean over the input
    channels filtered by a constant kernel. Computing it once and copying it to every channel
    makes the probe's cost nearly independent of the width of the network.
    """
    x, weight = args[0], _arg(args, kwargs, 1, "weight", None)
    stride = _arg(args, kwargs, 3, "stride", 1)
    padding = _arg(args, kwargs, 4, "padding", 0)
    dilation = _arg(args, kwargs, 5, "dilation", 1)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    kh, kw = weight.shape[-2:]
    kernel = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
    y = F.conv2d(x.mean(1, keepdim=True), kernel, None, stride, padding, dilation)
    # Materialised, not a view: models update conv outputs in place (ReLU, ``out += identity``).
    y = y.expand(y.shape[0], weight.shape[0], *y.shape[2:]).contiguous()
    return y[0] if squeeze else y


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _is_global(dims: Any, ndim: int) -> bool:
    if dims is None:
        return False
    if isinstance(dims, int):
        dims = [dims]
    try:
        norm = {int(d) % ndim for d in dims}
    except TypeError:
        return False
    return ndim >= 3 and {ndim - 1, ndim - 2} <= norm


class _Linearise(TorchFunctionMode):
    """Rewrites the operations whose gradient would misstate connectivity (see module doc)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "conv2d":
            return _collapsed_conv(args, kwargs)
        if name == "batch_norm" or name in _NORMS:
            return args[0]
        if name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices"):
            x = args[0]
            kernel = _arg(args, kwargs, 1, "kernel_size", None)
            y = _window_mean(
                x,
                kernel,
                _arg(args, kwargs, 2, "stride", None),
                _arg(args, kwargs, 3, "padding", 0),
                _arg(args, kwargs, 4, "dilation", 1),
                bool(_arg(args, kwargs, 5, "ceil_mode", False)),
            )
            wants_indices = name == "max_pool2d_with_indices" or bool(
                _arg(args, kwargs, 6, "return_indices", False)
            )
            return (y, torch.zeros_like(y, dtype=torch.long)) if wants_indices else y
        if name in (
            "adaptive_max_pool2d",
            "adaptive_max_pool2d_with_indices",
            "adaptive_avg_pool2d",
        ):
            x = args[0]
            size = _arg(args, kwargs, 1, "output_size", None)
            y = F.adaptive_avg_pool2d(x, size)
            if y.shape[-2:] == (1, 1) and x.shape[-2:] != (1, 1):
                y = y.detach()  # context, not receptive field
            wants_indices = name.endswith("_with_indices") or bool(
                _arg(args, kwargs, 2, "return_indices", False)
            )
            return (y, torch.zeros_like(y, dtype=torch.long)) if wants_indices else y
        if name in _GLOBAL_REDUCTIONS and args and isinstance(args[0], torch.Tensor):
            dims = _arg(args, kwargs, 1, "dim", None)
            out = func(*args, **kwargs)
            if _is_global(dims, args[0].ndim):
                if isinstance(out, tuple):
                    return type(out)(tuple(o.detach() for o in out))
                return out.detach()
            return out
        return func(*args, **kwargs)


def _linearised_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A float64 copy whose parameters are cheap positive constants (the original is untouched).

    Parameters are replaced through deepcopy's memo by expanded (stride-0) constant tensors, so
    even a VGG classifier costs no memory or copying time.
    """
    memo: dict[int, Any] = {}
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            value = 1.0 / max(1, math.prod(p.shape[1:]))
        elif name.rsplit(".", 1)[-1] == "bias":
            value = 0.0
        else:
            value = 1.0  # scales (BatchNorm weight, layer scale) must pass everything
        data = torch.full((), value, dtype=torch.float64, device=device).expand(p.shape)
        memo[id(p)] = nn.Parameter(data, requires_grad=False)
    for m in model.modules():
        for bname, b in m.named_buffers(recurse=False):
            if b is None or id(b) in memo:
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and bname == "running_var":
                memo[id(b)] = torch.ones(b.shape, dtype=torch.float64, device=device)
            elif b.is_floating_point():
                memo[id(b)] = torch.zeros(b.shape, dtype=torch.float64, device=device)
            else:
                memo[id(b)] = b.detach().to(device).clone()
    probe = copy.deepcopy(model, memo)
    return probe.eval()


class _Captured(Exception):
    """Stops the probe's forward once every (non-reused) layer has produced its output."""


_UNITS = 3  # top-left, bottom-right, bottom-right minus one


def _probe_forward(
    probe: nn.Module,
    targets: dict[str, nn.Module],
    in_channels: int,
    size: int,
    stop_early: bool,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """One linearised forward at size×size: the input, each target's output, its call count."""
    store: dict[str, torch.Tensor] = {}
    calls = dict.fromkeys(targets, 0)

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store[name] = out[0] if isinstance(out, (tuple, list)) else out
            calls[name] += 1
            if stop_early and len(store) == len(targets):
                raise _Captured

        return hook

    x = torch.full((_UNITS, in_channels, size, size), 1e-6, dtype=torch.float64, device=device)
    x.requires_grad_(True)
    handles = [m.register_forward_hook(make_hook(n)) for n, m in targets.items()]
    try:
        with torch.enable_grad(), _Linearise():
            try:
                probe(x)
            except _Captured:
                pass
            except Exception as exc:
                # Heads with fixed sizes may fail on the probe's input after the layers ran.
                missing = sorted(set(targets) - set(store))
                if missing:
                    raise ReceptiveFieldError(
                        f"the probe forward failed at {size}×{size} before reaching "
                        f"{', '.join(missing)}: {type(exc).__name__}: {exc}"
                    ) from exc
    finally:
        for h in handles:
            h.remove()
    return x, store, calls


def _footprint(x: torch.Tensor, out: Any, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Row and column supports (3×size bool) of units TL, BR, BR-1; None if the map is < 2×2."""
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ReceptiveFieldError(
            f"{name}: the output is not a B×C×H×W map (shape {tuple(getattr(out, 'shape', ()))})"
        )
    h, w = out.shape[-2:]
    if h < 2 or w < 2:
        return None
    target = out[0, :, 0, 0].sum() + out[1, :, h - 1, w - 1].sum() + out[2, :, h - 2, w - 2].sum()
    if not target.requires_grad:
        raise ReceptiveFieldError(
            f"{name}: the output does not depend on the input through differentiable operations"
        )
    (grad,) = torch.autograd.grad(target, x, retain_graph=True)
    support = grad.abs().sum(1) > 0  # 3×H×W
    return support.any(2).cpu(), support.any(1).cpu()


def _extent(support: torch.Tensor) -> tuple[int, int] | None:
    idx = torch.nonzero(support).flatten()
    if idx.numel() == 0:
        return None
    return int(idx[0]), int(idx[-1])


def _axis_from(support: torch.Tensor, n_units: int, name: str) -> AxisField | None:
    """Geometry along one axis from the three footprints, or None if one is clipped."""
    tl, br, br1 = (_extent(support[i]) for i in range(_UNITS))
    if tl is None or br is None or br1 is None:
        raise ReceptiveFieldError(f"{name}: a unit's footprint is empty; it does not see the input")
    length = support.shape[1]
    # The bottom-right units' first index is unclipped when > 0, the top-left's last when < end.
    if not (br[0] > 0 and br1[0] > 0 and tl[1] < length - 1):
        return None
    stride = br[0] - br1[0]
    if stride <= 0:
        raise ReceptiveFieldError(f"{name}: the unit-to-input mapping is not affine")
    offset = br[0] - (n_units - 1) * stride
    return AxisField(size=tl[1] - offset + 1, stride=stride, offset=offset)


def receptive_fields(
    model: nn.Module,
    layers: Sequence[str],
    in_channels: int,
    *,
    start_size: int = 32,
    max_size: int = 4096,
    device: torch.device | str | None = None,
) -> dict[str, ReceptiveField]:
    """Measure the receptive field of each layer's units (method: the module docstring).

    One probe forward serves all layers; the probe grows until every footprint it reads is
    unclipped. ``model`` is not modified. ``device`` defaults to the model's (MPS, which has no
    float64, uses the CPU).
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "mps":
        device = torch.device("cpu")
    for layer in layers:
        find_layer(model, layer)  # a clear error for unknown names
    probe = _linearised_copy(model, device)
    pending = {layer: find_layer(probe, layer) for layer in dict.fromkeys(layers)}
    found: dict[str, ReceptiveField] = {}
    size = max(8, start_size)
    stop_early: bool | None = None
    while pending and size <= max_size:
        x, outputs, calls = _probe_forward(
            probe, pending, in_channels, size, bool(stop_early), device
        )
        if stop_early is None:
            # A module called several times per forward (a reused ReLU) is captured at its last
            # call, as the dataset pass does; only then may later probes stop the forward early.
            stop_early = all(c == 1 for c in calls.values())
        for name in list(pending):
            supports = _footprint(x, outputs[name], name)
            if supports is None:
                continue
            h, w = outputs[name].shape[-2:]
            rows, cols = _axis_from(supports[0], h, name), _axis_from(supports[1], w, name)
            if rows is not None and cols is not None:
                found[name] = ReceptiveField(layer=name, rows=rows, cols=cols, probe_size=size)
                del pending[name]
        size = int(math.ceil(size * 1.5 / 8) * 8)
    if pending:
        raise ReceptiveFieldError(
            f"{', '.join(pending)}: the receptive field does not fit a {max_size}×{max_size} "
            "probe (a global operation such as attention or an unhandled global pooling lets "
            "every unit see the whole image)"
        )
    return {layer: found[layer] for layer in layers}


def receptive_field(
    model: nn.Module, layer: str, in_channels: int, **kwargs: Any
) -> ReceptiveField:
    """:func:`receptive_fields` for one layer."""
    return receptive_fields(model, [layer], in_channels, **kwargs)[layer]
