"""Where does the model fail? Accuracy per declared subgroup, and failing clusters discovered.

Declared slices come from the data's metadata columns (a manifest's or dataset's extra columns):
every column with 2–``max_values`` distinct values, numeric columns with more cut into quantile
bins, optionally every pair of columns. Per slice: its size, accuracy with a Wilson 95 %
interval, the gap to the rest of the data and a two-sided Fisher exact test of it; the p-values
are Holm-corrected over every slice tested (those of at least ``min_size`` images), and a slice
is *flagged* when its corrected p is below ``alpha`` and it does worse than the rest. Smaller
slices are listed, never ranked worst.

Discovered slices need no metadata: clusters of the penultimate features
(:mod:`reportgen.methods.discovery`), tested the same way in a Holm family of their own and
presented by :mod:`reportgen.analyses.slices_discovered`. Which images count and what an error
is are decided in one place, :func:`outcomes`, for both parts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from reportgen import loading, methods
from reportgen.analyses.slices_discovered import DISCOVERED_METRICS, discovered_part
from reportgen.contract import Analysis, Cost, Metric, Needs, Result, SkipSection
from reportgen.errors import ReportgenError
from reportgen.methods.slicing import (
    SliceStats,
    TaskScores,
    holm,
    slice_columns,
    slice_stats,
    slice_task_metrics,
)
from reportgen.params import AnalysisParams, between, in_range, rule
from reportgen.report.figures import colormap, figure_to_picture, new_figure
from reportgen.report.section import Block, Figure, Picture, Table, Text, Thumb
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext, PassResult

HOW_TO_READ = (
    "Two ways of finding images the model serves worse. Declared subgroups are named by a "
    "metadata column (a site, a scanner, an age band); discovered clusters are groups of images "
    "that lie together in the model's own feature space, found without any column and without "
    "looking at which images are wrong. Each is compared with every other image: the interval "
    "is where its accuracy plausibly lies given its size, the gap is its accuracy minus the "
    "rest's, and the corrected p-value (Holm, over the subgroups tested, and separately over "
    "the clusters tested) says whether the gap is larger than chance. A flagged subgroup is one "
    "the model serves significantly worse: look at its mistakes before shipping. A flagged "
    "cluster is a hypothesis: look at its images and name what they share before acting on it."
)


@dataclass(frozen=True)
class SlicesParams(AnalysisParams):
    columns: list[str] | None = None
    """Metadata columns to slice by (default: every column with 2–max_values values, and
    numeric columns with more, binned)."""
    bins: int = field(default=4, metadata=rule(between(2, 20)))
    """Quantile bins for a numeric column with more than max_values distinct values."""
    max_values: int = field(default=50, metadata=rule(between(2, 1000)))
    intersections: bool = False
    """Also every pair of columns (site × scanner ...)."""
    min_size: int = field(default=20, metadata=rule(between(1, 1_000_000)))
    """Slices with fewer scored images are listed but not tested or ranked."""
    alpha: float = field(default=0.05, metadata=rule(in_range(0, 1, lo_open=True, hi_open=True)))
    """Family-wise error rate of the flags (Holm)."""
    show: int = field(default=8, metadata=rule(between(0, 50)))
    """Most confident mistakes shown per flagged slice (and typical members per flagged cluster)."""
    thumb_size: int = field(default=72, metadata=rule(between(16, 256)))
    discover: bool = True
    """Also look for failing clusters in the penultimate features (no metadata needed)."""
    clusters: int = field(default=0, metadata=rule(between(0, 1000)))
    """k-means clusters; 0 = one per 50 scored images, at least 2 and at most 64."""
    pca_dims: int = field(default=32, metadata=rule(between(2, 512)))
    """Principal components of the features the clusters are made in."""
    min_gap: float = field(default=0.1, metadata=rule(in_range(0, 1)))
    """A flagged cluster is at least this much less accurate than the rest and than the images of
    its classes elsewhere (errors gather at class boundaries, so a cluster a few points worse is
    no slice; one hard class is the per-class recall's finding)."""


SliceKey = tuple[str, str]


def declared_slices(
    columns: dict[str, list[str]],
    correct: np.ndarray,
    p: SlicesParams,
    scores: TaskScores | None = None,
    seed: int = 0,
) -> tuple[list[SliceStats], dict[SliceKey, dict[str, Any]]]:
    """Every slice's numbers, the tested ones Holm-corrected, flagged, worst first; and for a
    binary or multi-label model each slice's task metrics ((column, value) -> AUROC and F1, or
    macro AUROC, with seeded bootstrap intervals)."""
    found: list[SliceStats] = []
    extra: dict[SliceKey, dict[str, Any]] = {}
    groups: list[tuple[str, np.ndarray]] = [
        (c, np.array(v, dtype=object)) for c, v in columns.items()
    ]
    if p.intersections:
        for (a, va), (b, vb) in itertools.combinations(list(groups), 2):
            groups.append(
                (
                    f"{a} × {b}",
                    np.array([f"{x} & {y}" for x, y in zip(va, vb, strict=True)], dtype=object),
                )
            )
    for column, values in groups:
        for value in sorted(set(values.tolist())):
            found.append(slice_stats(column, value, values == value, correct))
            if scores is not None:
                key = [seed, len(found)]
                extra[(column, value)] = slice_task_metrics(scores, values == value, key)
    tested = [i for i, s in enumerate(found) if s.n >= p.min_size and s.p is not None]
    adjusted = holm([found[i].p for i in tested])  # type: ignore[misc]
    out = list(found)
    for i, q in zip(tested, adjusted, strict=True):
        s = out[i]
        out[i] = SliceStats(
            **{**s.__dict__, "p_holm": q, "flagged": bool(q < p.alpha and (s.gap or 0) < 0)}
        )
    for i, s in enumerate(out):
        if s.n < p.min_size:
            out[i] = SliceStats(**{**s.__dict__, "ranked": False})
    return sorted(out, key=lambda s: (not s.ranked, s.accuracy, s.column, s.value)), extra


def forest_figure(slices: list[SliceStats], overall: float) -> Picture:
    shown = slices[:30]
    fig = new_figure(6.4, 0.28 * len(shown) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(shown))[::-1]
    for y, s in zip(ys, shown, strict=True):
        colour = "#c0392b" if s.flagged else ("#2c5d8f" if s.ranked else "#999999")
        if s.ci95 is not None:
            ax.plot(s.ci95, [y, y], color=colour, linewidth=2)
        ax.plot([s.accuracy], [y], "o", color=colour, markersize=4)
    ax.axvline(
        overall,
        color="#555555",
        linestyle="--",
        linewidth=1,
        label=f"all images {100 * overall:.1f} %",
    )
    ax.set_yticks(ys)
    ax.set_yticklabels(
        [f"{s.column} = {s.value or '(empty)'}"[:40] + f" (n={s.n})" for s in shown], fontsize=7
    )
    ax.set_xlabel("accuracy (Wilson 95 % interval)")
    ax.set_xlim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return figure_to_picture(fig)


def _mistakes(
    flagged: list[SliceStats],
    columns: dict[str, list[str]],
    positions: np.ndarray,
    correct: np.ndarray,
    conf: np.ndarray,
    show: int,
) -> list[tuple[SliceStats, list[int]]]:
    """Per flagged subgroup (at most 3), its most confident mistakes (pass positions)."""
    out = []
    for s in flagged[:3]:
        if show == 0 or s.column not in columns:
            continue
        values = np.array(columns[s.column], dtype=object)
        members = positions[(values == s.value) & ~correct]
        order = members[np.argsort(-conf[members], kind="stable")][:show].tolist()
        if order:
            out.append((s, order))
    return out


def gradcam_overlays(
    ctx: AnalysisContext, positions: list[int], targets: list[int], size: int
) -> list[np.ndarray]:
    """The images with the Grad-CAM of ``targets`` (the predicted, wrong class) laid over them.
    Raises NotApplicable / ChangedFile when it cannot be made."""
    model = ctx.model.module
    x = ctx.load_inputs(positions)
    t = torch.tensor(targets, device=x.device)
    bs = ctx.batch("auto", backward=True)
    layout = ctx.token_layout
    if layout is not None:
        layer = methods.vit_maps.default_vit_gradcam_layer(layout)
        cam = methods.vit_maps.vit_grad_cam(model, x, t, layer, layout, bs, head=ctx.head)
    else:
        try:
            layer = methods.attribution.default_gradcam_layer(model, x[:1])
        except ValueError as exc:
            raise methods.attribution.NotApplicable(str(exc)) from None
        module = loading.types.find_layer(model, layer)
        cam = methods.attribution.grad_cam(model, x, t, module, bs, head=ctx.head)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    maps = methods.attribution.upsample_maps(cam, (h, w)).float().cpu().numpy()
    out = []
    for img, m in zip(ctx.display_images(positions), maps, strict=True):
        m = m / m.max() if m.max() > 0 else m
        blend = (0.55 * img.astype(np.float64) + 0.45 * colormap(m, "jet")).round()
        pil = Image.fromarray(blend.clip(0, 255).astype(np.uint8))
        scale = size / max(pil.size)  # to the thumbnail size, as the plain thumbnails are
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
        dims = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(dims, resample)
        out.append(np.asarray(pil))
    return out


def _record(s: SliceStats, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **(extra or {}),
        "column": s.column,
        "value": s.value,
        "n": s.n,
        "accuracy": s.accuracy,
        "ci95": list(s.ci95) if s.ci95 else None,
        "rest_accuracy": s.rest_accuracy,
        "gap": s.gap,
        "p": s.p,
        "p_holm": s.p_holm,
        "flagged": s.flagged,
        "ranked": s.ranked,
    }


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Which images count and whether the model got each right."""

    positions: np.ndarray
    """Pass positions of the scored images."""
    correct: np.ndarray
    """Per scored image: the model's answer is right."""
    labels: np.ndarray
    """Per scored image: its true class (multi-label: the index of its label set among
    :attr:`class_names`)."""
    conf: np.ndarray
    """Confidence of every image of the pass (by pass position), to rank mistakes."""
    class_names: list[str]
    """What :attr:`labels` index: the classes, or the label sets ("even | prime", "none")."""
    scores: TaskScores | None = None
    """A binary or multi-label model's truth and probabilities per scored image (the slices'
    AUROC and F1)."""

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


def right_or_wrong(res: PassResult) -> np.ndarray:
    """Per image: was the model right? The prediction equals the label (multiclass, binary at
    the threshold), or the predicted label set equals the true one (multi-label: exact match)."""
    if res.head.single_label:
        return np.asarray(res.predictions.cpu().numpy() == res.labels.cpu().numpy())
    assert res.label_sets is not None
    return ((res.label_sets > 0) == res.predicted_sets.cpu()).all(dim=1).numpy()


def confidence(res: PassResult) -> np.ndarray:
    """Per image, how sure the model is of its decision: the predicted class' probability, or
    for a multi-label model the mean over labels of max(p, 1 − p)."""
    if res.head.single_label:
        return res.confidence().cpu().numpy()
    probs = res.probabilities().cpu()
    return torch.maximum(probs, 1 - probs).mean(dim=1).numpy()


def outcomes(ctx: AnalysisContext) -> Outcomes:
    """The one place both parts learn which images are scored and what an error is: labelled
    (with a class the model outputs, or a known label set) and finite outputs; right when the
    prediction is the label (multiclass; binary at the threshold) or the predicted label set is
    the true one (multi-label). A multi-label image's "class", for the class mix of a cluster,
    is its label set. Raises SkipSection when nothing is scored."""
    res = ctx.pass_result
    scored = res.scored().cpu().numpy()
    if not ctx.labels_are_model_classes or not scored.any():
        raise SkipSection("no labelled image the model can be right or wrong about")
    positions = np.nonzero(scored)[0]
    correct = right_or_wrong(res)[positions]
    z = res.logits.float().cpu().numpy()[positions]
    probs, predicted = res.head.probabilities(z), res.head.predictions(z)
    scores = None
    if res.head.single_label:
        labels = res.labels.cpu().numpy()[positions]
        names = [ctx.class_name(c) for c in range(int(labels.max()) + 1)]
        if res.head.task == "binary":
            scores = TaskScores("binary", labels, probs[:, 1], predicted)
    else:
        assert res.label_sets is not None
        sets = [ctx.label_text(int(q)) for q in positions]
        names = sorted(set(sets))
        index = {name: i for i, name in enumerate(names)}
        labels = np.array([index[t] for t in sets], dtype=np.int64)
        truth = res.label_sets.numpy()[positions] > 0
        scores = TaskScores("multilabel", truth, probs, predicted)
    return Outcomes(positions, correct, labels, confidence(res), names, scores)


def mistaken_targets(ctx: AnalysisContext, positions: list[int]) -> list[int]:
    """What each mistake's Grad-CAM explains: the wrong predicted class, or for a multi-label
    model the label whose decision is most confidently wrong."""
    res = ctx.pass_result
    if res.head.single_label:
        return [int(res.predictions[q]) for q in positions]
    assert res.label_sets is not None
    probs = res.probabilities().cpu()[positions]
    wrong = (res.label_sets[positions] > 0) != res.predicted_sets.cpu()[positions]
    margin = (probs - 0.5).abs().masked_fill(~wrong, -1.0)
    return margin.argmax(dim=1).tolist()


NO_METADATA = "the data has no metadata columns"


@dataclass(frozen=True, eq=False)
class Prepared:
    """What both the cost plan and the section need: the scored images and the subgroups."""

    outcomes: Outcomes
    slices: list[SliceStats]
    """Declared subgroups (empty when there are none)."""
    columns: dict[str, list[str]]
    """Column -> one slice value per scored image."""
    notes: list[str]
    absent: str | None = None
    """Why there are no declared subgroups (None when there are)."""
    task_metrics: dict[SliceKey, dict[str, Any]] = field(default_factory=dict)
    """(column, value) -> the subgroup's AUROC and F1 (binary) or macro AUROC (multi-label)."""


def prepare(ctx: AnalysisContext, p: SlicesParams, task_metrics: bool = True) -> Prepared:
    """The scored images and their declared subgroups (``task_metrics``: with their AUROC
    bootstraps, which the cost plan never reads). Raises SkipSection with the reason."""
    folder = ctx.folder
    o = outcomes(ctx)
    unknown = [c for c in p.columns or [] if c not in folder.metadata]
    if unknown:
        reason = (
            f"analyses.slices.columns names {', '.join(unknown)}, not a metadata column "
            f"(the data has {', '.join(folder.metadata_columns) or 'none'})"
        )
        return Prepared(o, [], {}, [], reason)
    if not folder.metadata:
        return Prepared(o, [], {}, [], NO_METADATA)
    rows = [folder.items[ctx.pass_result.item_index[int(q)]] for q in o.positions]
    metadata = {
        c: [v[it.row] if it.row >= 0 else "" for it in rows] for c, v in folder.metadata.items()
    }
    columns, notes = slice_columns(metadata, p.columns, max_values=p.max_values, bins=p.bins)
    if not columns:
        reason = "no metadata column has between 2 and max_values values: " + "; ".join(notes)
        return Prepared(o, [], {}, notes, reason)
    slices, extra = declared_slices(
        columns, o.correct, p, o.scores if task_metrics else None, ctx.seed
    )
    return Prepared(o, slices, columns, notes, task_metrics=extra)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _declared_blocks(ctx: AnalysisContext, sp: Prepared, p: SlicesParams) -> list[Block]:
    """The declared part: the lead, the forest plot, the table and the flagged subgroups'
    confident mistakes with their Grad-CAM."""
    slices, o = sp.slices, sp.outcomes
    overall = float(o.correct.mean())
    flagged = [s for s in slices if s.flagged]
    tested = sum(1 for s in slices if s.p_holm is not None)
    blocks: list[Block] = []
    if flagged:
        worst = flagged[0]
        blocks.append(
            Text(
                f"{len(flagged)} subgroup(s) significantly worse than the rest (Holm over "
                f"{tested} tested, alpha {p.alpha:g}); the worst: {worst.column} = "
                f"{worst.value or '(empty)'} at {100 * worst.accuracy:.1f} % on {worst.n} images "
                f"vs {100 * (worst.rest_accuracy or 0):.1f} % elsewhere.",
                "warning",
            )
        )
    else:
        blocks.append(
            Text(
                f"No subgroup is significantly worse than the rest (Holm over {tested} tested, "
                f"alpha {p.alpha:g}); subgroups under {p.min_size} images are listed, not tested.",
                "note",
            )
        )
    blocks.append(
        Figure(
            forest_figure(slices, overall),
            caption=f"Accuracy per subgroup with its Wilson 95 % interval (red: flagged; gray: under {p.min_size} images, not tested){'; the 30 lowest of ' + str(len(slices)) if len(slices) > 30 else ''}.",
            alt="Forest plot of subgroup accuracy",
        )
    )
    blocks.append(_declared_table(slices, sp.task_metrics, o))
    if sp.notes:
        blocks.append(Text("Columns not sliced: " + "; ".join(sp.notes) + ".", "note"))
    for s, order in _mistakes(flagged, sp.columns, o.positions, o.correct, o.conf, p.show):
        note = ""
        try:
            if not (ctx.model.supports_hooks and ctx.model.supports_gradients):
                raise methods.attribution.NotApplicable("the model does not take layer hooks")
            images = gradcam_overlays(ctx, order, mistaken_targets(ctx, order), p.thumb_size)
            note = (
                ", with the Grad-CAM of the (wrong) predicted class laid over each"
                if ctx.head.single_label
                else ", with the Grad-CAM of the most confidently wrong label laid over each"
            )
        except (methods.attribution.NotApplicable, ReportgenError) as exc:  # or a changed file
            images = ctx.display_images(order, p.thumb_size)
            note = f" (Grad-CAM not shown: {exc})"
        blocks.append(
            Table(
                caption=f"{s.column} = {s.value or '(empty)'}: its most confident mistakes{note}",
                columns=[f"#{k + 1}" for k in range(len(order))],
                rows=[
                    [
                        Thumb(
                            Picture(img, kind="photo"),
                            label=f"{ctx.label_text(q)} → {ctx.prediction_text(q)} ({o.conf[q]:.2f})",
                            alt=ctx.relpath(q),
                        )
                        for q, img in zip(order, images, strict=True)
                    ]
                ],
            )
        )
    return blocks


def _interval(values: list[float] | None) -> str:
    return "" if values is None else f" ({values[0]:.3f}–{values[1]:.3f})"


def _declared_table(
    slices: list[SliceStats], extra: dict[SliceKey, dict[str, Any]], o: Outcomes
) -> Table:
    """The subgroups, worst first; a binary model's AUROC and F1, a multi-label model's macro
    AUROC beside the accuracy."""
    task = o.scores.task if o.scores is not None else None
    columns = ["column", "value", "images", "accuracy", "95 % interval", "rest", "gap"]
    if task == "binary":
        columns += ["AUROC (95 % CI)", "F1"]
    elif task == "multilabel":
        columns += ["macro AUROC (95 % CI)"]
    rows: list[list[Any]] = []
    for s in slices[:60]:
        m = extra.get((s.column, s.value), {})
        row: list[Any] = [
            s.column,
            s.value or "(empty)",
            s.n,
            _pct(s.accuracy),
            "n/a" if s.ci95 is None else f"{100 * s.ci95[0]:.1f}–{100 * s.ci95[1]:.1f} %",
            _pct(s.rest_accuracy),
            "n/a" if s.gap is None else f"{100 * s.gap:+.1f} pp",
        ]
        if task == "binary":
            auc = m.get("auroc")
            row += [
                "n/a" if auc is None else f"{auc:.3f}{_interval(m.get('auroc_ci95'))}",
                "n/a" if m.get("f1") is None else f"{m['f1']:.3f}",
            ]
        elif task == "multilabel":
            auc = m.get("macro_auroc")
            row += ["n/a" if auc is None else f"{auc:.3f}{_interval(m.get('macro_auroc_ci95'))}"]
        rows.append(
            [*row, "not tested" if s.p_holm is None else s.p_holm, "worse" if s.flagged else ""]
        )
    what = {
        "binary": " (accuracy at the threshold; AUROC with a seeded bootstrap interval, n/a "
        "where the subgroup holds one class only)",
        "multilabel": " (accuracy: the exact match of the label sets; macro AUROC with a seeded "
        "bootstrap interval over the labels present in some but not all of the subgroup's "
        "images, n/a where there is none)",
    }.get(task or "", "")
    return Table(
        caption="Subgroups, worst first (gap: the subgroup's accuracy minus the rest's)" + what,
        columns=[*columns, "p (Holm)", "flag"],
        rows=rows,
    )


def _worst_auroc(slices: list[SliceStats], extra: dict[SliceKey, dict[str, Any]]) -> float | None:
    """The lowest subgroup AUROC (macro for multi-label) among the subgroups tested."""
    values = [
        v
        for s in slices
        if s.ranked
        for key in ("auroc", "macro_auroc")
        if (v := extra.get((s.column, s.value), {}).get(key)) is not None
    ]
    return min(values) if values else None


def _declared_lead(flagged: list[SliceStats]) -> list[str]:
    if not flagged:
        return []
    s = flagged[0]
    return [
        f"subgroup {s.column} = {s.value or '(empty)'}: accuracy {100 * s.accuracy:.1f} % on "
        f"{s.n} images vs {100 * (s.rest_accuracy or 0):.1f} % on the rest (Holm-corrected "
        f"p {s.p_holm:.2g}); {len(flagged)} subgroup(s) significantly worse — see 'Where does "
        "the model fail?'"
    ]


class SlicesAnalysis(Analysis[SlicesParams]):
    name = "slices"
    title = "Where does the model fail? Subgroups and failing clusters"
    Params = SlicesParams
    needs = Needs()  # declared subgroups need metadata, discovered ones features: each says why not
    metrics = (
        Metric("slices_worst_accuracy", "worst subgroup accuracy", kind="percent"),
        Metric("slices_max_gap", "largest subgroup gap to the rest", kind="percent"),
        Metric("slices_flagged", "subgroups significantly worse", headline=True, kind="count"),
        Metric("slices_worst_auroc", "worst subgroup AUROC (macro for multi-label)"),
        *DISCOVERED_METRICS,
    )
    order = 95

    def cost(self, ctx: AnalysisContext, p: SlicesParams) -> Cost:
        """One forward+backward per declared subgroup mistake shown with its Grad-CAM (the
        flagged subgroups' most confident mistakes; none when nothing is flagged), and the layer
        probe. Discovery runs no model pass (its thumbnails are re-read images)."""
        try:
            sp = prepare(ctx, p, task_metrics=False)
        except SkipSection:
            return Cost()
        if not (ctx.model.supports_hooks and ctx.model.supports_gradients):
            return Cost()
        flagged = [s for s in sp.slices if s.flagged]
        o = sp.outcomes
        shown = [
            order
            for _, order in _mistakes(flagged, sp.columns, o.positions, o.correct, o.conf, p.show)
        ]
        n = sum(len(order) for order in shown)
        # One forward+backward per image; a CNN's last spatial layer is found by a one-image
        # probe per gallery.
        probes = len(shown) if ctx.token_layout is None else 0
        return Cost(forward=probes, backward=n)

    def run(self, ctx: AnalysisContext, p: SlicesParams) -> Result:
        sp = prepare(ctx, p)
        found = discovered_part(ctx, sp.outcomes, sp.columns, p)
        if sp.absent and found.absent:
            raise SkipSection(f"{sp.absent}, and {found.absent}")
        slices = sp.slices
        ranked = [s for s in slices if s.ranked]
        flagged = [s for s in slices if s.flagged]
        metrics: dict[str, Any] = {
            "slices_worst_accuracy": min((s.accuracy for s in ranked), default=None),
            "slices_max_gap": max(
                (-(s.gap or 0) for s in ranked if s.gap is not None), default=None
            ),
            "slices_flagged": None if sp.absent else len(flagged),
            "slices_worst_auroc": _worst_auroc(slices, sp.task_metrics),
            **found.metrics,
        }
        section = self.section(HOW_TO_READ)
        section.add(Text("Declared subgroups (metadata columns)", "paragraph"))
        if sp.absent:
            hint = (
                " Give a manifest (--manifest) or a dataset with columns such as site or scanner "
                "to see accuracy per subgroup."
                if sp.absent == NO_METADATA
                else ""
            )
            section.add(Text(f"Not shown: {sp.absent}.{hint}", "note"))
        else:
            section.add(*_declared_blocks(ctx, sp, p))
        section.add(Text("Discovered clusters (penultimate features)", "paragraph"))
        section.add(*found.blocks)
        record: dict[str, Any] = {
            "declared": [_record(s, sp.task_metrics.get((s.column, s.value))) for s in slices],
            "discovered": found.record,
            "alpha": p.alpha,
            "min_size": p.min_size,
            "discovery": found.info,
        }
        if sp.absent:
            record["declared_absent"] = sp.absent
        return Result(
            section,
            arrays=found.arrays,
            warnings=_declared_lead(flagged) + found.warnings,
            metrics=metrics,
            record=record,
        )
