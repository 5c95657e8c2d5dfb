"""Per channel, the dataset's image patches that excite it most, cropped to the receptive field."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from reportgen import methods
from reportgen.analyses.common import LayerTopK, TopKCollector, layer_channels, patch_layers
from reportgen.contract import Analysis, Cost, Needs, Result, SkipSection
from reportgen.params import AnalysisParams, at_least, between, each, layer_ref, rule
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table, Text

if TYPE_CHECKING:
    from torch import nn

    from reportgen.contract import AnalysisContext, Collector, SetupContext
    from reportgen.methods.receptive_field import ReceptiveField

HOW_TO_READ = (
    "Each row is one channel (unit) of a layer; across the row are the image patches of the whole "
    "dataset that excite it most, strongest first, with the activation under each patch. A patch "
    "is exactly the input region that can influence the unit (its receptive field, measured on "
    "the model, not assumed); grey checkerboard is padding where that region extends past the "
    "image border. One image contributes at most one patch per channel. A channel that has "
    "learned something specific shows the same pattern in all its patches (a stroke direction, a "
    "corner, a texture, an object part); deeper layers have larger fields and more abstract, "
    "class-specific patterns. The table lists the receptive field of each layer and, per channel, "
    "the labels of its top images."
)

PAD_LIGHT, PAD_DARK = 190, 150


@dataclass(frozen=True)
class MaxPatchesParams(AnalysisParams):
    layers: list[str] = field(default_factory=list, metadata=layer_ref())
    """Module names; empty = three conv layers spread from early to late."""
    channels: list[int] = field(
        default_factory=list,
        metadata=rule(each(at_least(0), "must be channel numbers ≥ 0")),
    )
    """Channel numbers shown for every layer; empty = per layer the ``channels_per_layer``
    channels whose peak activation varies most across images."""
    channels_per_layer: int = field(default=16, metadata=rule(between(1, 256)))
    k: int = field(default=9, metadata=rule(between(1, 64)))
    """Patches per channel."""
    patch_size: int = field(default=56, metadata=rule(between(16, 256)))
    """On-screen size of each patch, in pixels."""


MARK = np.array([255, 140, 0], np.uint8)


def field_patch(image: np.ndarray, rf: ReceptiveField, y: int, x: int) -> tuple[np.ndarray, bool]:
    """The patch for unit (y, x): its receptive field cropped from the image, or — when the field
    covers the whole image (late layers of deep nets: 851 px on a 224 px input) — the whole image
    with the unit's position marked, instead of a checkerboard of padding around it.

    Returns the patch and whether it is the marked whole image.
    """
    h, w = image.shape[:2]
    top, left, bottom, right = rf.box(y, x)
    if not (top <= 0 and left <= 0 and bottom >= h and right >= w):
        return crop_with_padding(image, (top, left, bottom, right)), False
    out = image.copy()
    cy = min(max((top + bottom) // 2, 0), h - 1)
    cx = min(max((left + right) // 2, 0), w - 1)
    half = max(1, min(h, w) // 16, rf.stride[0] // 2)
    y0, y1, x0, x1 = (
        max(cy - half, 0),
        min(cy + half, h - 1),
        max(cx - half, 0),
        min(cx + half, w - 1),
    )
    out[y0 : y1 + 1, [x0, x1]] = MARK  # a small orange square around the unit's centre
    out[[y0, y1], x0 : x1 + 1] = MARK
    return out, True


def crop_with_padding(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """H×W×3 uint8 region ``(top, left, bottom, right)``; outside the image: a grey checkerboard."""
    top, left, bottom, right = box
    hh, ww = bottom - top, right - left
    yy, xx = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    cell = max(2, max(hh, ww) // 8)
    checker = np.where(((yy // cell + xx // cell) % 2) == 0, PAD_LIGHT, PAD_DARK).astype(np.uint8)
    out = np.repeat(checker[..., None], 3, axis=2)
    h, w = image.shape[:2]
    t, lft, b, r = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if t < b and lft < r:
        out[t - top : b - top, lft - left : r - left] = image[t:b, lft:r]
    return out


def resize_patch(patch: np.ndarray, size: int) -> np.ndarray:
    """Longer side to ``size``: nearest when enlarging (crisp pixels), box filter when shrinking."""
    h, w = patch.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(patch).resize(new, method))


FRAME = 190  # grey level of the 1-px frame around each patch


LEAD_FRAME = np.array([40, 110, 200], np.uint8)
"""Frame of the optimised image that leads a row (feature visualisation)."""


def patch_grid(
    patches: list[list[np.ndarray]],
    values: list[list[float]],
    row_labels: list[str],
    size: int,
    lead: list[tuple[np.ndarray, float] | None] | None = None,
) -> Picture:
    """Rows of equal-size patches with the row label on the left and values above each patch.

    ``lead``: per row, an image optimised for the row's channel and its value, drawn first in a
    blue frame under the heading "optimised" (``None``: that channel was not optimised)."""
    label_w, gap, text_h, row_gap = 64, 4, 12, 10
    k = max(len(r) for r in patches)
    ph = max(p.shape[0] for r in patches for p in r)
    pw = max(p.shape[1] for r in patches for p in r)
    row_h = ph + text_h + row_gap
    top = text_h + 2 if lead else 0
    first = label_w + gap + (pw + 3 * gap if lead else 0)
    width = first + k * (pw + gap)
    height = top + len(patches) * row_h + gap
    canvas = np.full((height, width, 3), 255, np.uint8)
    for ri, row in enumerate(patches):
        y = top + gap + ri * row_h
        for ci, p in enumerate(row):
            x = first + ci * (pw + gap)
            # A light frame keeps all-white (or all-black) patches visible on the page.
            canvas[y - 1 : y + p.shape[0] + 1, x - 1 : x + p.shape[1] + 1] = FRAME
            canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
        shown = lead[ri] if lead else None
        if shown is not None:
            img = resize_patch(shown[0], size)
            x = label_w + gap
            canvas[y - 2 : y + img.shape[0] + 2, x - 2 : x + img.shape[1] + 2] = LEAD_FRAME
            canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    fig = new_figure(width / 100, height / 100)
    fig.set_layout_engine("none")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if lead:
        ax.text(label_w + gap + pw / 2, 1, "optimised", fontsize=7, ha="center", va="top")
        ax.text(first, 1, "top dataset patches", fontsize=7, ha="left", va="top")
    # Values go right under their patch, rows are spaced further apart than that.
    for ri, row_values in enumerate(values):
        y = top + gap + ri * row_h
        ax.text(4, y + ph / 2, row_labels[ri], fontsize=8, va="center", ha="left")
        for ci, v in enumerate(row_values):
            x = first + ci * (pw + gap) + pw / 2
            ax.text(x, y + ph + 1, f"{v:.3g}", fontsize=7, ha="center", va="top")
        if lead:
            shown = lead[ri]
            text = "—" if shown is None else f"mean {shown[1]:.3g}"
            where = y + ph + 1 if shown is not None else y + ph / 2
            ax.text(label_w + gap + pw / 2, where, text, fontsize=7, ha="center", va="top")
    pic = figure_to_picture(fig, dpi=100)
    return Picture(pic.pixels, kind="photo")


class MaxPatchesAnalysis(Analysis[MaxPatchesParams]):
    name = "max_patches"
    title = "Maximally activating patches"
    Params = MaxPatchesParams
    needs = Needs(hooks=True)
    order = 50

    def collector(self, setup: SetupContext, p: MaxPatchesParams) -> Collector | None:
        model = setup.model.module
        layers = patch_layers(self.name, model, setup.token_layout, p.layers, p.channels)
        if not layers:
            return None
        return TopKCollector(layers, p.k, setup.token_layout)

    def cost(self, ctx: AnalysisContext, p: MaxPatchesParams) -> Cost:
        # One backward over three probe inputs finds every layer's receptive field (a CNN's).
        return Cost() if ctx.token_layout is not None else Cost(backward=3)

    def run(self, ctx: AnalysisContext, p: MaxPatchesParams) -> Result:
        section = self.section(HOW_TO_READ)
        col = ctx.collector
        if not isinstance(col, TopKCollector):
            raise SkipSection(
                "the model has no conv layers; list layers under analyses.max_patches.layers"
            )
        listed = list(dict.fromkeys(p.channels)) or None
        model = ctx.model.module
        layers = [name for name in col.layers if name in col.state]
        for name in col.layers:
            if name not in col.state:
                section.add(Text(f"{name} has no spatial output map; left out.", kind="note"))
        if not layers:
            raise SkipSection("none of the layers has a spatial output map")
        layout = ctx.token_layout
        if layout is not None:
            # After the first attention every token sees the whole image: the crop is the patch
            # (or merged patch) each token was made from, not a receptive field.
            section.add(
                Text(
                    layout.describe() + " Each crop is the image cell its token was made from.",
                    kind="note",
                )
            )
            fields = {
                name: methods.vit.token_cell_field(name, layout, col.state[name].map_size)
                for name in layers
            }
        else:
            fields = self._fields(model, layers, ctx, section)
        chosen: dict[str, list[int]] = {}
        for name in layers:
            if name not in fields:
                continue
            chosen[name] = layer_channels(
                self.name, name, col.state[name], listed, p.channels_per_layer
            )
        winners = sorted(
            {
                int(v)
                for name, chans in chosen.items()
                for v in col.state[name].positions[chans].flatten().tolist()
                if v >= 0
            }
        )
        images = dict(zip(winners, ctx.display_images(winners), strict=True))
        geometry_rows: list[list[Any]] = []
        channel_rows: list[list[Any]] = []
        for name, chans in chosen.items():
            st, rf = col.state[name], fields[name]
            vals = st.values[chans].cpu().tolist()
            pos = st.positions[chans].cpu().tolist()
            ys, xs = st.ys[chans].cpu().tolist(), st.xs[chans].cpu().tolist()
            patches: list[list[np.ndarray]] = []
            shown_vals: list[list[float]] = []
            whole_image = False
            for ci in range(len(chans)):
                row: list[np.ndarray] = []
                row_vals: list[float] = []
                for j in range(len(vals[ci])):
                    if pos[ci][j] < 0:
                        continue
                    crop, whole = field_patch(images[pos[ci][j]], rf, ys[ci][j], xs[ci][j])
                    whole_image |= whole
                    row.append(resize_patch(crop, p.patch_size))
                    row_vals.append(vals[ci][j])
                patches.append(row)
                shown_vals.append(row_vals)
            optimised = ctx.unit_images(name)
            lead = (
                [
                    (optimised[c].pixels, optimised[c].value) if c in optimised else None
                    for c in chans
                ]
                if any(c in optimised for c in chans)
                else None
            )
            if any(patches):
                section.add(
                    Figure(
                        patch_grid(
                            patches, shown_vals, [f"ch {c}" for c in chans], p.patch_size, lead
                        ),
                        caption=(
                            f"{name}: top {p.k} dataset patches for {len(chans)} of "
                            f"{st.values.shape[0]} channels "
                            + (
                                "(listed)"
                                if listed
                                else "(those whose peak activation varies most across images)"
                            )
                            + (
                                f"; the {rf.size[0]}×{rf.size[1]} px receptive field covers the "
                                "whole input, so each image is shown whole with the unit's "
                                f"position marked in orange, at {p.patch_size} px."
                                if whole_image
                                else f"; each patch is the {rf.size[0]}×{rf.size[1]} px receptive "
                                f"field, shown at {p.patch_size} px."
                            )
                            + (
                                " First column (blue frame): the image feature visualisation "
                                "optimised for the channel, with its mean activation; — where "
                                "it optimised none."
                                if lead
                                else ""
                            )
                        ),
                        alt=f"Maximally activating patches of {name}",
                        wide=True,
                    )
                )
            height, width = next(iter(images.values())).shape[:2] if images else (0, 0)
            geometry_rows.append(self._geometry_row(name, st, rf, height, width))
            for ci, c in enumerate(chans):
                labels = [k for q in pos[ci] if q >= 0 for k in self._labels_of(ctx, q)]
                channel_rows.append(
                    [
                        name,
                        c,
                        float(st.variance[c]),
                        vals[ci][0] if pos[ci][0] >= 0 else None,
                        vals[ci][-1] if pos[ci][-1] >= 0 else None,
                        ctx.relpath(pos[ci][0]) if pos[ci][0] >= 0 else "—",
                        self._label_summary(ctx, labels),
                    ]
                )
        section.add(
            Table(
                caption=(
                    "Receptive fields, measured on the model: unit (y, x) sees input rows "
                    "y·stride + offset … + size − 1 (likewise columns). 'Fully inside' counts the "
                    "units whose field does not need padding at this input size."
                ),
                columns=["layer", "map (h×w)", "field size", "stride", "offset", "fully inside"],
                rows=geometry_rows,
            )
        )
        section.add(
            Table(
                caption=(
                    f"Channels shown: variance of each image's peak activation over {col.state[layers[0]].count} "
                    f"images, the best and the {p.k}th-best peak, the best image, and the labels of the top {p.k}."
                ),
                columns=[
                    "layer",
                    "channel",
                    "peak variance",
                    "best",
                    f"#{p.k}",
                    "best image",
                    "top labels",
                ],
                rows=channel_rows,
            )
        )
        return Result(section)

    @staticmethod
    def _fields(
        model: nn.Module, layers: list[str], ctx: AnalysisContext, section: Section
    ) -> dict[str, ReceptiveField]:
        in_ch = ctx.model.in_channels
        try:
            return methods.receptive_field.receptive_fields(model, layers, in_ch, device=ctx.device)
        except methods.receptive_field.ReceptiveFieldError:
            pass
        out: dict[str, ReceptiveField] = {}
        for name in layers:
            try:
                out[name] = methods.receptive_field.receptive_fields(
                    model, [name], in_ch, device=ctx.device
                )[name]
            except methods.receptive_field.ReceptiveFieldError as exc:
                section.add(
                    Text(f"{name}: receptive field unavailable ({exc}); left out.", kind="warning")
                )
        return out

    @staticmethod
    def _geometry_row(
        name: str, st: LayerTopK, rf: ReceptiveField, height: int, width: int
    ) -> list[Any]:
        h, w = st.map_size
        inside_r = sum(
            1 for u in range(h) if rf.rows.span(u)[0] >= 0 and rf.rows.span(u)[1] <= height
        )
        inside_c = sum(
            1 for u in range(w) if rf.cols.span(u)[0] >= 0 and rf.cols.span(u)[1] <= width
        )
        same = rf.rows == rf.cols
        return [
            name,
            f"{h}×{w}",
            f"{rf.size[0]}" if same else f"{rf.size[0]}×{rf.size[1]}",
            f"{rf.stride[0]}" if same else f"{rf.stride[0]}×{rf.stride[1]}",
            f"{rf.offset[0]}" if same else f"{rf.offset[0]}, {rf.offset[1]}",
            f"{inside_r * inside_c} of {h * w} units",
        ]

    @staticmethod
    def _labels_of(ctx: AnalysisContext, position: int) -> list[int]:
        """An image's label (single-label) or each of its labels (multi-label)."""
        if ctx.pass_result.label_sets is not None:
            return ctx.label_set(position)
        return [ctx.label(position)]

    @staticmethod
    def _label_summary(ctx: AnalysisContext, labels: list[int]) -> str:
        if not ctx.folder.labelled or not labels:
            return "—"
        counts = Counter(labels).most_common(3)
        return ", ".join(f"{ctx.class_name(lab)} ×{n}" for lab, n in counts)
