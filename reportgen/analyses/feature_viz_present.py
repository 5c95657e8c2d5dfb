"""Presentation of feature visualisation: the optimised images and their numbers in, a Section
out (figures, the flag on class images the model does not recognise, the objectives table, the
price of the budget). No torch here: the compute lives in :mod:`reportgen.methods.feature_viz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table, Text

if TYPE_CHECKING:
    from reportgen.analyses.feature_viz import FeatureVizParams, Objective, Settings

RECOGNISED = 0.5
"""A class image is recognised when the model gives its class at least this probability."""
COLUMNS = 8
FLAG = "#c0392b"


@dataclass(frozen=True)
class Outcome:
    """One objective's optimised image and numbers."""

    objective: Objective
    pixels: np.ndarray
    """C×H×W float32 in [0, 1]."""
    display: np.ndarray
    """H×W×3 uint8."""
    transparency: np.ndarray
    """H×W accumulated |gradient|."""
    history: list[float]
    """The objective at each step (mean over that step's views)."""
    value: float
    """The objective on the whole final image."""
    probability: float | None
    """The model's probability of the class on the whole final image (classes only)."""
    slope: float
    """Spectral slope of the image (log power against log frequency)."""

    @property
    def recognised(self) -> bool | None:
        return None if self.probability is None else self.probability >= RECOGNISED


def how_to_read(parameterisation: str) -> str:
    how = (
        "MACO (Fel et al. 2023) changes only the phases of the image's Fourier spectrum; the "
        "amplitude of every frequency stays that of your own images (measured in the dataset "
        "pass), so the images keep the data's texture statistics and cannot turn into "
        "high-frequency noise"
        if parameterisation == "maco"
        else "Lucid's Fourier parameterisation optimises the whole spectrum (scaled by 1/f, "
        "colours decorrelated with your data's colour covariance); it tends to drift into "
        "high-frequency patterns on deep networks"
    )
    return (
        "Each image was made, not found: starting from random noise, its pixels were changed "
        "step by step (gradient ascent, Simonyan et al. 2014; Olah et al. 2017) to raise one "
        "score — a class's logit, or how much a channel fires (the mean of its positive part "
        "over the layer's map) — seen through "
        f"random crops (or jitter), so that the pattern holds across positions and scales. {how}. "
        "The image shows what the unit or class prefers when the data does not constrain it: "
        "colours, textures, parts and their arrangement that drive it. Set the channel images "
        "beside the dataset patches of the same channel (the next section draws each in its "
        "row): when both show the same thing the unit detects it; when the optimised image "
        "shows only a colour or texture that the patches' objects happen to share, the unit "
        "likely responds to that texture, not to the object. What these images are not: not a "
        "picture of what the model sees in a given image (see saliency), not unique (another "
        "seed gives another image that scores as high), and not proof that the model needs the "
        "pattern — repeated motifs show what raises the score. A class image the model itself "
        f"does not assign to its class (probability below {RECOGNISED:g}) is flagged in red: "
        "its logit rose, but other classes rose more. Few steps (the CPU default) give rough "
        "sketches; the faded copies show where the optimisation gained its score (the "
        "accumulated |gradient|, MACO's transparency map)."
    )


def budget_text(p: FeatureVizParams, s: Settings, count: int, on_a_gpu: str) -> str:
    """The settings and their price, saying which were chosen automatically (``on_a_gpu``: the
    GPU's defaults, said on the CPU)."""
    where = "GPU" if s.on_gpu else "CPU"
    h, w = s.input_size
    auto: list[str] = []
    if p.steps == "auto":
        auto.append("steps")
    if p.crops == "auto":
        auto.append("views")
    automatic = (
        f" ({' and '.join(auto)}: the {where} default"
        + (f" for {h}×{w} inputs" if "steps" in auto and not s.on_gpu else "")
        + (f"; {on_a_gpu} on a GPU" if not s.on_gpu else "")
        + ")"
        if auto
        else ""
    )
    name = "MACO" if p.parameterisation == "maco" else "Fourier (Lucid)"
    ih, iw = s.image_size
    return (
        f"{name}: {s.steps} steps × {s.crops} views per step{automatic}, images of {ih}×{iw} "
        f"px seen at the model's {h}×{w} input, Adam learning rate {s.lr:g} (cosine schedule). "
        f"Price: {count} objective(s) × {s.steps} × {s.crops} = "
        f"{count * s.steps * s.crops:,} forward+backward image passes, and {count} forward "
        "passes for the final values."
    )


