"""Max-activating patches: running top-k vs brute force, crops equal to receptive fields, section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, make_context, write_image_folder
from torch import nn

from reportgen.analyses.max_patches import (
    MaxPatchesAnalysis,
    TopKCollector,
    crop_with_padding,
)
from reportgen.errors import ConfigError, LayerError
from reportgen.methods.hooks import capture_outputs, hook_count
from reportgen.methods.receptive_field import receptive_field
from reportgen.report.section import Figure, Table


def brute_force(peaks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """N×C per-image peaks -> C×k values and positions, by a plain loop (ties: earlier image)."""
    n, c = peaks.shape
    vals = np.full((c, k), -np.inf)
    pos = np.full((c, k), -1)
    for ch in range(c):
        ranked = sorted(range(n), key=lambda i: (-peaks[i, ch], i))[:k]
        vals[ch, : len(ranked)] = peaks[ranked, ch]
        pos[ch, : len(ranked)] = ranked
    return vals, pos


def test_running_topk_equals_brute_force_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 6, (37, 5, 4, 3), generator=gen).float()  # many ties on purpose
    col = TopKCollector(["x"], k=4)
    for start in range(0, 37, 8):
        col.update(torch.arange(start, min(start + 8, 37)), {"x": maps[start : start + 8]})
    vals, pos = brute_force(maps.flatten(2).amax(2).numpy(), 4)
    st = col.state["x"]
    assert np.array_equal(st.values.numpy(), vals)
    assert np.array_equal(st.positions.numpy(), pos)
    # The recorded location is where that image's map peaks.
    for ch in range(5):
        for j in range(4):
            img = maps[int(st.positions[ch, j]), ch]
            assert img[int(st.ys[ch, j]), int(st.xs[ch, j])] == st.values[ch, j]
    peaks = maps.flatten(2).amax(2).double()
    assert torch.allclose(st.variance, peaks.var(0))


def test_memory_does_not_grow_with_images() -> None:
    shapes = []
    for n in (10, 100):
        col = TopKCollector(["x"], k=3)
        for start in range(0, n, 10):
            col.update(torch.arange(start, start + 10), {"x": torch.randn(10, 6, 5, 5)})
        st = col.state["x"]
        shapes.append(
            [tuple(t.shape) for t in (st.values, st.positions, st.ys, st.xs, st.mean, st.m2)]
        )
    assert shapes[0] == shapes[1] == [(6, 3)] * 4 + [(6,)] * 2


def test_merge_of_shards_equals_one_pass() -> None:
    maps = torch.randn(30, 4, 3, 3)
    whole, a, b = TopKCollector(["x"], 5), TopKCollector(["x"], 5), TopKCollector(["x"], 5)
    whole.update(torch.arange(30), {"x": maps})
    a.update(torch.arange(0, 12), {"x": maps[:12]})
    b.update(torch.arange(12, 30), {"x": maps[12:]})
    a.merge_state(b)
    for attr in ("values", "positions", "ys", "xs"):
        assert torch.equal(getattr(a.state["x"], attr), getattr(whole.state["x"], attr))
    assert torch.allclose(a.state["x"].variance, whole.state["x"].variance)


def test_pipeline_topk_equals_brute_force(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["max_patches"])
    ctx = make_context(cfg)
    col = ctx.collector
    assert isinstance(col, TopKCollector) and col.layers == ["conv1", "conv2"]
    model = ctx.model.module
    n = len(ctx.pass_result)
    peaks: dict[str, list[np.ndarray]] = {name: [] for name in col.layers}
    with (
        torch.inference_mode(),
        capture_outputs({n: model.get_submodule(n) for n in col.layers}) as cap,
    ):
        for i in range(n):  # one image at a time: the slow reference
            model(ctx.load_inputs([i]))
            for name in col.layers:
                peaks[name].append(cap[name][0].flatten(1).amax(1).numpy())
    for name in col.layers:
        vals, pos = brute_force(np.stack(peaks[name]), col.k)
        st = col.state[name]
        assert np.allclose(st.values.numpy(), vals, atol=1e-5)
        distinct = np.abs(np.diff(vals, axis=1, append=-np.inf)) > 1e-4
        distinct &= np.abs(np.diff(vals, axis=1, prepend=np.inf)) > 1e-4
        assert np.array_equal(st.positions.numpy()[distinct], pos[distinct])


class ConvOnly(nn.Module):
    """No ReLU or max-pool, so every pixel of the field really moves the unit."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.pool(self.a(x)))


