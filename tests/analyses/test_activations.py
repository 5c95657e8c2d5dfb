"""Activation maps: equal to a direct hooked forward, hooks always removed, the section renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_config, make_context, write_image_folder
from torch import nn

from reportgen.analyses.activations import ActivationsAnalysis, channel_means
from reportgen.analyses.common import layer_outputs, spread_conv_layers
from reportgen.config import Config
from reportgen.contract import AnalysisContext
from reportgen.errors import LayerError
from reportgen.methods.hooks import hook_count
from reportgen.report.section import Figure, Table


def _context(
    tmp_path: Path, weights: Path, extra: dict[str, object] | None = None
) -> tuple[Config, AnalysisContext]:
    write_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path, {"model.weights": str(weights), **(extra or {})}, ["activations"])
    return cfg, make_context(cfg)


def test_maps_equal_a_direct_forward(tmp_path: Path, tiny_weights: Path) -> None:
    _cfg, ctx = _context(tmp_path, tiny_weights)
    model = ctx.model.module
    inputs = ctx.load_inputs(ctx.queries)
    got = layer_outputs(model, ["conv1", "conv2"], inputs, batch_size=2)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        getattr(model, n).register_forward_hook(
            lambda _m, _i, o, n=n: seen.__setitem__(n, o.clone())
        )
        for n in ("conv2",)
    ]
    try:
        with torch.no_grad():
            # conv1 is followed by an in-place ReLU: what the next layer sees
            expected_conv1 = torch.relu(model.conv1(inputs))
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(got["conv1"], expected_conv1, atol=1e-6)
    assert torch.allclose(got["conv2"], torch.relu(seen["conv2"]), atol=1e-6)
    assert got["conv2"].shape == (3, 16, 8, 8)
    assert hook_count(model) == 0


def test_hooks_removed_after_an_error() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv(x)
            raise RuntimeError("boom")

    model = Fails()
    with pytest.raises(RuntimeError, match="boom"):
        layer_outputs(model, ["conv"], torch.zeros(2, 1, 8, 8), batch_size=1)
    assert hook_count(model) == 0


def test_spread_conv_layers() -> None:
    model = nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(7)])
    assert spread_conv_layers(model, 3) == ["0", "3", "6"]
    assert spread_conv_layers(model, 3, skip_first=True) == ["1", "3", "6"]
    assert spread_conv_layers(nn.Sequential(nn.Conv2d(1, 1, 1)), 3) == ["0"]


def test_section_renders_and_table_lists_top_channels(tmp_path: Path, tiny_weights: Path) -> None:
    cfg, ctx = _context(tmp_path, tiny_weights, {"analyses.activations.top_channels": 3})
    result = ActivationsAnalysis().run(ctx, cfg.analyses["activations"])
    section = result.section
    assert section.status == "ok"
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    assert len(figures) == 2 and all(f.picture.kind == "line" for f in figures)
    assert len(table.rows) == 2 * len(ctx.queries)
    maps = layer_outputs(ctx.model.module, ["conv2"], ctx.load_inputs(ctx.queries), 8)["conv2"]
    top = channel_means(maps).topk(3, dim=1).indices
    rows = [r for r in table.rows if r[0] == "conv2"]
    for qi, row in enumerate(rows):
        listed = [int(part.split(" ")[0]) for part in str(row[3]).split(", ")]
        assert listed == top[qi].tolist()
    assert hook_count(ctx.model.module) == 0


def test_configured_layers(tmp_path: Path, tiny_weights: Path) -> None:
    cfg, ctx = _context(
        tmp_path,
        tiny_weights,
        {"analyses.activations.layers": ["pool"], "analyses.activations.max_channels": 4},
    )
    result = ActivationsAnalysis().run(ctx, cfg.analyses["activations"])
    section = result.section
    assert section.status == "ok"
    (fig,) = [b for b in section.blocks if isinstance(b, Figure)]
    assert fig.caption.startswith("pool: 4 of 8 channels (16×16 maps)")


def test_unknown_layer_is_an_input_error(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    with pytest.raises(LayerError):
        make_context(make_config(tmp_path, {"analyses.activations.layers": ["conv7"]}))