# --------------------------------------------------------------------------- figures


def faded(image: np.ndarray, transparency: np.ndarray) -> np.ndarray:
    """The image blended into white where its transparency map is low (its 99th percentile and
    above: fully opaque)."""
    top = float(np.percentile(transparency, 99)) if transparency.size else 0.0
    alpha = np.clip(transparency / top, 0.0, 1.0) if top > 0 else np.zeros_like(transparency)
    out = image.astype(np.float64) * alpha[..., None] + 255.0 * (1.0 - alpha[..., None])
    return (out + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Tile:
    image: np.ndarray
    title: str = ""
    flagged: bool = False


def tile_grid(rows: list[list[Tile]], row_labels: list[str], tile_px: int) -> Picture:
    """Rows of tiles (at most :data:`COLUMNS` each), a label left of each row, a title over
    each tile; flagged tiles framed and titled in red."""
    columns = max(len(r) for r in rows)
    panel = tile_px / 100.0
    titled = sum(1 for r in rows if any(t.title for t in r))
    fig = new_figure(columns * panel + 0.9, len(rows) * panel + titled * 0.32 + 0.1)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, tiles in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            if c >= len(tiles):
                ax.set_axis_off()
                continue
            tile = tiles[c]
            smooth = tile.image.shape[0] > tile_px
            ax.imshow(tile.image, interpolation="antialiased" if smooth else "nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(FLAG if tile.flagged else "#bbbbbb")
                spine.set_linewidth(2.0 if tile.flagged else 0.8)
            if tile.title:
                ax.set_title(tile.title, fontsize=7, color=FLAG if tile.flagged else "black")
        if row_labels[r]:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    return Picture(figure_to_picture(fig, dpi=100).pixels, kind="photo")


def _blocks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + COLUMNS] for i in range(0, len(items), COLUMNS)]


def class_figure(outcomes: list[Outcome], tile_px: int, transparency: bool) -> Figure:
    rows: list[list[Tile]] = []
    labels: list[str] = []
    for block in _blocks(outcomes):
        rows.append(
            [
                Tile(
                    o.display,
                    f"{o.objective.label}\nlogit {o.value:.3g} · p {o.probability or 0:.2f}"
                    + ("" if o.recognised else "\nNOT recognised"),
                    not o.recognised,
                )
                for o in block
            ]
        )
        labels.append("image")
        if transparency:
            rows.append(
                [Tile(faded(o.display, o.transparency), "", not o.recognised) for o in block]
            )
            labels.append("where it gained")
    return Figure(
        tile_grid(rows, labels, tile_px),
        caption=(
            "Class images: each optimised to raise one class's logit; above it the logit and the "
            "model's probability of that class on the whole image (red: below "
            f"{RECOGNISED:g}, the model does not call it that class)."
            + (
                " Under each: the same image faded where the accumulated |gradient| of the "
                "objective was low — opaque regions are where the score was gained."
                if transparency
                else ""
            )
        ),
        alt="Images optimised for each class, with the class names and probabilities",
        wide=True,
    )


def channel_figure(outcomes: list[Outcome], tile_px: int) -> Figure:
    """One figure for every layer's channel images: a row (or more) per layer."""
    layers = list(dict.fromkeys(o.objective.layer for o in outcomes))
    rows: list[list[Tile]] = []
    labels: list[str] = []
    for layer in layers:
        mine = [o for o in outcomes if o.objective.layer == layer]
        for i, block in enumerate(_blocks(mine)):
            rows.append(
                [Tile(o.display, f"{o.objective.label}\nmean {o.value:.3g}") for o in block]
            )
            labels.append(layer if i == 0 else "")
    return Figure(
        tile_grid(rows, labels, tile_px),
        caption=(
            "Channel images of " + ", ".join(layers) + ": each optimised for how much one channel "
            "fires (the mean of its positive part over the layer's map), with that mean on the "
            "whole image. The maximally activating patches section shows the same channels, "
            "each image first in its channel's row."
        ),
        alt="Images optimised for channels of " + ", ".join(layers),
        wide=True,
    )


