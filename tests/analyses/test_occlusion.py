"""Occlusion: batched maps equal a plain one-copy-at-a-time loop and Captum's Occlusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, make_context, write_image_folder
from tiny_models import tiny_net

from reportgen.analyses.occlusion import OcclusionAnalysis, OcclusionParams
from reportgen.errors import ConfigError
from reportgen.methods.perturbation import (
    grid_shape,
    occluded_copies,
    occlusion_maps,
    pixel_probability,
    resolve_geometry,
)
from reportgen.params import validate_params


def slow_occlusion(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    window: int,
    stride: int,
    fill: torch.Tensor,
) -> torch.Tensor:
    """The reference: one occluded copy at a time, windows clipped by slicing."""
    q, _, h, w = x.shape
    rows, cols = grid_shape(h, w, window, stride)
    out = torch.empty(q, rows, cols)
    with torch.no_grad():
        for i in range(q):
            for r in range(rows):
                for c in range(cols):
                    copy = x[i : i + 1].clone()
                    copy[
                        :, :, r * stride : r * stride + window, c * stride : c * stride + window
                    ] = fill.view(1, -1, 1, 1)
                    out[i, r, c] = model(copy).softmax(1)[0, targets[i]]
    return out


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_net(3).eval()


@pytest.mark.parametrize(("size", "window", "stride"), [(20, 5, 3), (16, 4, 4), (18, 18, 1)])
def test_batched_equals_slow_loop(
    model: torch.nn.Module, size: int, window: int, stride: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=gen)
    targets = torch.tensor([0, 2])
    fill = torch.tensor([0.3, -0.1, 0.2])
    ref = slow_occlusion(model, x, targets, window, stride, fill)
    for batch_size in (1, 7, 1000):
        maps = occlusion_maps(model, x, targets, window, stride, fill, batch_size=batch_size)
        assert maps.prob.shape == ref.shape
        torch.testing.assert_close(maps.prob, ref, atol=1e-6, rtol=0)
    with torch.no_grad():
        base = model(x).softmax(1)[torch.arange(2), targets]
    torch.testing.assert_close(maps.base_prob, base, atol=1e-6, rtol=0)


def test_occluded_copies_masks_only_the_window() -> None:
    x = torch.zeros(1, 2, 6, 7)
    out = occluded_copies(
        x,
        torch.tensor([0, 0]),
        torch.tensor([0, 4]),
        torch.tensor([5, 1]),
        3,
        torch.tensor([1.0, 2.0]),
    )
    assert out.shape == (2, 2, 6, 7)
    # Window at (0, 5) is clipped at the right border: rows 0-2, cols 5-6.
    assert out[0, 0].sum() == 6 and out[0, 1, :3, 5:].eq(2).all()
    assert out[1, 0, 4:, 1:4].eq(1).all() and out[1, 0].sum() == 6


def test_matches_captum_occlusion(model: torch.nn.Module) -> None:
    import captum.attr as captum_attr

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 22, 22, generator=gen)
    targets = torch.tensor([1, 2])
    fill = torch.tensor([0.1, -0.2, 0.3])
    window, stride = 6, 4  # (22 - 6) / 4 is whole: no clipped window; 5×5 positions
    maps = occlusion_maps(model, x, targets, window, stride, fill, batch_size=9)
    ours = maps.base_prob[:, None, None] - pixel_probability(maps.prob, 22, 22, window, stride)
    occ = captum_attr.Occlusion(lambda z: model(z).softmax(1))
    with torch.no_grad():
        theirs = occ.attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=fill.view(1, 3, 1, 1),
            target=targets,
            perturbations_per_eval=4,
        )
    for channel in range(3):
        torch.testing.assert_close(theirs[:, channel], ours, atol=1e-6, rtol=0)
    # A stride that leaves a border: Captum clips the last window too; still identical.
    maps = occlusion_maps(model, x, targets, 5, 3, fill, batch_size=64)
    ours = maps.base_prob[:, None, None] - pixel_probability(maps.prob, 22, 22, 5, 3)
    with torch.no_grad():
        theirs = occ.attribute(
            x,
            sliding_window_shapes=(3, 5, 5),
            strides=(3, 3, 3),
            baselines=fill.view(1, 3, 1, 1),
            target=targets,
            perturbations_per_eval=64,
        )
    torch.testing.assert_close(theirs[:, 0], ours, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_works_on_torchscript(model: torch.nn.Module) -> None:
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1])
    fill = torch.zeros(3)
    a = occlusion_maps(scripted, x, t, 4, 2, fill)
    b = occlusion_maps(model, x, t, 4, 2, fill)
    torch.testing.assert_close(a.prob, b.prob, atol=1e-6, rtol=0)


def test_geometry_defaults_adapt_to_input() -> None:
    assert resolve_geometry(32, 32, 0, 0) == (8, 2)
    assert resolve_geometry(224, 224, 0, 0) == (56, 14)
    assert grid_shape(32, 32, 8, 2) == (13, 13)
    assert resolve_geometry(10, 12, 50, 0)[0] == 10  # clipped to the image


def test_params_validate() -> None:
    with pytest.raises(ConfigError, match="fill"):
        validate_params(OcclusionParams(fill=2.0), "analyses.occlusion")
    with pytest.raises(ConfigError, match="batch_size"):
        validate_params(OcclusionParams(batch_size=0), "analyses.occlusion")


def test_section_and_arrays(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {
            "model.weights": str(tiny_weights),
            "analyses": {"occlusion": {"window": 8, "stride": 4, "batch_size": 10}},
        },
        analyses=["occlusion"],
    )
    ctx = make_context(cfg)
    result = OcclusionAnalysis().run(ctx, cfg.analyses["occlusion"])
    section = result.section
    assert section.status == "ok"
    assert section.blocks and section.how_to_read
    a = result.arrays
    q = len(ctx.queries)
    assert a["image_ids"].shape == (q,) and a["image_ids"][0] == ctx.relpath(ctx.queries[0])
    assert a["inputs"].shape == (q, 3, 32, 32)
    assert a["targets"].tolist() == ctx.targets(ctx.queries).tolist()
    assert a["occlusion_prob"].shape == (q, 7, 7)
    assert int(a["occlusion_window"]) == 8 and int(a["occlusion_stride"]) == 4
    assert ctx.pass_result.mean_input is not None
    np.testing.assert_allclose(a["occlusion_fill"], ctx.pass_result.mean_input.numpy())
    assert ((a["occlusion_prob"] >= 0) & (a["occlusion_prob"] <= 1)).all()


def test_constant_fill_is_in_pixel_space(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {
            "model.weights": str(tiny_weights),
            "preprocess.mean": [0.5],
            "preprocess.std": [0.25],
            "analyses": {"occlusion": {"fill": 0.0}},
        },
        analyses=["occlusion"],
    )
    ctx = make_context(cfg)
    result = OcclusionAnalysis().run(ctx, cfg.analyses["occlusion"])
    assert result.section.status == "ok"
    np.testing.assert_allclose(result.arrays["occlusion_fill"], [-2.0, -2.0, -2.0])