@pytest.mark.parametrize("unit", [(0, 0), (2, 3), (3, 3)])
def test_crop_is_exactly_the_receptive_field(unit: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = ConvOnly().eval()
    rf = receptive_field(model, "b", 3)
    x = torch.rand(1, 3, 32, 32)
    y0, x0 = unit

    def unit_value(inp: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(inp)[0, 1, y0, x0])

    base = unit_value(x)
    top, left, bottom, right = rf.box(y0, x0)
    t, lft, b, r = max(top, 0), max(left, 0), min(bottom, 32), min(right, 32)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[t:b, lft:r] = False
    noisy = torch.where(outside, torch.rand(1, 3, 32, 32) * 5, x)
    assert unit_value(noisy) == pytest.approx(base, abs=1e-5)
    # Each edge of the (clipped) box matters: the field is not larger than needed.
    for rows, cols in ((slice(t, t + 1), slice(lft, r)), (slice(b - 1, b), slice(lft, r))):
        bumped = x.clone()
        bumped[..., rows, cols] += 3.0
        assert abs(unit_value(bumped) - base) > 1e-4
    for rows, cols in ((slice(t, b), slice(lft, lft + 1)), (slice(t, b), slice(r - 1, r))):
        bumped = x.clone()
        bumped[..., rows, cols] += 3.0
        assert abs(unit_value(bumped) - base) > 1e-4


def test_crop_with_padding_marks_the_outside() -> None:
    img = np.full((10, 10, 3), 7, np.uint8)
    crop = crop_with_padding(img, (-3, -2, 5, 6))
    assert crop.shape == (8, 8, 3)
    assert (crop[3:, 2:] == 7).all()
    assert set(np.unique(crop[:3])) <= {150, 190}


def test_section_renders(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {
            "model.weights": str(tiny_weights),
            "analyses.max_patches.layers": ["conv2"],
            "analyses.max_patches.channels": [0, 3, 5],
            "analyses.max_patches.k": 4,
        },
        analyses=["max_patches"],
    )
    ctx = make_context(cfg)
    result = MaxPatchesAnalysis().run(ctx, cfg.analyses["max_patches"])
    section = result.section
    assert section.status == "ok"
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    tables = [b for b in section.blocks if isinstance(b, Table)]
    assert len(figures) == 1 and figures[0].picture.kind == "photo"
    assert [r[:2] for r in tables[1].rows] == [["conv2", 0], ["conv2", 3], ["conv2", 5]]
    # conv1 5×5 p2 -> 5 (first -2); maxpool 2 -> 6, jump 2; conv2 3×3 s2 p1 -> 10, jump 4, first -4
    assert tables[0].rows[0][:5] == ["conv2", "8×8", "10", "4", "-4"]
    assert hook_count(ctx.model.module) == 0


def test_default_layers_and_channels_by_variance(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tiny_weights), "analyses.max_patches.channels_per_layer": 3},
        analyses=["max_patches"],
    )
    ctx = make_context(cfg)
    result = MaxPatchesAnalysis().run(ctx, cfg.analyses["max_patches"])
    section = result.section
    assert section.status == "ok"
    rows = [b for b in section.blocks if isinstance(b, Table)][1].rows
    for layer in ("conv1", "conv2"):
        variances = [r[2] for r in rows if r[0] == layer]
        assert len(variances) == 3 and variances == sorted(variances, reverse=True)
        st = ctx.collector.state[layer]
        assert variances[0] == pytest.approx(float(st.variance.max()))


def test_bad_layer_names(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    with pytest.raises((LayerError, ConfigError)):
        make_context(
            make_config(tmp_path, {"analyses.max_patches.layers": ["conv9"]}, ["max_patches"])
        )
