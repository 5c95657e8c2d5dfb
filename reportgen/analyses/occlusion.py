"""Occlusion sensitivity (Zeiler & Fergus): slide a grey square over the image, watch the score.

Every occluded copy of every query image is one job; jobs are evaluated in large batches on the
device under ``torch.inference_mode``. A batch of occluded copies is built in one vectorised step
(row and column masks broadcast into a B×H×W mask, then one ``torch.where``), so there is no Python
loop per window. No hooks and no gradients: this works on TorchScript and exported models too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reportgen import methods
from reportgen.contract import Analysis, Cost, Metric, Needs, Result, SkipSection
from reportgen.params import (
    AnalysisParams,
    at_least,
    between,
    either,
    in_range,
    literal,
    rule,
)
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext, QueryBatch
    from reportgen.methods.perturbation import OcclusionMaps

HOW_TO_READ = (
    "A grey square (the dataset's mean pixel) is slid over each query image, and the model's "
    "probability for the explained class (the true label, or the prediction for unlabelled images) "
    "is recorded at every position. In the heat-map (middle), each cell is one occluder position "
    "(its top-left corner); dark cells are positions where hiding that part of the image makes "
    "the class less likely — the evidence the model relies on. The overlay (right) spreads the "
    "probability drop back onto the pixels (averaged over the windows that cover each pixel): red "
    "regions should sit on the object, not on the background. If the probability barely moves "
    "anywhere, the model relies on evidence spread over the whole image or the occluder is too "
    "small; if it drops everywhere, the occluder is too large."
)


@dataclass(frozen=True)
class OcclusionParams(AnalysisParams):
    window: int = field(default=0, metadata=rule(at_least(0, "must be 0 (automatic) or positive")))
    """Side of the square occluder in input pixels; 0 = a quarter of the input's shorter side."""
    stride: int = field(default=0, metadata=rule(at_least(0, "must be 0 (automatic) or positive")))
    """Step between occluder positions; 0 = a quarter of the window (about 13×13 positions)."""
    fill: Literal["mean"] | float = field(
        default="mean",
        metadata=rule(
            either(literal("mean"), in_range(0, 1), text="must be 'mean' or a number in [0, 1]")
        ),
    )
    """``mean``: the dataset's mean pixel; a number: that gray value in [0, 1] pixel space."""
    batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata=rule(
            either(literal("auto"), at_least(1), text="must be 'auto' or a positive whole number")
        ),
    )
    """Occluded copies per forward pass (bounds memory); ``auto``: the batch measured fastest for
    this model on this machine (``run.memory_format``)."""
    image_size: int = field(default=160, metadata=rule(between(32, 512)))
    """On-screen size of each panel, in pixels."""


def resolve_fill(fill: Literal["mean"] | float, ctx: AnalysisContext) -> torch.Tensor:
    """The occluder's C fill values in model input space."""
    if fill == "mean":
        mean = ctx.pass_result.mean_input
        if mean is None:
            raise SkipSection("the dataset pass recorded no mean input for the occluder's fill")
        return mean.detach().float().to(ctx.device)
    gray = torch.full((ctx.model.in_channels, 1, 1), float(fill))
    return ctx.preprocessor.normalise(gray).flatten().to(ctx.device)


# --------------------------------------------------------------------------- presentation


