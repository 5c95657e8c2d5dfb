"""Incremental inference for occlusion (Krypton; Nakandala et al., SIGMOD 2019): exact logits of
occluded copies that recompute only what the occluder changes.

An occluder changes a window of the input; a convolution's output changes only where its
receptive field meets that window, so each layer is recomputed on a small region — the changed
region grown by the kernel — and the rest of the tensor is the unoccluded image's, computed
once. The model is traced with :mod:`torch.fx`; the graph is then run node by node with every
value either *full* (a batch tensor), *constant* (the same for every copy: it does not depend on
the input) or a *patch* (the unoccluded tensor plus, per copy, a same-sized region where it
differs). Convolutions (zero padding), max and average pooling, batch norm in eval mode,
element-wise activations and sums are computed on patches; any other operation, and any patch
that has grown past :data:`MATERIALISE_AT` of its tensor, is made full first, so the result is
the full computation's (up to floating-point summation order: within 1e-5 of the logits).
All occluded copies of one image run as one batch of patches, ``batch_size`` at a time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from reportgen.loading.models import extract_logits


@dataclass
class _Tally:
    """Occluded copies computed incrementally, and whether a self-check is running (its full
    forwards are not work the sections planned; the run's pass count leaves them out)."""

    copies: int = 0
    checking: bool = False


TALLY = _Tally()

MATERIALISE_AT = 0.5
"""A patch covering more than this share of its tensor's area is made full (no saving left)."""

_UNARY_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
)
_UNARY_FUNCTIONS: dict[Any, Callable[[torch.Tensor], torch.Tensor]] = {
    F.relu: F.relu,
    torch.relu: torch.relu,
    F.silu: F.silu,
    F.gelu: F.gelu,
    torch.sigmoid: torch.sigmoid,
    F.hardswish: F.hardswish,
    F.relu6: F.relu6,
}
_UNARY_METHODS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "relu_": torch.relu}
_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass
class _Patch:
    """A B×C×H×W value that equals ``base`` (1×C×H×W) except on a region per copy."""

    base: torch.Tensor
    data: torch.Tensor
    """B×C×h×w: the values on each copy's region."""
    top: torch.Tensor
    """B rows (long, on the device) of the regions' top edges in this tensor."""
    left: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data.shape[2]), int(self.data.shape[3])

    def read(
        self, top: torch.Tensor, left: torch.Tensor, h: int, w: int, pad: float
    ) -> torch.Tensor:
        """B×C×h×w of this value on the regions at (top, left), ``pad`` outside the tensor."""
        height, width = int(self.base.shape[2]), int(self.base.shape[3])
        tl = torch.stack([top, left], 1).tolist()
        margin = max(
            [0]
            + [-t for t, _ in tl]
            + [-x for _, x in tl]
            + [t + h - height for t, _ in tl]
            + [x + w - width for _, x in tl]
        )
        base = self.base[0]
        if margin:
            base = F.pad(base, (margin, margin, margin, margin), value=pad)
        m = margin
        out = torch.stack([base[:, t + m : t + m + h, x + m : x + m + w] for t, x in tl])
        # The changed values where the region meets this value's own region, pasted in groups
        # of copies that share the relative offset (a regular grid of occluders has few).
        ph, pw = self.size
        groups: dict[tuple[int, int], list[int]] = {}
        rel = torch.stack([self.top - top, self.left - left], 1).tolist()
        for i, (dy, dx) in enumerate(rel):
            groups.setdefault((dy, dx), []).append(i)
        for (dy, dx), idx in groups.items():
            r0, r1 = max(dy, 0), min(dy + ph, h)
            c0, c1 = max(dx, 0), min(dx + pw, w)
            if r0 >= r1 or c0 >= c1:
                continue
            src = self.data[:, :, r0 - dy : r1 - dy, c0 - dx : c1 - dx]
            if len(idx) == len(tl):
                out[:, :, r0:r1, c0:c1] = src
            else:
                sel = torch.as_tensor(idx, device=out.device)
                out[sel, :, r0:r1, c0:c1] = src[sel]
        return out

    def full(self) -> torch.Tensor:
        b = len(self.top)
        out = self.base.expand(b, *self.base.shape[1:]).clone()
        ph, pw = self.size
        rows = self.top[:, None] + torch.arange(ph, device=self.top.device)
        cols = self.left[:, None] + torch.arange(pw, device=self.top.device)
        bi = torch.arange(b, device=self.top.device)[:, None, None]
        out[bi, :, rows[:, :, None], cols[:, None, :]] = self.data.permute(0, 2, 3, 1)
        return out


