"""Presentation of the attribution checks: a :class:`~reportgen.methods.trust.ChecksResult` in, a Section out.

The verdict table comes first (one row per method, ranked by faithfulness, with the random-map
control beside them); then the lecture-style randomisation grid for one or two queries, the
similarity-vs-stage curves and the deletion/insertion curves. No torch here: the compute lives in
:mod:`reportgen.sanity`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen.methods.names import LABELS, METHODS, RANDOM
from reportgen.report.figures import class_colors, figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table, Text

if TYPE_CHECKING:
    from reportgen.methods.trust.checks import ChecksResult

NAME = "attribution_checks"
TITLE = "Can these maps be trusted? Randomisation and faithfulness checks"


def how_to_read(result: ChecksResult, fill_text: str) -> str:
    """The "how to read this" text, stating the threshold and baselines this run used."""
    imputation = (
        "imputed from the neighbouring pixels (ROAD's noisy linear imputation)"
        if result.imputation == "road"
        else f"replaced by {fill_text}"
    )
    return (
        "Two questions about each attribution map. Randomisation (Adebayo et al. 2018): the "
        "model's weights are re-initialised stage by stage from the output layer down to the "
        "input, and every map is recomputed. A map that explains the model must change when what "
        "the model learnt is destroyed; 'passes randomisation' means the mean Spearman rank "
        "correlation of the absolute maps with the original is below "
        f"{result.threshold:g} once the whole network is random (ρ after full randomisation in "
        "the table). A map that stays similar is driven by the image (edges, bright regions), "
        "not by the model: guided backprop is the classic case; watch also for curves that stay "
        "high until only the first layers are left. Faithfulness (Petsiuk et al. 2018): pixels "
        f"are removed most-important-first in {result.steps} equal steps and {imputation} "
        "(deletion: the explained class's probability should fall fast, lower area under the "
        "curve is better), or put back most-important-first into a copy of the image blurred "
        f"with σ = {result.insertion_blur_sigma:g} px (insertion: higher area is better). A "
        f"seeded random map (uniform noise) is the control: 'better than random' compares the "
        "mean areas with its areas. What this does not prove: passing randomisation only shows "
        "the map depends on the weights, not that it is right; deletion with a constant fill "
        "makes images the model never saw, which can reward maps for the shape of the hole; the "
        "areas are means over few images and depend on the fill, the blur and the step count; a "
        "probability near 1 throughout can hide differences that logits would show."
    )


# --------------------------------------------------------------------------- tables


def faithfulness_score(result: ChecksResult, name: str) -> float:
    """Insertion AUC minus deletion AUC (mean over images): the table's ranking, higher first."""
    d, i = result.mean_auc(name, "deletion"), result.mean_auc(name, "insertion")
    return -math.inf if d is None or i is None else i - d


def _better_text(flags: tuple[bool, bool] | None) -> str:
    if flags is None:
        return "n/a"
    return {
        (True, True): "yes",
        (True, False): "deletion only",
        (False, True): "insertion only",
        (False, False): "no",
    }[flags]


def verdict_table(result: ChecksResult) -> Table:
    """Method × (passes randomisation?, ρ after full randomisation, AUCs, better than random?)."""
    rows: list[list[Any]] = []
    for m in sorted(result.methods, key=lambda n: -faithfulness_score(result, n)):
        passes = result.passes_randomization(m)
        final = result.mean_spearman(m)
        rho = float(final[-1]) if final.size and not math.isnan(final[-1]) else None
        rows.append(
            [
                LABELS.get(m, m),
                "n/a" if passes is None else ("yes" if passes else "no — survives randomisation"),
                rho,
                result.mean_auc(m, "deletion"),
                result.mean_auc(m, "insertion"),
                _better_text(result.better_than_random(m)),
            ]
        )
    rows.append(
        [
            LABELS[RANDOM],
            "—",
            None,
            result.mean_auc(RANDOM, "deletion"),
            result.mean_auc(RANDOM, "insertion"),
            "—",
        ]
    )
    stage_text = f"{len(result.stages)} stages" if result.stages else "no stages"
    return Table(
        caption=(
            "Verdict per attribution method, ranked by faithfulness (insertion minus deletion "
            f"area). Randomisation: {result.randomization_images} image(s), {stage_text} "
            f"re-initialised from the logits down; passes when ρ < {result.threshold:g}. "
            f"Deletion/insertion: mean area under the probability curve over {result.images} "
            "image(s); the random map is the control."
        ),
        columns=[
            "method",
            "passes randomisation?",
            "ρ after full randomisation",
            "deletion AUC ↓",
            "insertion AUC ↑",
            "better than random?",
        ],
        rows=rows,
    )


