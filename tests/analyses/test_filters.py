"""Filter mosaics against hand-computed tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_GRAY_ARCH, make_config, make_context, write_image_folder

from reportgen.analyses.filters import (
    FiltersAnalysis,
    FiltersParams,
    filter_tiles_gray,
    filter_tiles_rgb,
)
from reportgen.errors import LayerError
from reportgen.report.figures import mosaic, to_uint8, upscale
from reportgen.report.section import Figure, Table


def test_rgb_tiles_are_min_max_scaled_per_filter() -> None:
    w = torch.randn(4, 3, 5, 5)
    tiles = filter_tiles_rgb(w)
    assert len(tiles) == 4
    for f, tile in zip(w.numpy(), tiles, strict=True):
        expected = f.transpose(1, 2, 0)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        np.testing.assert_allclose(tile, expected, atol=1e-6)
        assert tile.shape == (5, 5, 3)


def test_gray_tiles_keep_channels_of_one_filter_comparable() -> None:
    w = torch.zeros(1, 2, 3, 3)
    w[0, 0] = 1.0  # channel 0 all at the filter's max
    w[0, 1] = -1.0  # channel 1 all at the filter's min
    (tiles,) = filter_tiles_gray(w, max_channels=2)
    np.testing.assert_allclose(tiles[0], 1.0)
    np.testing.assert_allclose(tiles[1], 0.0)


def test_section_mosaic_shows_the_first_conv_weights(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    ctx = make_context(
        make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["filters"])
    )
    params = FiltersParams(tile_size=20)
    result = FiltersAnalysis().run(ctx, params)
    section = result.section
    assert section.status == "ok"
    fig = next(b for b in section.blocks if isinstance(b, Figure))
    weight = ctx.model.module.conv1.weight.detach()
    factor = max(1, round(20 / 5))
    tiles = [to_uint8(upscale(t, factor)) for t in filter_tiles_rgb(weight)]
    columns = int(np.ceil(np.sqrt(8 * 1.6)))
    np.testing.assert_array_equal(
        fig.picture.pixels, mosaic(tiles, columns=columns, pad=max(2, factor // 2))
    )
    # The first tile sits at the padding offset and is the first filter, upscaled.
    pad = max(2, factor // 2)
    first = fig.picture.pixels[pad : pad + 5 * factor, pad : pad + 5 * factor]
    w0 = weight[0].numpy().transpose(1, 2, 0)
    expected = to_uint8(upscale((w0 - w0.min()) / (w0.max() - w0.min()), factor))
    np.testing.assert_array_equal(first, expected)
    table = next(b for b in section.blocks if isinstance(b, Table))
    norms = weight.flatten(1).norm(dim=1)
    assert table.rows[0][4] == pytest.approx(float(norms.mean()))
    assert result.metrics["first_layer_filters"] == 8


def test_grayscale_model_and_higher_layer(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    ctx = make_context(make_config(tmp_path, {"model.arch": TINY_GRAY_ARCH}, analyses=["filters"]))
    assert ctx.model.in_channels == 1
    result = FiltersAnalysis().run(ctx, FiltersParams(layers=["conv2"], max_channels=4))
    section = result.section
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    assert len(figures) == 2
    assert figures[0].picture.pixels.ndim == 2  # grayscale mosaic
    assert (
        "conv2: 16 of 16 filters, one strip each showing 4 of 8 input channels"
        in figures[1].caption
    )
    # 16 strips of 4 channels (3×3 kernels upscaled) stacked in one column.
    f = max(1, round(44 / 2 / 3))
    strip_h = 3 * f + 2
    assert figures[1].picture.pixels.shape[0] == 16 * strip_h + 17 * max(4, f)


def test_unknown_layer_names_the_nearest(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    ctx = make_context(
        make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["filters"])
    )
    with pytest.raises(LayerError, match="conv2"):
        FiltersAnalysis().run(ctx, FiltersParams(layers=["conv_2"]))
