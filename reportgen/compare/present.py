"""The "Changes against the baseline" chapter and the PR-sized Markdown of a comparison.

:func:`compare_section` turns a :class:`~reportgen.compare.metrics.CompareResult` into a
:class:`~reportgen.report.section.Section` (plain data: tables, figures, thumbnails); thumbnails come
from an optional callable so that a run can hand over its decoded images and ``reportgen
compare`` can read them from the data folder (:func:`folder_thumbnails`).
:func:`compare_markdown` writes the deltas and gate results for summary.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from reportgen.compare.formats import _count_rate, _p_value, _pct, _pp, _signed
from reportgen.compare.metrics import CompareResult
from reportgen.compare.slices_present import slice_blocks
from reportgen.compare.tasks_present import label_blocks, set_flip_text, task_rows
from reportgen.report.figures import (
    figure_to_picture,
    mosaic,
    new_figure,
    normalise01,
    to_uint8,
    upscale,
)
from reportgen.report.section import (
    Cell,
    Figure,
    Picture,
    Section,
    Table,
    Text,
    Thumb,
    format_number,
)

SECTION_NAME = "compare"
TITLE = "Changes against the baseline"

Thumbnails = Callable[[Sequence[str]], Sequence[np.ndarray | None]]
"""Paths (as in predictions.csv) -> an H×W×3 uint8 image each, or None where unavailable."""

PART_TITLES = {
    "accuracy": "accuracy and flips against labels",
    "calibration": "calibration (ECE)",
    "per_class": "per-class recall and precision",
    "features": "representation (linear CKA, k-NN overlap)",
    "linear_cka": "linear CKA",
    "knn_overlap": "k-NN neighbourhood overlap",
    "explanations": "explanation maps",
    "filters": "first-layer filters",
}


def how_to_read(result: CompareResult) -> str:
    """What each number of the chapter means (and what flips mean for unlabelled data)."""
    n = result.matched_images
    common = (
        f"Both models are evaluated on the same {n} images. "
        "Linear CKA (0 to 1) compares the two penultimate feature spaces as a whole: 1 means the "
        "same geometry up to rotation and scale (it works across different widths and "
        "architectures), low values a re-organised representation. k-NN overlap is the mean, "
        "over images, of the Jaccard overlap of each image's k nearest other images in the two "
        "feature spaces (1 = the same neighbours); the images whose neighbourhoods changed most "
        "are shown. Explanation rank correlation is the Spearman correlation between the two "
        "models' maps of the same query image (1 = the same ranking of pixels). Filter cosine is "
        "the cosine similarity of each first-layer filter's weights (1 = unchanged direction)."
    )
    if result.flip_meaning == "prediction_changed":
        return (
            "The images are unlabelled, so nothing here says which model is right. A 'negative "
            "flip' counts every image whose prediction changed (a change is treated as a "
            "possible regression, so a gate on the negative flip rate stays meaningful); the rate "
            "is over all matched images, and positive flips, accuracy, McNemar's test and "
            "calibration are not defined. The gallery shows the changed predictions, most "
            "confident new prediction first. " + common
        )
    return (
        "Accuracy is top-1 on the labelled images, baseline → new; the change comes with a 95 % "
        f"interval from a paired bootstrap ({result.bootstrap_samples} resamples of the images, "
        "seeded): an interval that excludes 0 means the change is unlikely to be sampling noise. "
        "McNemar's exact test looks only at the images where exactly one model is right: p is "
        "the probability of a split at least this lopsided if both models were equally accurate "
        "(p < 0.05 is the usual bar for a real difference). A negative flip is an image the "
        "baseline got right and the new model gets wrong — a regression users notice even when "
        "accuracy rises — and a positive flip the reverse; their rates are over the labelled "
        "images. ECE is the expected calibration error (the gap between confidence and accuracy "
        f"in {result.bins} equal-width confidence bins, as in the audit section); a negative "
        "change means better calibrated. The per-class table is sorted by the largest change of "
        "recall or precision; the confusion difference counts, per true class (row) and "
        "predicted class (column), images of the new model minus the baseline's. The galleries "
        "show the negative flips (most confident wrong new prediction first) and the positive "
        "flips (most confident wrong baseline prediction first). " + common
    )


# --------------------------------------------------------------------------- formatting


def _left(result: CompareResult, *parts: str) -> str:
    for part in parts:
        if part in result.left_out:
            return f"left out: {result.left_out[part]}"
    return "n/a"


def headline_rows(result: CompareResult) -> list[list[Cell]]:
    """The headline table's rows (text): measure, baseline, new, change."""
    r = result
    rows: list[list[Cell]] = []
    ci = r.accuracy_delta_ci95
    if r.flip_meaning == "label":
        what = "exact match of the label sets" if r.task == "multilabel" else "accuracy"
        rows.append(
            [
                f"{what} ({r.labelled_images} labelled images)",
                _pct(r.accuracy_old),
                _pct(r.accuracy_new),
                _pp(r.accuracy_delta)
                + ("" if ci is None else f" (95 % CI {100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})"),
            ]
        )
        rows.append(["McNemar exact test, p", "", "", _p_value(r.mcnemar_p)])
        rows.append(
            [
                "negative flips (right → wrong)",
                "",
                "",
                _count_rate(r.negative_flips, r.negative_flip_rate),
            ]
        )
        rows.append(
            [
                "positive flips (wrong → right)",
                "",
                "",
                _count_rate(r.positive_flips, r.positive_flip_rate),
            ]
        )
        rows.append(
            [
                "calibration (ECE)",
                format_number(r.ece_old),
                format_number(r.ece_new),
                _signed(r.ece_delta),
            ]
        )
        rows += task_rows(r)
    else:
        rows.append(
            [
                "predictions changed (unlabelled: counted as negative flips)",
                "",
                "",
                _count_rate(r.negative_flips, r.negative_flip_rate),
            ]
        )
    rows.append(["images compared (matched)", "", "", str(r.matched_images)])
    rows.append(
        [
            "linear CKA of the penultimate features",
            "",
            "",
            format_number(r.linear_cka)
            if r.linear_cka is not None
            else _left(r, "linear_cka", "features"),
        ]
    )
    rows.append(
        [
            f"k-NN neighbourhood overlap (k = {r.knn_k})"
            if r.knn_k
            else "k-NN neighbourhood overlap",
            "",
            "",
            format_number(r.knn_overlap)
            if r.knn_overlap is not None
            else _left(r, "knn_overlap", "features"),
        ]
    )
    rank = r.explanation_rank_corr
    if rank is not None and r.explanations is not None:
        by = ", ".join(
            f"{m} {format_number(v)}" for m, v in r.explanations.mean_by_method().items()
        )
        rank_text = f"{format_number(rank)} ({by})"
    else:
        rank_text = _left(r, "explanations")
    rows.append(["explanation rank correlation (mean over queries)", "", "", rank_text])
    cos = r.filter_cosine_mean
    rows.append(
        [
            "first-layer filter cosine (mean)",
            "",
            "",
            format_number(cos) if cos is not None else _left(r, "filters"),
        ]
    )
    return rows


