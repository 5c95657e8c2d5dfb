"""First-layer filter mosaics (and, optionally, listed higher conv layers per channel)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from reportgen import loading
from reportgen.contract import Analysis, Metric, Result, SkipSection
from reportgen.params import AnalysisParams, at_least, between, layer_ref, rule
from reportgen.report.figures import mosaic, normalise01, to_uint8, upscale
from reportgen.report.section import Figure, Picture, Table, Text
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext

HOW_TO_READ = (
    "Each tile is one filter of the first convolution, drawn as the image patch that excites it "
    "most (min-max scaled per filter). A well-trained network shows smooth oriented edges, "
    "colour-opponent blobs and Gabor-like patterns, as in Krizhevsky et al.'s AlexNet filters; "
    "noisy, unstructured tiles suggest an under-trained model or a too-high learning rate. Dead "
    "filters (weight norm near zero) are counted in the table."
)


@dataclass(frozen=True)
class FiltersParams(AnalysisParams):
    layers: list[str] = field(default_factory=list, metadata=layer_ref())
    """Higher conv layers to draw as per-channel grayscale mosaics."""
    max_filters: int = field(default=96, metadata=rule(at_least(1)))
    """At most this many output filters per layer."""
    max_channels: int = field(default=16, metadata=rule(at_least(1)))
    """At most this many input channels per filter for the higher layers."""
    tile_size: int = field(default=44, metadata=rule(between(8, 256)))
    """Approximate on-screen size of each tile, in pixels."""


def filter_tiles_rgb(weight: torch.Tensor) -> list[np.ndarray]:
    """out×3×kh×kw -> one kh×kw×3 float image per filter, each min-max normalised on its own."""
    w = weight.detach().float().cpu().numpy()
    return [normalise01(f.transpose(1, 2, 0)) for f in w]


def filter_tiles_gray(weight: torch.Tensor, max_channels: int) -> list[list[np.ndarray]]:
    """out×in×kh×kw -> per filter, per input channel, a kh×kw grayscale image in [0,1].

    Normalised per filter (over all its channels), so channels of one filter stay comparable.
    """
    w = weight.detach().float().cpu().numpy()
    rows = []
    for f in w:
        f = normalise01(f[:max_channels])
        rows.append([c for c in f])
    return rows


class FiltersAnalysis(Analysis[FiltersParams]):
    name = "filters"
    title = "First-layer filters"
    Params = FiltersParams
    metrics = (
        Metric("first_layer_filters", "first-layer filters", kind="count"),
        Metric("first_layer_dead_filters", "near-zero first-layer filters", kind="count"),
    )
    order = 10

    def run(self, ctx: AnalysisContext, p: FiltersParams) -> Result:
        section = self.section(HOW_TO_READ)
        found = loading.models.first_weight_4d(ctx.model.module)
        if found is None:
            raise SkipSection("the model has no convolution weights")
        name, weight = found
        out_ch, in_ch, kh, kw = weight.shape
        shown = min(out_ch, p.max_filters)
        factor = max(1, round(p.tile_size / max(kh, kw)))
        columns = int(np.ceil(np.sqrt(shown * 1.6)))
        layer_name = name.removesuffix(".weight")
        if in_ch == 3:
            tiles = [to_uint8(upscale(t, factor)) for t in filter_tiles_rgb(weight[:shown])]
            pic = Picture(mosaic(tiles, columns=columns, pad=max(2, factor // 2)), kind="line")
            caption = (
                f"{shown} of {out_ch} filters of {layer_name} ({kh}×{kw}×{in_ch}), shown as RGB, "
                "each scaled to its own min-max."
            )
        else:
            per_filter = filter_tiles_gray(weight[:shown], max_channels=in_ch)
            tiles = [to_uint8(upscale(c, factor)) for f in per_filter for c in f]
            pic = Picture(
                mosaic(
                    tiles,
                    columns=columns * in_ch if in_ch > 1 else columns,
                    pad=max(2, factor // 2),
                )
            )
            caption = (
                f"{shown} of {out_ch} filters of {layer_name} ({kh}×{kw}, {in_ch} input channel"
                f"{'s' if in_ch > 1 else ''}), grayscale per input channel, each filter min-max scaled."
            )
        section.add(Figure(pic, caption=caption, alt=f"Mosaic of the filters of {layer_name}"))
        norms = weight.detach().float().flatten(1).norm(dim=1).cpu()
        dead = int((norms < 1e-3 * max(float(norms.max()), 1e-12)).sum())
        section.add(
            Table(
                caption="Filter statistics",
                columns=[
                    "layer",
                    "filters",
                    "kernel",
                    "input channels",
                    "mean L2 norm",
                    "min L2 norm",
                    "near-zero filters",
                ],
                rows=[
                    [
                        layer_name,
                        out_ch,
                        f"{kh}×{kw}",
                        in_ch,
                        float(norms.mean()),
                        float(norms.min()),
                        dead,
                    ]
                ],
            )
        )
        metrics = {"first_layer_filters": int(out_ch), "first_layer_dead_filters": dead}
        for layer in p.layers:
            module = loading.types.find_layer(ctx.model.module, layer)
            w = getattr(module, "weight", None)
            if not isinstance(w, torch.Tensor) or w.ndim != 4:
                section.add(Text(f"{layer} has no convolution kernel; not drawn.", kind="note"))
                continue
            o, i, h, k = w.shape
            n_out, n_in = min(o, p.max_filters, 32), min(i, p.max_channels)
            f = max(1, round(p.tile_size / 2 / max(h, k)))
            rows = filter_tiles_gray(w[:n_out], max_channels=n_in)
            # One strip per filter (its input channels side by side), strips well apart.
            strips = [
                mosaic([to_uint8(upscale(c, f)) for c in row], columns=n_in, pad=1) for row in rows
            ]
            section.add(
                Figure(
                    Picture(mosaic(strips, columns=1 if n_out <= 16 else 2, pad=max(4, f))),
                    caption=(
                        f"{layer}: {n_out} of {o} filters, one strip each showing {n_in} of {i} "
                        f"input channels left to right, {h}×{k} kernels, grayscale, each filter "
                        "min-max scaled."
                    ),
                    alt=f"Per-channel filters of {layer}",
                )
            )
        # The whole first layer, for auditors and `reportgen compare` (filters old vs new).
        arrays = {"first_layer_filters": weight.detach().float().cpu().numpy()}
        return Result(section, arrays=arrays, metrics=metrics)