def similarity_table(result: ChecksResult) -> Table:
    """Mean Spearman (and SSIM) per method after each cascade stage."""
    columns = ["method", *(f"→ {s.name}" for s in result.stages)]
    rows: list[list[Any]] = []
    for m in result.methods:
        rho = result.mean_spearman(m)
        sim = result.mean_ssim(m)
        rows.append(
            [
                LABELS.get(m, m),
                *(
                    f"ρ {_fmt(float(r))} · SSIM {_fmt(float(s))}"
                    for r, s in zip(rho, sim, strict=True)
                ),
            ]
        )
    total = sum(st.parameters for st in result.stages)
    stages = "; ".join(
        f"{st.name}: {len(st.modules)} module(s), {_share(st.parameters, total)} of the parameters"
        for st in result.stages
    )
    return Table(
        caption=(
            "Similarity with the original map after each cascade stage (mean over the "
            f"randomisation images). Stages, in the order re-initialised: {stages}. After the "
            "last stage every module with parameters has been re-initialised."
        ),
        columns=columns,
        rows=rows,
    )


def _share(part: int, total: int) -> str:
    """A stage's share of the parameters; a small but non-empty one never reads as 0.0 %
    (ResNet-50's stem is 0.04 %)."""
    if total <= 0:
        return "n/a"
    pct = 100.0 * part / total
    if 0 < pct < 0.1:
        return "< 0.1 %"
    return f"{pct:.1f} %"


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}"


# --------------------------------------------------------------------------- figures