# --------------------------------------------------------------------------- figures


def confusion_difference_figure(
    old: np.ndarray, new: np.ndarray, names: Sequence[str], max_classes: int = 30
) -> tuple[Picture, int, int]:
    """Diverging heat-map of new − old confusion counts over the classes that occur.

    With more than ``max_classes`` classes, those with the largest total change are kept.
    Returns (picture, classes shown, classes present).
    """
    diff = new.astype(np.int64) - old.astype(np.int64)
    present = np.flatnonzero((old.sum(0) + old.sum(1) + new.sum(0) + new.sum(1)) > 0)
    shown = present
    if len(present) > max_classes:
        change = np.abs(diff).sum(0) + np.abs(diff).sum(1)
        order = np.argsort(-change[present], kind="stable")[:max_classes]
        shown = np.sort(present[order])
    d = diff[np.ix_(shown, shown)]
    n = len(shown)
    size = float(np.clip(0.32 * n + 2.2, 3.5, 9.0))
    fig = new_figure(size + 0.9, size)
    ax = fig.subplots()
    vmax = max(1, int(np.abs(d).max()))
    im = ax.imshow(d, cmap="PuOr_r", vmin=-vmax, vmax=vmax)
    labels = [names[i][:14] if i < len(names) else str(i) for i in shown.tolist()]
    ax.set_xticks(range(n), labels=labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if d[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{d[i, j]:+d}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if abs(d[i, j]) > 0.6 * vmax else "#1d232b",
                    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="images: new − baseline")
    ax.set_title("Confusion difference (new − baseline)")
    return figure_to_picture(fig), n, len(present)


def explanation_figure(
    result: CompareResult, images: Sequence[np.ndarray | None], max_queries: int = 8
) -> Picture:
    """Rows: query images; columns: the image (when given), then per method baseline | new."""
    assert result.explanations is not None
    ex = result.explanations
    methods = list(ex.rank_corr)
    q = min(len(ex.maps.positions), max_queries)
    with_images = any(im is not None for im in images[:q])
    cols = 2 * len(methods) + (1 if with_images else 0)
    fig = new_figure(1.45 * cols + 0.3, 1.55 * q + 0.4)
    axes = np.atleast_2d(fig.subplots(q, cols, squeeze=False))
    for row in range(q):
        c = 0
        pos = ex.maps.positions[row]
        if with_images:
            ax = axes[row, 0]
            img = images[row]
            if img is not None:
                ax.imshow(img)
            ax.set_title(_short(result.new.paths[pos]), fontsize=7)
            c = 1
        for m in methods:
            rho = ex.rank_corr[m][row]
            for which, maps in (("baseline", ex.maps.old[m]), ("new", ex.maps.new[m])):
                ax = axes[row, c]
                ax.imshow(normalise01(np.asarray(maps[row])), cmap="inferno", vmin=0, vmax=1)
                title = f"{m} · {which}"
                if which == "new":
                    title += f"\nρ = {format_number(float(rho)) if np.isfinite(rho) else 'n/a'}"
                ax.set_title(title, fontsize=7)
                c += 1
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return figure_to_picture(fig)


def _short(path: str, limit: int = 22) -> str:
    name = path.rsplit("/", 1)[-1]
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _filter_tile(w: np.ndarray, factor: int) -> np.ndarray:
    """C×kh×kw -> kh×kw×3 (RGB for 3 channels, else the channel mean in gray), min-max scaled."""
    tile = w.transpose(1, 2, 0) if w.shape[0] == 3 else np.repeat(w.mean(0)[..., None], 3, 2)
    return to_uint8(upscale(normalise01(tile), factor))


def filters_figure(result: CompareResult, max_filters: int = 48) -> Picture:
    """Each filter as a baseline | new pair with its cosine similarity, in filter order."""
    assert result.filters is not None
    f = result.filters
    shown = min(len(f.cosine), max_filters)
    kh, kw = f.old.shape[2:]
    factor = max(1, round(28 / max(kh, kw)))
    columns = 8
    rows = (shown + columns - 1) // columns
    fig = new_figure(1.25 * columns, 0.95 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= shown:
            ax.set_axis_off()
            continue
        pair = mosaic([_filter_tile(f.old[i], factor), _filter_tile(f.new[i], factor)], 2, pad=2)
        ax.imshow(pair)
        cos = f.cosine[i]
        ax.set_title(
            f"#{i}: {format_number(float(cos)) if np.isfinite(cos) else 'n/a'}",
            fontsize=7,
            color="#b02a2a" if np.isfinite(cos) and cos < 0.5 else "#1d232b",
        )
    return figure_to_picture(fig)


# --------------------------------------------------------------------------- galleries


def _gallery(
    caption: str,
    positions: Sequence[int],
    texts: Sequence[str],
    paths: Sequence[str],
    images: Mapping[int, np.ndarray | None],
) -> Table:
    """Thumbnails in one row when every image is available, else one text row per image."""
    pixels = [images.get(p) for p in positions]
    if positions and all(px is not None for px in pixels):
        row: list[Cell] = [
            Thumb(Picture(px, kind="photo"), label=t, alt=paths[p])
            for p, t, px in zip(positions, texts, pixels, strict=True)
            if px is not None
        ]
        return Table(caption, [f"#{i + 1}" for i in range(len(row))], [row])
    return Table(
        caption,
        ["image", "what changed"],
        [[paths[p], t] for p, t in zip(positions, texts, strict=True)],
    )


def _flip_text(result: CompareResult, p: int) -> str:
    if result.task == "multilabel":
        return set_flip_text(result, p)
    old, new = result.old, result.new
    names = result.class_names

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    text = (
        f"baseline {name(int(old.predictions[p]))} ({old.confidence[p]:.2f}) → "
        f"new {name(int(new.predictions[p]))} ({new.confidence[p]:.2f})"
    )
    label = int(result.labels[p])
    return (f"label {name(label)}; " if label >= 0 else "") + text


def compare_section(
    result: CompareResult,
    *,
    thumbnails: Thumbnails | None = None,
    show: int = 8,
    max_classes: int = 30,
) -> Section:
    """The "Changes against the baseline" chapter for a comparison.

    ``thumbnails``: gives the images for the galleries (otherwise they are listed by path);
    ``show``: images per gallery; ``max_classes``: rows of the per-class table and classes of
    the confusion difference.
    """
    r = result
    section = Section(SECTION_NAME, TITLE, how_to_read=how_to_read(r))
    for note in r.notes:
        section.add(Text(note, kind="warning"))
    section.add(
        Table(
            caption=f"Headline: baseline → new on {r.matched_images} matched images",
            columns=["measure", "baseline", "new", "change"],
            rows=headline_rows(r),
        )
    )

    # Which images every gallery needs, fetched in one call.
    neg = [int(p) for p in r.negative_flip_positions[:show]]
    pos = [int(p) for p in r.positive_flip_positions[:show]]
    moved: list[int] = []
    if r.knn_overlap_per_image is not None:
        moved = [int(p) for p in np.argsort(r.knn_overlap_per_image, kind="stable")[:show]]
    queries = r.explanations.maps.positions[:8] if r.explanations is not None else []
    wanted = sorted(set(neg) | set(pos) | set(moved) | set(queries))
    images: dict[int, np.ndarray | None] = {}
    if thumbnails is not None and wanted:
        got = thumbnails([r.new.paths[p] for p in wanted])
        images = dict(zip(wanted, got, strict=True))

    section.add(*slice_blocks(r))
    section.add(*label_blocks(r))
    if r.per_class:
        rows_pc = r.per_class[:max_classes]
        labels = r.task == "multilabel"
        section.add(
            Table(
                caption=(
                    (
                        "Per label, sorted by the largest change of sensitivity (recall of the "
                        "label) or precision"
                        if labels
                        else "Per class, sorted by the largest change of recall or precision"
                    )
                    + (
                        f" (the {len(rows_pc)} most changed of {len(r.per_class)} classes)"
                        if len(r.per_class) > len(rows_pc)
                        else ""
                    )
                ),
                columns=[
                    "label" if labels else "class",
                    "images",
                    "recall baseline",
                    "recall new",
                    "Δ recall",
                    "precision baseline",
                    "precision new",
                    "Δ precision",
                ],
                rows=[
                    [
                        c.name,
                        c.images,
                        c.recall_old,
                        c.recall_new,
                        _signed(c.recall_delta),
                        c.precision_old,
                        c.precision_new,
                        _signed(c.precision_delta),
                    ]
                    for c in rows_pc
                ],
            )
        )
    if r.confusion_old is not None and r.confusion_new is not None:
        pic, n_shown, n_present = confusion_difference_figure(
            r.confusion_old, r.confusion_new, r.class_names, max_classes
        )
        section.add(
            Figure(
                pic,
                caption=(
                    "Confusion difference: per true class (row) and predicted class (column), "
                    "images of the new model minus the baseline's. On the diagonal orange means "
                    "more right answers; off the diagonal orange means a confusion grew."
                    + (
                        f" The {n_shown} of {n_present} classes with the largest changes."
                        if n_shown < n_present
                        else ""
                    )
                ),
                alt="Confusion-matrix difference heat-map",
            )
        )

    paths = r.new.paths
    if r.flip_meaning == "label":
        for title, chosen, total in (
            (
                "Negative flips: right before, wrong now (most confident new prediction first)",
                neg,
                r.negative_flips,
            ),
            (
                "Positive flips: wrong before, right now (most confident old prediction first)",
                pos,
                r.positive_flips or 0,
            ),
        ):
            if chosen:
                section.add(
                    _gallery(
                        f"{title}; {len(chosen)} of {total}",
                        chosen,
                        [_flip_text(r, p) for p in chosen],
                        paths,
                        images,
                    )
                )
            else:
                section.add(Text(f"{title.split(':')[0]}: none.", kind="note"))
    elif neg:
        section.add(
            _gallery(
                f"Changed predictions (unlabelled), most confident new prediction first; "
                f"{len(neg)} of {r.negative_flips}",
                neg,
                [_flip_text(r, p) for p in neg],
                paths,
                images,
            )
        )
    else:
        section.add(Text("No prediction changed.", kind="note"))

    if moved and r.knn_overlap_per_image is not None:
        ov = r.knn_overlap_per_image
        section.add(
            _gallery(
                f"Neighbourhoods that changed most: lowest k-NN overlap (k = {r.knn_k}) first",
                moved,
                [f"overlap {ov[p]:.2f}" for p in moved],
                paths,
                images,
            )
        )
    if r.explanations is not None:
        section.add(
            Figure(
                explanation_figure(r, [images.get(p) for p in queries]),
                caption=(
                    "Explanation maps of the query images, baseline beside new (each map min-max "
                    "scaled on its own), with their Spearman rank correlation ρ."
                ),
                alt="Explanation maps of both models side by side",
                wide=True,
            )
        )
        for m, why in r.explanations.left_out.items():
            section.add(Text(f"Explanations, {m}: {why}.", kind="note"))
    if r.filters is not None:
        f = r.filters
        section.add(
            Figure(
                filters_figure(r),
                caption=(
                    f"First-layer filters, baseline | new per pair, titled with their cosine "
                    f"similarity (red below 0.5); {min(len(f.cosine), 48)} of {len(f.cosine)} "
                    f"filters, mean cosine {format_number(r.filter_cosine_mean)}."
                ),
                alt="First-layer filters of both models",
            )
        )
    left: list[list[Cell]] = [
        [PART_TITLES.get(part, part), why]
        for part, why in sorted(r.left_out.items())
        if not (part in ("accuracy", "calibration", "per_class") and r.flip_meaning != "label")
    ]
    if r.flip_meaning != "label":
        left.insert(0, ["accuracy, calibration, per-class numbers", "the images are unlabelled"])
    if left:
        section.add(Table("Parts left out of the comparison", ["part", "why"], left))
    return section