@dataclass(frozen=True)
class _Const:
    """A value the occluder does not change (computed once on the unoccluded image)."""

    value: Any


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def _window_op(
    p: _Patch,
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    pad: float,
    apply: Callable[[torch.Tensor], torch.Tensor],
    base_out: torch.Tensor,
) -> _Patch | None:
    """A sliding-window operation (convolution, pooling) on a patch: the outputs whose window
    meets the changed region, computed from the input around them; None when they are too many."""
    corners = []
    for axis in (0, 1):
        start = p.top if axis == 0 else p.left
        size = p.size[axis]
        k, s, pd, d, n_out = kernel[axis], stride[axis], padding[axis], dilation[axis], out_hw[axis]
        lo = torch.div(start + pd - (k - 1) * d + s - 1, s, rounding_mode="floor").clamp(min=0)
        hi = torch.div(start + size - 1 + pd, s, rounding_mode="floor").clamp(max=n_out - 1)
        extent = int((hi - lo + 1).max())
        if extent <= 0:
            extent = 1
        if extent >= n_out:
            return None
        lo = lo.clamp(max=n_out - extent)
        corners.append((lo, extent))
    (top, oh), (left, ow) = corners
    if oh * ow > MATERIALISE_AT * out_hw[0] * out_hw[1]:
        return None
    in_h = (oh - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1
    in_w = (ow - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1
    crop = p.read(top * stride[0] - padding[0], left * stride[1] - padding[1], in_h, in_w, pad)
    return _Patch(base_out, apply(crop), top, left)


def _contains(big: _Patch, small: _Patch) -> bool:
    """Every copy's ``small`` region lies inside its ``big`` one."""
    return bool(
        (big.top <= small.top).all()
        and (big.left <= small.left).all()
        and (big.top + big.size[0] >= small.top + small.size[0]).all()
        and (big.left + big.size[1] >= small.left + small.size[1]).all()
    )


def _union(a: _Patch, b: _Patch) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    height, width = a.base.shape[2:]
    top = torch.minimum(a.top, b.top)
    left = torch.minimum(a.left, b.left)
    h = int((torch.maximum(a.top + a.size[0], b.top + b.size[0]) - top).max())
    w = int((torch.maximum(a.left + a.size[1], b.left + b.size[1]) - left).max())
    h, w = min(h, int(height)), min(w, int(width))
    return top.clamp(max=int(height) - h), left.clamp(max=int(width) - w), h, w


class IncrementalOcclusion:
    """Logits of occluded copies of one image at a time, recomputing only changed regions.

    Build with :meth:`trace` (None when the model cannot be traced or has nothing to gain: no
    convolution before its first global operation).
    """

    def __init__(self, graph: fx.GraphModule) -> None:
        self.graph = graph
        self.modules = dict(graph.named_modules())

    @classmethod
    def trace(cls, model: nn.Module) -> IncrementalOcclusion | None:
        if model.training:
            return None
        try:
            graph = fx.symbolic_trace(model)
        except Exception:  # any Python the tracer cannot follow: full forwards instead
            return None
        first = next(
            (n for n in graph.graph.nodes if n.op == "call_module"),
            None,
        )
        modules = dict(graph.named_modules())
        if first is None or not isinstance(modules[str(first.target)], nn.Conv2d):
            return None
        return cls(graph)

    def _base(self, image: torch.Tensor) -> dict[fx.Node, Any]:
        """Every node's value on the unoccluded image."""
        values: dict[fx.Node, Any] = {}
        interp = fx.Interpreter(self.graph)
        env_run = interp.run_node

        def run_node(n: fx.Node) -> Any:
            values[n] = env_run(n)
            return values[n]

        interp.run_node = run_node  # type: ignore[method-assign]
        interp.run(image)
        return values

    def logits(
        self,
        image: torch.Tensor,
        tops: torch.Tensor,
        lefts: torch.Tensor,
        window: int,
        fill: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        """B output rows: the model on ``image`` (1×C×H×W) with a ``window``-sided square of
        ``fill`` (C values) at each (top, left) — clipped at the image's border like
        :func:`reportgen.methods.perturbation.occluded_copies`."""
        if not TALLY.checking:
            TALLY.copies += len(tops)
        with torch.inference_mode():
            base = self._base(image)
            outs = [
                self._occluded(
                    base, image, tops[i : i + batch_size], lefts[i : i + batch_size], window, fill
                )
                for i in range(0, len(tops), batch_size)
            ]
        return torch.cat(outs)

    def _occluded(
        self,
        base: dict[fx.Node, Any],
        image: torch.Tensor,
        tops: torch.Tensor,
        lefts: torch.Tensor,
        window: int,
        fill: torch.Tensor,
    ) -> torch.Tensor:
        _, c, height, width = image.shape
        wh, ww = min(window, height), min(window, width)
        # The region: the window moved inside the image; the occluder: the window clipped.
        top = tops.clamp(max=height - wh)
        left = lefts.clamp(max=width - ww)
        tl = torch.stack([top, left], 1).tolist()
        data = torch.stack([image[0, :, t : t + wh, x : x + ww] for t, x in tl])
        rows = top[:, None] + torch.arange(wh, device=top.device)
        cols = left[:, None] + torch.arange(ww, device=top.device)
        occ = ((rows >= tops[:, None]) & (rows < tops[:, None] + window))[:, :, None] & (
            (cols >= lefts[:, None]) & (cols < lefts[:, None] + window)
        )[:, None, :]
        filled = torch.where(occ[:, None], fill.view(1, c, 1, 1).to(data.dtype), data)
        region = _Patch(image, filled, top, left)
        env: dict[fx.Node, Any] = {}
        b = len(top)
        result: Any = None
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                env[node] = region
            elif node.op == "get_attr":
                env[node] = _Const(base[node])
            elif node.op == "output":
                result = fx.node.map_arg(node.args[0], lambda n: _full(env[n], b))
            else:
                env[node] = self._step(node, env, base, b)
        return extract_logits(result)

    def _step(
        self, node: fx.Node, env: dict[fx.Node, Any], base: dict[fx.Node, Any], b: int
    ) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        flat = [*_flatten(args), *_flatten(kwargs)]
        if not any(isinstance(a, _Patch | torch.Tensor) for a in flat):
            return _Const(base[node])  # nothing here depends on the occluder
        out = self._patched(node, args, kwargs, base[node])
        if out is not None:
            return out
        # Anything else: every patch made full, the operation run on the whole batch.
        full_args = _map(args, lambda v: _full(v, b))
        full_kwargs = _map(kwargs, lambda v: _full(v, b))
        if node.op == "call_module":
            return self.modules[str(node.target)](*full_args, **full_kwargs)
        if node.op == "call_method":
            obj, *rest = full_args
            return getattr(obj, str(node.target))(*rest, **full_kwargs)
        return node.target(*full_args, **full_kwargs)  # type: ignore[operator]

    def _patched(self, node: fx.Node, args: Any, kwargs: Any, base_out: Any) -> _Patch | None:
        """The node on patches, or None when it is not one computed on regions."""
        if kwargs or not args or not isinstance(args[0], _Patch):
            return None
        p: _Patch = args[0]
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if len(args) != 1:
                return None
            if (
                isinstance(m, nn.Conv2d)
                and m.padding_mode == "zeros"
                and not isinstance(m.padding, str)
            ):
                if (
                    _pair(m.kernel_size) == (1, 1)
                    and _pair(m.stride) == (1, 1)
                    and _pair(m.padding) == (0, 0)
                ):
                    # Pointwise: the changed region stays where it is, no neighbours needed.
                    return _Patch(base_out, m(p.data), p.top, p.left)
                return _window_op(
                    p,
                    tuple(base_out.shape[2:]),
                    _pair(m.kernel_size),
                    _pair(m.stride),
                    _pair(m.padding),
                    _pair(m.dilation),
                    0.0,
                    lambda x: F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups),
                    base_out,
                )
            if isinstance(m, nn.MaxPool2d) and not m.ceil_mode and not m.return_indices:
                return _window_op(
                    p,
                    tuple(base_out.shape[2:]),
                    _pair(m.kernel_size),
                    _pair(m.stride or m.kernel_size),
                    _pair(m.padding),
                    _pair(m.dilation),
                    float("-inf"),
                    lambda x: F.max_pool2d(x, m.kernel_size, m.stride, 0, m.dilation),
                    base_out,
                )
            if (
                isinstance(m, nn.AvgPool2d)
                and not m.ceil_mode
                and _pair(m.padding) == (0, 0)
                and m.divisor_override is None
            ):
                return _window_op(
                    p,
                    tuple(base_out.shape[2:]),
                    _pair(m.kernel_size),
                    _pair(m.stride or m.kernel_size),
                    (0, 0),
                    (1, 1),
                    0.0,
                    lambda x: F.avg_pool2d(x, m.kernel_size, m.stride, 0),
                    base_out,
                )
            if isinstance(m, nn.BatchNorm2d) and not m.training:
                return _Patch(base_out, m(p.data), p.top, p.left)
            if isinstance(m, _UNARY_MODULES) and not m.training:
                inplace = getattr(m, "inplace", False)
                data = m(p.data.clone() if inplace else p.data)
                return _Patch(base_out, data, p.top, p.left)
            return None
        if node.op == "call_function" and node.target in _UNARY_FUNCTIONS and len(args) == 1:
            return _Patch(base_out, _UNARY_FUNCTIONS[node.target](p.data), p.top, p.left)
        if node.op == "call_method" and node.target in _UNARY_METHODS and len(args) == 1:
            return _Patch(base_out, _UNARY_METHODS[str(node.target)](p.data), p.top, p.left)
        if node.op == "call_function" and node.target in _ADDS and len(args) == 2:
            a, other = args
            if isinstance(other, _Patch) and a.base.shape == other.base.shape:
                if (
                    a.size == other.size
                    and torch.equal(a.top, other.top)
                    and torch.equal(a.left, other.left)
                ):
                    return _Patch(base_out, a.data + other.data, a.top, a.left)
                for big, small in ((a, other), (other, a)):
                    if _contains(big, small):
                        # The residual case: the block's region holds the shortcut's.
                        h, w = big.size
                        data = big.data + small.read(big.top, big.left, h, w, 0.0)
                        return _Patch(base_out, data, big.top, big.left)
                top, left, h, w = _union(a, other)
                if h * w > MATERIALISE_AT * a.base.shape[2] * a.base.shape[3]:
                    return None
                return _Patch(
                    base_out,
                    a.read(top, left, h, w, 0.0) + other.read(top, left, h, w, 0.0),
                    top,
                    left,
                )
        return None


def _flatten(v: Any) -> list[Any]:
    if isinstance(v, tuple | list):
        return [x for item in v for x in _flatten(item)]
    if isinstance(v, dict):
        return [x for item in v.values() for x in _flatten(item)]
    return [v]


def _map(v: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(v, tuple):
        return tuple(_map(x, fn) for x in v)
    if isinstance(v, list):
        return [_map(x, fn) for x in v]
    if isinstance(v, dict):
        return {k: _map(x, fn) for k, x in v.items()}
    return fn(v)


def _full(v: Any, b: int) -> Any:
    if isinstance(v, _Patch):
        return v.full()
    if isinstance(v, _Const):
        return v.value
    return v