def _colours(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per method, fixed by its place in :data:`METHODS` (same in every figure)."""
    palette = class_colors(len(METHODS))
    return {
        n: palette[METHODS.index(n) % len(palette)] if n in METHODS else palette[0] for n in names
    }


def _wrap(text: str, width: int = 14) -> str:
    """Wrap a stage name for a tick label or a column title: lines break after '.', '+', '…'."""
    tokens = re.findall(r"[^.+…]+[.+…]?|[.+…]", text)
    lines: list[str] = []
    for tok in tokens:
        if lines and (len(lines[-1]) + len(tok) <= width or len(tok) <= 3):
            lines[-1] += tok
        else:
            lines.append(tok)
    return "\n".join(lines) or text


def randomization_grid(
    result: ChecksResult, index: int, image: np.ndarray, title: str, panel_px: int
) -> Picture:
    """Rows: methods; columns: the input, the original map, then after each cascade stage.

    Every panel shows |map| scaled to its own maximum (as Adebayo et al. draw them): the figure
    shows where each map looks, not how strong it is.
    """
    methods = result.methods
    stages = result.stages
    cols = len(stages) + 2
    panel = max(0.55, min(panel_px / 100.0, 8.0 / cols))
    fig = new_figure(cols * panel + 1.3, len(methods) * panel + 0.9)
    axes = fig.subplots(len(methods), cols, squeeze=False)
    for r, m in enumerate(methods):
        maps = result.grid_maps[m][index]
        axes[r, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        final = result.mean_spearman(m)
        rho = f"\nρ end {final[-1]:.2f}" if final.size and not math.isnan(final[-1]) else ""
        axes[r, 0].set_ylabel(
            _wrap(LABELS.get(m, m).replace(" ", "\n"), 12) + rho,
            fontsize=7,
            rotation=0,
            ha="right",
            va="center",
        )
        for c in range(maps.shape[0]):
            a = np.abs(maps[c])
            top = float(a.max())
            axes[r, c + 1].imshow(a / top if top > 0 else a, cmap="inferno", vmin=0.0, vmax=1.0)
    axes[0, 0].set_title("input", fontsize=7)
    axes[0, 1].set_title("original", fontsize=7)
    for k, s in enumerate(stages):
        axes[0, k + 2].set_title(_wrap(f"→\u00a0{s.name}", 12), fontsize=6.5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}: logits (left) to input (right) re-initialised", fontsize=8)
    return figure_to_picture(fig, dpi=100)


def similarity_curves(result: ChecksResult) -> Picture:
    """Mean Spearman and SSIM with the original map against the cascade stage, one line per method.

    x = 0 is the original model (similarity 1 by definition). A second row shows the independent
    variant when it was computed.
    """
    methods = result.methods
    colours = _colours(methods)
    rows = 2 if result.independent_spearman is not None else 1
    fig = new_figure(8.0, 3.0 * rows + 0.6)
    axes = fig.subplots(rows, 2, squeeze=False)
    labels = ["original", *(s.name for s in result.stages)]
    x = np.arange(len(labels))
    for col, (what, getter) in enumerate(
        (("Spearman ρ of |map|", result.mean_spearman), ("SSIM of |map|", result.mean_ssim))
    ):
        ax = axes[0, col]
        for m in methods:
            ax.plot(
                x,
                np.r_[1.0, getter(m)],
                marker="o",
                markersize=3,
                color=colours[m],
                label=LABELS.get(m, m),
            )
        ax.set_title(f"{what}: cascading randomisation", fontsize=9)
        ax.set_xticks(x, [_wrap(s, 14) for s in labels], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(_lower_limit(result, getter, False), 1.05)
        ax.axhline(0.0, color="0.8", linewidth=0.8)
        ax.grid(True, axis="y", color="0.9")
        if col == 0:
            ax.axhline(result.threshold, color="0.3", linestyle="--", linewidth=1.0)
            ax.text(
                x[-1],
                result.threshold + 0.02,
                f"threshold {result.threshold:g}",
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.3",
            )
        if rows == 2:
            ax2 = axes[1, col]
            xi = np.arange(len(result.stages))
            for m in methods:
                ax2.plot(
                    xi,
                    getter(m, True),
                    marker="s",
                    markersize=3,
                    color=colours[m],
                    linestyle=":",
                )
            ax2.set_title(f"{what}: each stage re-initialised alone", fontsize=9)
            ax2.set_xticks(
                xi, [_wrap(s.name, 14) for s in result.stages], rotation=45, ha="right", fontsize=7
            )
            ax2.set_ylim(_lower_limit(result, getter, True), 1.05)
            ax2.axhline(0.0, color="0.8", linewidth=0.8)
            ax2.grid(True, axis="y", color="0.9")
            if col == 0:
                ax2.axhline(result.threshold, color="0.3", linestyle="--", linewidth=1.0)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(6, len(names)), fontsize=7)
    return figure_to_picture(fig, dpi=100)


def _lower_limit(result: ChecksResult, getter: Any, independent: bool) -> float:
    """-0.3, or lower when a curve goes below it (anti-correlated maps), down to -1.05."""
    values = [v for m in result.methods for v in getter(m, independent) if not math.isnan(v)]
    return max(-1.05, min([-0.3, *(v - 0.05 for v in values)]))


def faithfulness_curves(result: ChecksResult) -> Picture:
    """Deletion and insertion curves (mean over images), the random control dashed in black."""
    names = [*result.methods, RANDOM]
    colours = _colours(result.methods)
    fig = new_figure(8.0, 3.4)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, kind, curves in (
        (axes[0], "deletion", result.deletion),
        (axes[1], "insertion", result.insertion),
    ):
        for n in names:
            mean = curves[n].mean(axis=0)
            auc = result.mean_auc(n, kind)  # type: ignore[arg-type]
            label = f"{LABELS.get(n, n)} ({auc:.2f})"
            if n == RANDOM:
                ax.plot(
                    result.fractions,
                    mean,
                    color="black",
                    linestyle="--",
                    linewidth=1.6,
                    label=label,
                )
            else:
                ax.plot(result.fractions, mean, color=colours[n], linewidth=1.2, label=label)
        verb = "removed" if kind == "deletion" else "inserted"
        better = "lower" if kind == "deletion" else "higher"
        ax.set_title(f"{kind} (area: {better} is better)", fontsize=9)
        ax.set_xlabel(f"fraction of pixels {verb}, most important first", fontsize=8)
        ax.set_ylabel("p (explained class), mean", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, color="0.9")
        ax.legend(fontsize=6.5, loc="upper right" if kind == "deletion" else "lower right")
    return figure_to_picture(fig, dpi=100)


# --------------------------------------------------------------------------- section


def attribution_checks_section(
    result: ChecksResult,
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    fill_text: str = "the dataset's mean pixel",
    panel_px: int = 64,
) -> Section:
    """The report section: verdict table first, then grid(s), similarity and faithfulness curves.

    ``images``/``titles``: display images (H×W×3 or H×W uint8) and captions of the checked
    queries, in the order of ``result``; the first ``grid_maps`` images are drawn in the grid.
    ``fill_text``: how deletion's fill is described ("the dataset's mean pixel", "gray 0.5").
    """
    section = Section(name=NAME, title=TITLE, how_to_read=how_to_read(result, fill_text))
    if not result.methods:
        reasons = "; ".join(f"{LABELS.get(m, m)}: {r}" for m, r in result.unavailable.items())
        section.add(Text(f"No attribution method could run on this model ({reasons}).", "warning"))
        return section
    section.add(verdict_table(result))
    for m, reason in result.unavailable.items():
        section.add(Text(f"{LABELS.get(m, m)} is not checked: {reason}", kind="note"))
    failing = [m for m in result.methods if result.passes_randomization(m) is False]
    if failing:
        section.add(
            Text(
                "Maps that survive randomisation (ρ ≥ "
                f"{result.threshold:g} after the whole network is re-initialised): "
                + ", ".join(LABELS.get(m, m) for m in failing)
                + ". They show the image more than the model; do not read them as the model's "
                "evidence.",
                kind="warning",
            )
        )
    for note in result.notes:
        section.add(Text(note, kind="note"))
    grid_count = next(iter(result.grid_maps.values())).shape[0] if result.grid_maps else 0
    for i in range(min(grid_count, len(images))):
        section.add(
            Figure(
                randomization_grid(result, i, images[i], titles[i], panel_px),
                caption=(
                    f"Randomisation grid for {titles[i]}: rows are methods; columns the input, "
                    "the original map, then the map after re-initialising every stage down to "
                    "the one named (cumulative, logits first). Each panel is |map| scaled to its "
                    "own maximum. ρ end: mean Spearman after full randomisation."
                ),
                alt=f"Attribution maps of {titles[i]} as the model is progressively randomised",
                wide=True,
            )
        )
    if result.stages:
        section.add(
            Figure(
                similarity_curves(result),
                caption=(
                    "Similarity of each method's map with the original as the network is "
                    f"re-initialised (mean over {result.randomization_images} image(s)); dashed "
                    f"line: the {result.threshold:g} threshold. A method that explains the model "
                    "drops towards 0."
                ),
                alt="Spearman and SSIM against randomisation stage, one line per method",
                wide=True,
            )
        )
        section.add(similarity_table(result))
    section.add(
        Figure(
            faithfulness_curves(result),
            caption=(
                f"Deletion (left) and insertion (right) curves, mean over {result.images} "
                f"image(s), {result.steps} steps; areas in brackets. Dashed black: the random "
                "map. A faithful map sits below it on the left and above it on the right."
            ),
            alt="Deletion and insertion probability curves per method with the random control",
            wide=True,
        )
    )
    return section