def occlusion_figure(
    images: list[np.ndarray],
    maps: np.ndarray,
    drops: np.ndarray,
    titles: list[str],
    window: int,
    stride: int,
    panel_px: int,
    per_row: int = 2,
) -> Picture:
    """Per query three panels: image, probability map (shared 0–1 scale), drop overlay.

    ``per_row`` queries side by side, so the figure uses the page's width.
    """
    q = len(images)
    per_row = max(1, min(per_row, q))
    grid_rows = -(-q // per_row)
    panel = panel_px / 100.0
    fig = new_figure(3 * per_row * panel + 0.3 * per_row, grid_rows * (panel + 0.4) + 0.7)
    axes = fig.subplots(grid_rows, 3 * per_row, squeeze=False)
    prob_artist = None
    for i in range(q):
        img = images[i]
        gray = img.mean(axis=2)
        h, w = img.shape[:2]
        gr, gc = divmod(i, per_row)
        ax0, ax1, ax2 = axes[gr, 3 * gc : 3 * gc + 3]
        ax0.imshow(img, interpolation="nearest")
        ax0.set_title(titles[i], fontsize=8)
        rows, cols = maps[i].shape
        # Cell (r, c) is drawn centred on its window's centre, so the map lines up with the
        # image; the faint image underneath shows the border no window centre reaches.
        half = window / 2 - 0.5
        extent = (
            half - stride / 2,
            half + (cols - 1) * stride + stride / 2,
            half + (rows - 1) * stride + stride / 2,
            half - stride / 2,
        )
        ax1.imshow(gray, cmap="gray", vmin=-255, vmax=510, interpolation="nearest")
        prob_artist = ax1.imshow(
            maps[i], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", extent=extent
        )
        ax1.set_xlim(-0.5, w - 0.5)
        ax1.set_ylim(h - 0.5, -0.5)
        r, c = np.unravel_index(int(np.argmin(maps[i])), maps[i].shape)
        ax1.add_patch(
            _rectangle(c * stride - 0.5, r * stride - 0.5, window, edgecolor="red", linewidth=1.2)
        )
        ax1.set_title(f"p by position (min {maps[i].min():.2f})", fontsize=8)
        # Each overlay is scaled to its own largest drop (written in the title): small but
        # consistent drops still show where the evidence is.
        scale = max(float(np.nanmax(np.abs(drops[i]))), 1e-6)
        ax2.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax2.imshow(
            np.nan_to_num(drops[i]),
            cmap="RdBu_r",
            vmin=-scale,
            vmax=scale,
            alpha=0.65,
            interpolation="bilinear",
        )
        ax2.set_title(f"drop (max {float(np.nanmax(drops[i])):.2f})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for k in range(q, grid_rows * per_row):
        gr, gc = divmod(k, per_row)
        for ax in axes[gr, 3 * gc : 3 * gc + 3]:
            ax.set_axis_off()
    if prob_artist is not None:
        bar = fig.colorbar(
            prob_artist, ax=axes.ravel().tolist(), location="bottom", shrink=0.4, aspect=40
        )
        bar.set_label("probability of the explained class", fontsize=8)
    return figure_to_picture(fig, dpi=100)


def _rectangle(x: float, y: float, size: float, **kwargs: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), size, size, fill=False, **kwargs)


class OcclusionAnalysis(Analysis[OcclusionParams]):
    name = "occlusion"
    title = "Occlusion sensitivity"
    Params = OcclusionParams
    needs = Needs(queries=True)
    metrics = (
        Metric("occlusion_window", "occluder size (px)", kind="count"),
        Metric("occlusion_stride", "occluder stride (px)", kind="count"),
        Metric("occlusion_mean_max_drop", "mean largest probability drop under occlusion"),
    )
    order = 60

    @staticmethod
    def _key(ctx: AnalysisContext, p: OcclusionParams) -> tuple[Any, ...]:
        h, w = ctx.input_size
        window, stride = methods.perturbation.resolve_geometry(h, w, p.window, p.stride)
        return methods.trust.map_key(
            "occlusion", occlusion_window=window, occlusion_stride=stride, occlusion_fill=p.fill
        )

    def shares(self, ctx: AnalysisContext, p: OcclusionParams) -> tuple[Any, ...]:
        # The checks compute in fp32: share only maps they would compute.
        return () if ctx.autocasting else (self._key(ctx, p),)

    def cost(self, ctx: AnalysisContext, p: OcclusionParams) -> Cost:
        h, w = ctx.input_size
        f, _ = methods.trust.passes_per_image(
            "occlusion", h, w, occlusion_window=p.window, occlusion_stride=p.stride
        )
        return Cost(forward=ctx.explained_rows * f)

    def run(self, ctx: AnalysisContext, p: OcclusionParams) -> Result:
        batch = ctx.query_batch()
        _, _, h, w = batch.inputs.shape
        window, stride = methods.perturbation.resolve_geometry(h, w, p.window, p.stride)
        fill = resolve_fill(p.fill, ctx)
        maps = methods.perturbation.occlusion_maps(
            ctx.forward,
            batch.inputs,
            batch.targets,
            window,
            stride,
            fill,
            batch_size=ctx.batch(p.batch_size),
            channels_last=ctx.device.type == "cuda",
            progress=ctx.progress,
            module=ctx.model.module if ctx.model.supports_hooks and not ctx.autocasting else None,
            head=ctx.head,
        )
        pixel_prob = methods.perturbation.pixel_probability(maps.prob, h, w, window, stride)
        drops = maps.base_prob[:, None, None] - pixel_prob
        for key in self.shares(ctx, p):
            ctx.share_maps(key, batch.rows, drops)

        arrays = batch.arrays()
        arrays["occlusion_prob"] = maps.prob.float().cpu().numpy()
        arrays["occlusion_window"] = np.array(window, dtype=np.int64)
        arrays["occlusion_stride"] = np.array(stride, dtype=np.int64)
        arrays["occlusion_fill"] = fill.float().cpu().numpy()

        section = self._section(ctx, p, batch, maps, drops, window, stride)
        base = maps.base_prob.float().cpu().numpy()
        prob = maps.prob.float().cpu().numpy()
        metrics = {
            "occlusion_window": window,
            "occlusion_stride": stride,
            "occlusion_mean_max_drop": float(np.mean(base - prob.min(axis=(1, 2)))),
        }
        return Result(section, arrays=arrays, metrics=metrics)

    def _section(
        self,
        ctx: AnalysisContext,
        p: OcclusionParams,
        batch: QueryBatch,
        maps: OcclusionMaps,
        drops: torch.Tensor,
        window: int,
        stride: int,
    ) -> Section:
        section = self.section(HOW_TO_READ)
        positions = batch.positions
        prob = maps.prob.float().cpu().numpy()
        predicted = maps.predicted.cpu().numpy()
        base = maps.base_prob.float().cpu().numpy()
        targets = batch.targets.cpu().numpy()
        images = ctx.display_images(positions)
        names = [ctx.class_name(int(t)) for t in targets]
        rows, cols = prob.shape[1:]
        fill_text = (
            "the dataset's mean pixel"
            if p.fill == "mean"
            else f"gray {float(p.fill):g} (pixel space)"
        )
        section.add(
            Figure(
                occlusion_figure(
                    images,
                    prob,
                    drops.float().cpu().numpy(),
                    [f"{ctx.relpath(q)} · {n}" for q, n in zip(positions, names, strict=True)],
                    window,
                    stride,
                    p.image_size,
                ),
                caption=(
                    f"Occlusion with a {window}×{window} square of {fill_text}, stride {stride} "
                    f"({rows}×{cols} positions per image), watching {ctx.explained_words}. "
                    "Left: the input; middle: its probability per occluder position, drawn at "
                    "the window's centre "
                    "(shared 0–1 scale; red box: the position that lowers it most); right: the "
                    "probability drop per pixel (unoccluded minus occluded, averaged over the "
                    "windows covering the pixel; red = evidence, blue = occluding helps), each "
                    "scaled to its own largest drop."
                ),
                alt="Occlusion probability heat-maps and overlays for the query images",
                wide=True,
            )
        )
        table_rows: list[list[Any]] = []
        for i, q in enumerate(positions):
            r, c = np.unravel_index(int(np.argmin(prob[i])), prob[i].shape)
            y, x = int(r) * stride, int(c) * stride
            table_rows.append(
                [
                    ctx.relpath(q),
                    names[i],
                    float(base[i]),
                    float(prob[i].min()),
                    f"rows {y}–{y + window - 1}, cols {x}–{x + window - 1}",
                    ctx.class_name(int(predicted[i, r, c]))
                    if ctx.head.single_label
                    else ("still predicted" if predicted[i, r, c] else "no longer predicted"),
                    float((prob[i] < 0.5 * base[i]).mean()),
                ]
            )
        section.add(
            Table(
                caption=(
                    "Per query: probability of the explained class without occlusion, its "
                    "minimum over occluder positions, where that occluder sits, what the model "
                    "predicts then, and the share of positions that at least halve the probability."
                ),
                columns=[
                    "image",
                    "explained class",
                    "p (unoccluded)",
                    "min p (occluded)",
                    "most important window",
                    "prediction there",
                    "share of positions halving p",
                ],
                rows=table_rows,
            )
        )
        return section
