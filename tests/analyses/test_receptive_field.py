"""Receptive fields: the product's linearised gradient probe against an independent graph analysis.

The reference walks the torch.fx graph and composes the textbook per-layer formulas (a unit of a
layer with kernel k, stride s, padding p, dilation d covers k·d − d + 1 units of its input,
starting p units before its own position times s), taking the union where branches meet.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from reportgen.methods.hooks import hook_count
from reportgen.methods.receptive_field import (
    ReceptiveFieldError,
    crop_field,
    receptive_field,
    receptive_fields,
)

Axis = tuple[int, int, int]  # (jump, first, last): unit u covers [u*jump + first, u*jump + last]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _window(rf: tuple[Axis, Axis], k: Any, s: Any, p: Any, d: Any) -> tuple[Axis, Axis]:
    out = []
    for (j, a, b), kk, ss, pp, dd in zip(rf, _pair(k), _pair(s), _pair(p), _pair(d), strict=True):
        out.append((j * ss, a - pp * j, b + ((kk - 1) * dd - pp) * j))
    return out[0], out[1]


def analytic_rf(model: nn.Module, layer: str) -> tuple[Axis, Axis]:
    """Compose per-layer geometry along the traced graph; the last call of ``layer`` counts."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    rf: dict[fx.Node, tuple[Axis, Axis] | None] = {}
    found = None
    for node in gm.graph.nodes:
        ins = [rf.get(a) for a in node.all_input_nodes]
        ins = [r for r in ins if r is not None]
        if node.op == "placeholder":
            rf[node] = ((1, 0, 0), (1, 0, 0))
            continue
        if not ins:
            rf[node] = None
            continue
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                r = _window(ins[0], m.kernel_size, m.stride, m.padding, m.dilation)
            elif isinstance(m, nn.AvgPool2d):
                r = _window(ins[0], m.kernel_size, m.stride or m.kernel_size, m.padding, 1)
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear)):
                r = None
            else:
                r = ins[0]
            rf[node] = r
            if node.target == layer:
                found = r
            continue
        if node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d):
            kw = dict(zip(["kernel_size", "stride", "padding"], node.args[1:], strict=False))
            kw.update(node.kwargs)
            k = kw["kernel_size"]
            rf[node] = _window(ins[0], k, kw.get("stride") or k, kw.get("padding", 0), 1)
            continue
        if node.op == "call_function" and node.target in (
            F.adaptive_avg_pool2d,
            torch.flatten,
        ):
            rf[node] = None
            continue
        if node.op == "output":
            break
        # Elementwise ops, additions and concatenations: the union of the inputs' fields.
        js = {r[0][0] for r in ins} | {r[1][0] for r in ins}
        assert len(js) == 1, f"{node}: inputs on different grids"
        rf[node] = (
            (ins[0][0][0], min(r[0][1] for r in ins), max(r[0][2] for r in ins)),
            (ins[0][1][0], min(r[1][1] for r in ins), max(r[1][2] for r in ins)),
        )
    assert found is not None, f"{layer} not reached"
    return found


def assert_matches(model: nn.Module, layer: str, in_channels: int = 3) -> None:
    rf = receptive_field(model, layer, in_channels)
    rows, cols = analytic_rf(model, layer)
    for got, (j, a, b) in ((rf.rows, rows), (rf.cols, cols)):
        assert (got.stride, got.offset, got.size) == (j, a, b - a + 1), (layer, got, (j, a, b))


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer2.1.relu"),  # reused ReLU: its last call, after the residual add
        ("resnet18", "layer3.0.downsample.0"),
        ("alexnet", "features.10"),
        ("vgg11", "features.13"),
        ("mobilenet_v2", "features.7.conv.2"),
        ("densenet121", "features.transition1.pool"),
    ],
)
def test_torchvision_matches_graph_analysis(arch: str, layer: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    assert_matches(model, layer)


def test_known_values() -> None:
    alex = torchvision.models.alexnet(weights=None)
    rf = receptive_field(alex, "features.10", 3)  # conv5
    assert (rf.size, rf.stride) == ((163, 163), (16, 16))


class Dilated(nn.Module):
    """Strides, padding, dilation, ceil-mode and functional pooling, and a residual branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.c = nn.Conv2d(4, 4, (5, 3), padding=(1, 0))
        self.skip = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = F.max_pool2d(torch.relu(self.b(x)), 2)
        x = self.pool(x)
        x = self.c(x)
        return self.d(x) + self.skip(x)


def test_hand_made_stack_by_hand_and_by_graph() -> None:
    model = Dilated().eval()
    for layer in ("a", "b", "pool", "c", "d", "skip"):
        assert_matches(model, layer, in_channels=2)
    # By hand, rows: a 3 (j1, first -1); b: k_eff 5, s2, p2 -> size 7, j2, first -3;
    # max_pool2d 2 -> size 9, j4; pool k3 s2 p1 -> size 17, j8, first -3-4=-7;
    # c k5 p1 -> size 49, j8, first -15; d k3 p1 -> size 65, first -23.
    rf = receptive_field(model, "d", 2)
    assert (rf.rows.size, rf.rows.stride, rf.rows.offset) == (65, 8, -23)
    assert (rf.cols.size, rf.cols.stride, rf.cols.offset) == (49, 8, -15)


def test_model_is_left_untouched() -> None:
    model = Dilated().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_fields(model, ["b", "d"], 2)
    assert hook_count(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype


def test_real_gradient_footprint_lies_inside() -> None:
    """On the model's own weights and a random input, a unit's gradient stays inside its box."""
    torch.manual_seed(1)
    model = Dilated().eval()
    rf = receptive_field(model, "d", 2)
    x = torch.randn(1, 2, 96, 96, requires_grad=True)
    store: dict[str, torch.Tensor] = {}
    h = model.d.register_forward_hook(lambda _m, _i, o: store.__setitem__("o", o))
    try:
        model(x)
    finally:
        h.remove()
    out = store["o"]
    for y, xx in ((0, 0), (5, 4), (out.shape[2] - 1, out.shape[3] - 1)):
        (g,) = torch.autograd.grad(out[0, :, y, xx].sum(), x, retain_graph=True)
        support = torch.nonzero(g[0].abs().sum(0))
        top, left, bottom, right = rf.box(y, xx)
        assert int(support[:, 0].min()) >= max(top, 0) and int(support[:, 0].max()) < bottom
        assert int(support[:, 1].min()) >= max(left, 0) and int(support[:, 1].max()) < right


def test_crop_pads_outside_the_image() -> None:
    model = Dilated().eval()
    rf = receptive_field(model, "b", 2)
    image = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 10, 10)
    crop = crop_field(image, rf, 0, 0, fill=-1.0)
    assert crop.shape[1:] == rf.size
    assert rf.clip(0, 0, 10, 10)[:2] == (-rf.rows.offset, -rf.cols.offset)
    assert (crop[:, : -rf.rows.offset] == -1).all()
    assert torch.equal(
        crop[:, -rf.rows.offset :, -rf.cols.offset :],
        image[:, : rf.size[0] + rf.rows.offset, : rf.size[1] + rf.cols.offset],
    )


def test_non_spatial_layer_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 3))
    with pytest.raises(ReceptiveFieldError):
        receptive_field(model, "2", 1, start_size=32, max_size=32)