# --------------------------------------------------------------------------- the section


def present_section(
    out: Section,
    outcomes: list[Outcome],
    notes: list[str],
    p: FeatureVizParams,
    s: Settings,
    data_slope: float,
    on_a_gpu: str,
) -> Section:
    out.add(Text(budget_text(p, s, len(outcomes), on_a_gpu), kind="note"))
    classes = [o for o in outcomes if o.objective.kind == "class"]
    if classes:
        out.add(class_figure(classes, p.tile_size, p.transparency))
        missed = [o for o in classes if not o.recognised]
        if missed:
            out.add(
                Text(
                    f"{len(missed)} of {len(classes)} class images are not assigned to their "
                    f"class by the model (probability below {RECOGNISED:g}): "
                    + ", ".join(f"{o.objective.label} (p {o.probability:.2f})" for o in missed[:8])
                    + ". Raising their logit raised other classes more: the model has no "
                    "pattern for them that it tells apart from the others (a model with random "
                    "or weak weights recognises few of its class images, if any).",
                    kind="warning",
                )
            )
    channels = [o for o in outcomes if o.objective.kind == "channel"]
    if channels:
        out.add(channel_figure(channels, p.tile_size))
    for note in notes:
        out.add(Text(note, kind="note"))
    out.add(objectives_table(outcomes, data_slope))
    return out


def objectives_table(outcomes: list[Outcome], data_slope: float) -> Table:
    steps = len(outcomes[0].history) if outcomes else 0
    rows: list[list[Any]] = [
        [
            o.objective.label,
            o.objective.layer,
            o.history[0] if o.history else None,
            o.history[-1] if o.history else None,
            o.value,
            o.probability,
            "—" if o.recognised is None else ("yes" if o.recognised else "NO"),
            o.slope,
        ]
        for o in outcomes
    ]
    return Table(
        caption=(
            "Every objective: its value at the first and the last step (the mean over that "
            "step's views), on the whole final image, and for classes the model's probability. "
            "Spectral slope: log power against log frequency of the image; your images' mean "
            f"spectrum has {data_slope:.2f} (natural photographs about −2; flatter = more "
            "high-frequency noise)."
        ),
        columns=[
            "objective",
            "layer",
            "step 1",
            f"step {steps}",
            "final value",
            "p (class)",
            "recognised",
            "spectral slope",
        ],
        rows=rows,
    )


def outcome_arrays(outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    """For arrays.npz: the images (N×C×H×W in [0, 1]), transparency maps, final values, the
    value at every step (N×steps) and the objectives' names."""
    return {
        "feature_viz_objectives": np.array([o.objective.key for o in outcomes], dtype=np.str_),
        "feature_viz_images": np.stack([o.pixels for o in outcomes]).astype(np.float32),
        "feature_viz_transparency": np.stack([o.transparency for o in outcomes]).astype(np.float32),
        "feature_viz_values": np.array([o.value for o in outcomes], dtype=np.float64),
        "feature_viz_history": np.array([o.history for o in outcomes], dtype=np.float64),
    }


def outcome_record(
    outcomes: list[Outcome], p: FeatureVizParams, s: Settings, data_slope: float
) -> dict[str, Any]:
    """summary.json's ``feature_viz``."""
    objectives: list[dict[str, Any]] = []
    for o in outcomes:
        entry: dict[str, Any] = {"kind": o.objective.kind, "layer": o.objective.layer}
        if o.objective.kind == "class":
            entry |= {"class": o.objective.index, "class_name": o.objective.label}
        else:
            entry["channel"] = o.objective.index
        entry |= {
            "value": o.value,
            "probability": o.probability,
            "recognised": o.recognised,
            "initial_value": o.history[0] if o.history else None,
            "spectral_slope": o.slope,
        }
        objectives.append(entry)
    return {
        "parameterisation": p.parameterisation,
        "steps": s.steps,
        "crops": s.crops,
        "lr": s.lr,
        "image_size": list(s.image_size),
        "input_size": list(s.input_size),
        "data_spectral_slope": data_slope,
        "objectives": objectives,
    }
