"""Feature maps of a few layers for the query images, as grids of per-channel grayscale maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen.analyses.common import (
    LayerNotCalled,
    as_map,
    default_layers,
    layer_outputs,
    resolve_layers,
)
from reportgen.contract import Analysis, Cost, Metric, Needs, Result, SkipSection
from reportgen.params import AnalysisParams, at_least, between, layer_ref, rule
from reportgen.report.figures import figure_to_picture, mosaic, new_figure, to_uint8, upscale
from reportgen.report.section import Figure, Table, Text
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext

HOW_TO_READ = (
    "For each query image (left) every small tile is one channel of the layer's output, in "
    "channel order, row by row (the number left of each row is its first channel). Bright means "
    "strongly active; all tiles of one image share one grey scale (black = the smallest value or "
    "0, white = the largest), so dark tiles are channels this image does not excite. Early layers "
    "respond to edges and colours and still look like the image; deeper maps are coarser and "
    "sparser, each channel firing on a specific part or pattern (as in the lecture's conv5 "
    "figure). Orange frames mark the channels with the highest mean activation, also listed in the "
    "table. Channels that stay black for every image may be dead."
)

HIGHLIGHT = np.array([255, 140, 0], np.uint8)


@dataclass(frozen=True)
class ActivationsParams(AnalysisParams):
    layers: list[str] = field(default_factory=list, metadata=layer_ref())
    """Layers to draw, by module name; empty = three conv layers spread from first to last."""
    max_channels: int = field(default=64, metadata=rule(at_least(1)))
    """At most this many channels per layer (the first ones, in channel order)."""
    max_queries: int = field(default=8, metadata=rule(at_least(1)))
    """At most this many of the query images."""
    top_channels: int = field(default=5, metadata=rule(between(0, 64)))
    """How many of the most active channels the table lists and the figure frames."""
    tile_size: int = field(default=28, metadata=rule(between(8, 128)))
    """Approximate on-screen size of each channel map, in pixels."""


def channel_means(maps: torch.Tensor) -> torch.Tensor:
    """Q×C×h×w -> Q×C mean activation per channel."""
    return maps.flatten(2).mean(2)


def activation_tiles(
    maps: np.ndarray, factor: int, highlight: set[int], border: int = 1
) -> tuple[np.ndarray, int]:
    """C×h×w floats (one image, one layer) -> an RGB mosaic with a shared grey scale.

    Black is min(0, smallest value), white the largest; tiles in ``highlight`` get an orange
    frame. Returns the mosaic and its number of columns.
    """
    lo = min(0.0, float(maps.min()))
    hi = float(maps.max())
    scaled = (maps - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(maps)
    tiles = []
    for c, m in enumerate(scaled):
        gray = upscale(to_uint8(m), factor)
        tile = np.repeat(gray[..., None], 3, axis=2)
        framed = np.full((tile.shape[0] + 2 * border, tile.shape[1] + 2 * border, 3), 255, np.uint8)
        if c in highlight:
            framed[:] = HIGHLIGHT
        framed[border:-border, border:-border] = tile
        tiles.append(framed)
    columns = min(len(tiles), 16)
    return mosaic(tiles, columns=columns, pad=1), columns


class ActivationsAnalysis(Analysis[ActivationsParams]):
    name = "activations"
    title = "Activations: feature maps of the query images"
    Params = ActivationsParams
    needs = Needs(hooks=True, queries=True)
    metrics = (Metric("activations_layers", "layers drawn", kind="text"),)
    order = 40

    def cost(self, ctx: AnalysisContext, p: ActivationsParams) -> Cost:
        return Cost(forward=len(ctx.queries[: p.max_queries]))

    def run(self, ctx: AnalysisContext, p: ActivationsParams) -> Result:
        section = self.section(HOW_TO_READ)
        model = ctx.model.module
        layers = resolve_layers(model, p.layers, default_layers(model, ctx.token_layout))
        if not layers:
            raise SkipSection(
                "the model has no conv layers; list layers under analyses.activations.layers"
            )
        batch = ctx.query_batch()  # the queries as read once, a file changed since left out
        # Each image once (a multi-label query fills several rows of the batch).
        first = batch.first_rows()[: p.max_queries]
        queries = [batch.positions[i] for i in first]
        inputs = batch.inputs[first]
        try:
            outputs = layer_outputs(model, layers, inputs, ctx.batch_size)
        except LayerNotCalled as exc:
            raise SkipSection(str(exc)) from None
        images = ctx.display_images(queries)
        rows: list[list[Any]] = []
        if ctx.token_layout is not None:
            section.add(Text(ctx.token_layout.describe(), kind="note"))
        for layer in layers:
            raw = outputs[layer]
            maps = as_map(layer, raw, ctx.token_layout, len(queries))
            if maps is None:
                maps = raw
                section.add(
                    Text(
                        f"{layer} outputs {tuple(maps.shape[1:])}, not a spatial map; not drawn.",
                        kind="note",
                    )
                )
                continue
            means = channel_means(maps)
            shown = min(maps.shape[1], p.max_channels)
            top_k = min(p.top_channels, maps.shape[1])
            top_vals, top_idx = (
                means.topk(top_k, dim=1) if top_k else (means[:, :0], means[:, :0].long())
            )
            active = (means > 0).float().mean(1)
            maps_np = maps[:, :shown].cpu().numpy()
            top_np, topv_np = top_idx.cpu().numpy(), top_vals.cpu().numpy()
            section.add(
                self._figure(ctx, layer, maps, maps_np, images, queries, top_np, p.tile_size)
            )
            for qi, q in enumerate(queries):
                rows.append(
                    [
                        layer,
                        "×".join(str(s) for s in maps.shape[1:]),
                        ctx.relpath(q),
                        ", ".join(
                            f"{int(c)} ({v:.3g})"
                            for c, v in zip(top_np[qi], topv_np[qi], strict=True)
                        ),
                        f"{100 * float(active[qi]):.0f} %",
                    ]
                )
        section.add(
            Table(
                caption=(
                    f"Most active channels per layer and query image: the {p.top_channels} channels "
                    "with the highest mean activation over the map (mean in brackets), and the "
                    "share of channels whose mean is above zero."
                ),
                columns=[
                    "layer",
                    "output (C×h×w)",
                    "query",
                    "top channels (mean)",
                    "channels active",
                ],
                rows=rows,
            )
        )
        return Result(section, metrics={"activations_layers": ", ".join(layers)})

    @staticmethod
    def _figure(
        ctx: AnalysisContext,
        layer: str,
        maps: torch.Tensor,
        maps_np: np.ndarray,
        images: list[np.ndarray],
        queries: list[int],
        top: np.ndarray,
        tile_size: int,
    ) -> Figure:
        c, h, w = maps.shape[1:]
        shown = maps_np.shape[1]
        factor = max(1, round(tile_size / max(h, w)))
        grids = [
            activation_tiles(maps_np[qi], factor, set(top[qi].tolist()))
            for qi in range(len(queries))
        ]
        grid_h, grid_w = grids[0][0].shape[:2]
        columns = grids[0][1]
        tile_h = h * factor + 3  # tile, its frame and the mosaic padding
        width_in = min(14.0, 0.8 + (grid_h + grid_w) / 100 * 1.1)
        # Inches per grid pixel once the width cap applies: rows only as tall as the maps drawn.
        scale = min(1.1 / 100, (width_in - 0.8) / (grid_h + grid_w))
        row_in = max(0.9, grid_h * scale) + 0.45
        fig = new_figure(width_in, row_in * len(queries))
        axes = fig.subplots(len(queries), 2, squeeze=False, width_ratios=[grid_h, grid_w])
        for qi, q in enumerate(queries):
            ax_img, ax_maps = axes[qi]
            img = images[qi]
            ax_img.imshow(img if img.shape[2] == 3 else img[..., 0], interpolation="nearest")
            ax_img.set_xticks([])
            ax_img.set_yticks([])
            lab = ctx.label_text(q)
            ax_img.set_title(f"{ctx.relpath(q)}\n({lab})", fontsize=7)
            grid, _ = grids[qi]
            ax_maps.imshow(grid, interpolation="nearest")
            rows_n = int(np.ceil(shown / columns))
            ax_maps.set_yticks([1 + r * tile_h + tile_h / 2 for r in range(rows_n)])
            ax_maps.set_yticklabels([str(r * columns) for r in range(rows_n)], fontsize=6)
            ax_maps.set_xticks([])
            ax_maps.tick_params(length=0)
            peak = float(maps[qi].max())
            ax_maps.set_title(
                f"max {peak:.3g} · top channels {', '.join(str(int(t)) for t in top[qi][:3])}",
                fontsize=7,
            )
        return Figure(
            figure_to_picture(fig),
            caption=(
                f"{layer}: {shown} of {c} channels ({h}×{w} maps) for {len(queries)} query "
                f"image(s); one grey scale per image, orange frames = most active channels."
            ),
            alt=f"Feature maps of {layer} for the query images",
            wide=True,
        )
