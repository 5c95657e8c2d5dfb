"""The slices section's discovered part: failing clusters of the penultimate features.

The compute is :func:`reportgen.methods.discovery.discover` (PCA, seeded k-means, the declared
subgroups' statistics in a Holm family of their own, flagged clusters that touch joined); this
module turns its result into the section's blocks (a method line, the map with each flagged
slice outlined, the table, typical members and confident mistakes, over-represented metadata),
the lead for "Read this first", the metrics and summary.json's ``slices.discovered``. No model
pass: thumbnails are re-read images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen import methods
from reportgen.analyses.common import TSNE_MAP
from reportgen.contract import DISCOVERED_SLICES, Metric
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Block, Cell, Figure, Picture, Table, Text, Thumb

if TYPE_CHECKING:
    from reportgen.analyses.slices import Outcomes, SlicesParams
    from reportgen.contract import AnalysisContext
    from reportgen.methods.discovery import Discovery, FoundSlice, OverRepresented

DISCOVERED_METRICS = (
    Metric(
        "slices_discovered_flagged",
        "failing clusters found in feature space",
        headline=True,
        kind="count",
    ),
    Metric(
        "slices_discovered_worst_accuracy", "worst feature-space cluster accuracy", kind="percent"
    ),
    Metric(
        "slices_discovered_max_gap", "largest feature-space cluster gap to the rest", kind="percent"
    ),
)

HYPOTHESIS = (
    "A discovered cluster is a hypothesis for a person to name — what do these images share? — "
    "not a finding: look at its images before acting on it."
)
COLOURS = ("#c0392b", "#8e44ad", "#d35400")
SHOWN_SLICES = 3
"""Flagged slices drawn on the map and given galleries (the table lists them all)."""
TABLE_ROWS = 15


@dataclass
class DiscoveredPart:
    """The discovered part of the section, ready to be added to it."""

    blocks: list[Block]
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    record: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    """How the clusters were made (summary.json's ``slices.discovery``)."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    absent: str | None = None
    """Why nothing was discovered (None when clusters were made)."""


def _absent(reason: str) -> DiscoveredPart:
    return DiscoveredPart(
        [Text(f"Not shown: {reason}.", "note")],
        {m.key: None for m in DISCOVERED_METRICS},
        info={"absent": reason},
        absent=reason,
    )


NBSP = "\u00a0"
"""Between a number and its unit in table cells: a narrow PDF column breaks lines elsewhere."""


def _pct(v: float | None, space: str = " ") -> str:
    return "n/a" if v is None else f"{100 * v:.1f}{space}%"


def slice_name(s: FoundSlice, rank: int) -> str:
    """``D1``, ``D2`` … for flagged slices; ``cluster 7`` (or ``clusters 3+7``) otherwise."""
    if s.flagged:
        return f"D{rank + 1}"
    return f"cluster {s.stats.value}"


def _classes(o: Outcomes, s: FoundSlice, top: int = 3) -> str:
    parts = [f"{o.class_name(c)} ×{k}" for c, k in s.classes[:top]]
    more = len(s.classes) - top
    return ", ".join(parts) + (f" + {more} more" if more > 0 else "")


def discovered_part(
    ctx: AnalysisContext, o: Outcomes, columns: dict[str, list[str]], p: SlicesParams
) -> DiscoveredPart:
    """Cluster the scored images' features, test the clusters, present them."""
    res = ctx.pass_result
    if not p.discover:
        return _absent("discovery is off (analyses.slices.discover: false)")
    if res.features is None:
        kind = {"torchscript": "a TorchScript", "exported": "an exported (torch.export)"}.get(
            ctx.model.kind, "this"
        )
        return _absent(
            f"no penultimate features to find clusters in: {kind} model takes no layer hooks "
            "(load a state dict with --model/--weights for this part)"
        )
    n = len(o.positions)
    if n < 2 * p.min_size:
        return _absent(
            f"{n} scored images are too few to cut into clusters of at least {p.min_size} "
            "(min_size)"
        )
    features = res.features.float().cpu().numpy()[o.positions]
    try:
        d = methods.discovery.discover(
            features,
            o.correct,
            o.labels,
            clusters=p.clusters,
            dims=p.pca_dims,
            seed=ctx.seed,
            min_size=p.min_size,
            alpha=p.alpha,
            min_gap=p.min_gap,
        )
    except methods.discovery.NoStructure as exc:
        return _absent(f"{exc}, so clusters would mean nothing")
    flagged = [s for s in d.slices if s.flagged]
    ranked = [s for s in d.slices if s.ranked]
    overrep = {
        i: methods.discovery.over_represented(columns, np.isin(d.partition.assign, s.clusters))
        for i, s in enumerate(flagged)
    }
    metrics = {
        "slices_discovered_flagged": len(flagged),
        "slices_discovered_worst_accuracy": min((s.stats.accuracy for s in ranked), default=None),
        "slices_discovered_max_gap": max(
            (-(s.stats.gap or 0) for s in ranked if s.stats.gap is not None), default=None
        ),
    }
    assign = np.zeros(len(res), dtype=np.int32)
    assign[o.positions] = d.partition.assign + 1
    failing = np.zeros(len(res), dtype=np.int32)
    for i, s in enumerate(flagged):
        failing[o.positions[s.members]] = i + 1
    ctx.share_array(DISCOVERED_SLICES, failing)
    info = {
        "clusters": d.k,
        "clusters_auto": p.clusters == 0,
        "pca_dims": d.dims,
        "features": res.feature_layer,
        "feature_dims": int(features.shape[1]),
        "images": n,
        "tested": d.tested,
        "min_gap": p.min_gap,
        "touch": methods.discovery.TOUCH,
        "seed": ctx.seed,
    }
    blocks = _method_blocks(res.feature_layer, features.shape[1], n, d, p, ctx.seed, flagged)
    if flagged:
        blocks.append(_map_figure(ctx, o, d, flagged[:SHOWN_SLICES]))
    blocks.append(_table(o, d, p))
    for i, s in enumerate(flagged[:SHOWN_SLICES]):
        blocks += _slice_blocks(ctx, o, d, s, i, overrep[i], bool(columns), p)
    return DiscoveredPart(
        blocks,
        metrics,
        _lead(flagged, overrep),
        [_record(o, s, i, overrep.get(i)) for i, s in enumerate(d.slices)],
        info,
        {"slices_clusters": assign},
    )


def _method_blocks(
    layer: str | None,
    dims: int,
    n: int,
    d: Discovery,
    p: SlicesParams,
    seed: int,
    flagged: list[FoundSlice],
) -> list[Block]:
    how_k = (
        f"one per {methods.discovery.IMAGES_PER_CLUSTER} images, 2–"
        f"{methods.discovery.MAX_AUTO_CLUSTERS}"
        if p.clusters == 0
        else "set by analyses.slices.clusters"
    )
    method = (
        f"The {n} scored images' {layer} features ({dims} dimensions) were reduced to "
        f"{d.dims} principal components and cut into {d.k} clusters by k-means (seed {seed}; "
        f"k {how_k}) without looking at which images are wrong. Each cluster of at least "
        f"{p.min_size} images is tested against the rest like a subgroup (Fisher exact test, "
        f"Holm over the {d.tested} clusters tested — a family of its own, apart from the "
        f"declared subgroups). A cluster is flagged when it is significant at alpha "
        f"{p.alpha:g} and at least {100 * p.min_gap:.0f} points less accurate both than the rest "
        "and than the images of its classes elsewhere (its class mix); flagged clusters that "
        "touch are one slice. " + HYPOTHESIS
    )
    blocks: list[Block] = [Text(method, "paragraph")]
    if flagged:
        worst = flagged[0]
        blocks.append(
            Text(
                f"{len(flagged)} failing cluster(s) found in feature space; the worst, D1: "
                f"{worst.stats.n} images at {100 * worst.stats.accuracy:.1f} % vs "
                f"{100 * (worst.stats.rest_accuracy or 0):.1f} % elsewhere (its classes "
                f"elsewhere: {100 * worst.expected:.1f} %).",
                "warning",
            )
        )
    else:
        blocks.append(
            Text(
                f"No cluster is significantly and at least {100 * p.min_gap:.0f} points worse "
                f"than the rest (Holm over {d.tested} tested, alpha {p.alpha:g}).",
                "note",
            )
        )
    return blocks


def _lead(flagged: list[FoundSlice], overrep: dict[int, list[OverRepresented]]) -> list[str]:
    """The line for "Read this first" (None flagged: none)."""
    if not flagged:
        return []
    s = flagged[0]
    meta = overrep.get(0) or []
    named = (
        f"; most over-represented: {meta[0].column} = {meta[0].value or '(empty)'} "
        f"({100 * meta[0].share:.0f} % vs {100 * meta[0].overall:.0f} % overall)"
        if meta
        else ""
    )
    return [
        f"failing cluster D1 found in feature space ({s.stats.n} images, no metadata needed): "
        f"accuracy {100 * s.stats.accuracy:.1f} % vs {100 * (s.stats.rest_accuracy or 0):.1f} % "
        f"on the rest (Holm-corrected p {s.p_holm:.2g}){named}; {len(flagged)} such cluster(s) "
        "— a hypothesis to name, not a finding: see 'Where does the model fail?'"
    ]


def _map_points(ctx: AnalysisContext, d: Discovery) -> tuple[np.ndarray, bool]:
    """(2-D positions, is t-SNE): the embedding section's t-SNE map of every image when it ran,
    else the first two principal components of the scored images."""
    tsne = ctx.shared_array(TSNE_MAP)
    if tsne is not None and len(tsne) == len(ctx.pass_result):
        return np.asarray(tsne, dtype=np.float64), True
    return d.reduced[:, :2], False


def _map_figure(
    ctx: AnalysisContext, o: Outcomes, d: Discovery, flagged: Sequence[FoundSlice]
) -> Figure:
    xy, is_tsne = _map_points(ctx, d)
    groups = []
    for i, s in enumerate(flagged):
        mask = np.zeros(len(xy), dtype=bool)
        mask[o.positions[s.members] if is_tsne else s.members] = True
        groups.append((f"D{i + 1} ({s.stats.n} images)", mask))
    where = (
        "the embedding section's t-SNE map of every image"
        if is_tsne
        else "the first two principal components of the scored images (the embedding section "
        "did not run, so there is no t-SNE map)"
    )
    return Figure(
        outline_map(xy, groups),
        caption=(
            f"Where the failing clusters lie, on {where}: each slice's images in colour, outlined "
            "where they make up at least half of the images around."
        ),
        alt="Scatter map with the failing clusters outlined",
    )


def outline_map(xy: np.ndarray, groups: Sequence[tuple[str, np.ndarray]]) -> Picture:
    """All points in gray; each group's points in its colour, with the outline of the region
    where the group makes up at least half of the (smoothed) points."""
    from scipy.ndimage import gaussian_filter

    fig = new_figure(6.4, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(3000 / max(len(xy), 1), 2, 30))
    ax.scatter(xy[:, 0], xy[:, 1], s=size, color="#c8c8c8", linewidths=0, label="other images")
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    edges = [np.linspace(lo[j] - pad[j], hi[j] + pad[j], 81) for j in range(2)]
    centres = [(e[:-1] + e[1:]) / 2 for e in edges]
    every = gaussian_filter(np.histogram2d(xy[:, 0], xy[:, 1], bins=edges)[0], 1.5)
    for (name, mask), colour in zip(groups, COLOURS, strict=False):
        pts = xy[mask]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=colour, linewidths=0, label=name)
        mine = gaussian_filter(np.histogram2d(pts[:, 0], pts[:, 1], bins=edges)[0], 1.5)
        share = np.where(every > 1e-3 * every.max(), mine / np.maximum(every, 1e-12), 0.0)
        if share.max() >= 0.5:
            ax.contour(centres[0], centres[1], share.T, levels=[0.5], colors=[colour])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=7, markerscale=max(1.0, 6 / np.sqrt(size)))
    return figure_to_picture(fig)


def _table(o: Outcomes, d: Discovery, p: SlicesParams) -> Table:
    shown = d.slices[:TABLE_ROWS]
    more = f" (the first {TABLE_ROWS} of {len(d.slices)})" if len(d.slices) > TABLE_ROWS else ""

    def name(s: FoundSlice, i: int) -> str:
        if not s.flagged:
            return slice_name(s, i)
        return f"{slice_name(s, i)}: cluster{'s' if len(s.clusters) > 1 else ''} {s.stats.value}"

    def accuracy(s: FoundSlice) -> str:
        if s.stats.ci95 is None:
            return _pct(s.stats.accuracy, NBSP)
        lo, hi = s.stats.ci95
        return f"{100 * s.stats.accuracy:.1f}{NBSP}% ({100 * lo:.1f}–{100 * hi:.1f})"

    return Table(
        caption=(
            "Failing slices (D1, D2 …), then the other clusters, worst first" + more + ". "
            "Accuracy with its Wilson 95 % interval; gap: accuracy minus the rest's (every other "
            "scored image); classes "
            "elsewhere: the accuracy its class mix predicts (its images scored as their classes "
            f"do outside it); under {p.min_size} images: not tested."
        ),
        columns=[
            "cluster",
            "images",
            "accuracy (95 % interval)",
            "gap to the rest",
            "classes elsewhere",
            "p (Holm)",
            "classes",
        ],
        rows=[
            [
                name(s, i),
                s.stats.n,
                accuracy(s),
                "n/a" if s.stats.gap is None else f"{100 * s.stats.gap:+.1f}{NBSP}pp",
                _pct(s.expected, NBSP),
                "not tested" if s.p_holm is None else s.p_holm,
                _classes(o, s, 2),
            ]
            for i, s in enumerate(shown)
        ],
    )


def _typical(d: Discovery, s: FoundSlice, count: int) -> np.ndarray:
    """The members nearest their own cluster's centre (relative to that cluster's spread)."""
    z = d.reduced[s.members]
    own = d.partition.assign[s.members]
    dist = np.linalg.norm(z - d.partition.centres[own], axis=1)
    scale = np.ones_like(dist)
    for c in np.unique(own):
        scale[own == c] = max(float(np.median(dist[own == c])), 1e-12)
    return s.members[np.argsort(dist / scale, kind="stable")[:count]]


def _slice_blocks(
    ctx: AnalysisContext,
    o: Outcomes,
    d: Discovery,
    s: FoundSlice,
    i: int,
    overrep: list[OverRepresented],
    has_metadata: bool,
    p: SlicesParams,
) -> list[Block]:
    name = f"D{i + 1}"
    if overrep:
        meta = "Metadata most over-represented in it (one-sided Fisher, Holm): " + "; ".join(
            f"{m.column} = {m.value or '(empty)'}: {100 * m.share:.0f} % of its images vs "
            f"{100 * m.overall:.0f} % overall"
            for m in overrep
        )
    elif has_metadata:
        meta = "No metadata value is significantly over-represented in it"
    else:
        meta = "No metadata columns to compare it with"
    blocks: list[Block] = [
        Text(
            f"{name}: {s.stats.n} images in cluster(s) {s.stats.value}, accuracy "
            f"{100 * s.stats.accuracy:.1f} % vs {100 * (s.stats.rest_accuracy or 0):.1f} % on the "
            f"rest; classes {_classes(o, s, 5)}. {meta}. What do these images share?",
            "paragraph",
        )
    ]
    if p.show == 0:
        return blocks
    typical = o.positions[_typical(d, s, p.show)].tolist()
    wrong = s.members[~o.correct[s.members]]
    mistakes = o.positions[wrong][np.argsort(-o.conf[o.positions[wrong]], kind="stable")]
    for caption, order, with_conf in (
        (f"{name}: typical images (nearest their cluster's centre)", typical, False),
        (f"{name}: its most confident mistakes", mistakes[: p.show].tolist(), True),
    ):
        if not order:
            continue
        images = ctx.display_images(order, p.thumb_size)
        cells: list[Cell] = []
        for q, img in zip(order, images, strict=True):
            text, answer = ctx.label_text(q), ctx.prediction_text(q)
            if answer != text:
                text += f" → {answer}"
            if with_conf:
                text += f" ({o.conf[q]:.2f})"
            cells.append(Thumb(Picture(img, kind="photo"), label=text, alt=ctx.relpath(q)))
        blocks.append(
            Table(caption=caption, columns=[f"#{k + 1}" for k in range(len(cells))], rows=[cells])
        )
    return blocks


def _record(
    o: Outcomes, s: FoundSlice, rank: int, overrep: list[OverRepresented] | None
) -> dict[str, Any]:
    st = s.stats
    return {
        "id": slice_name(s, rank) if s.flagged else None,
        "clusters": [c + 1 for c in s.clusters],
        "n": st.n,
        "correct": st.correct,
        "accuracy": st.accuracy,
        "ci95": list(st.ci95) if st.ci95 else None,
        "rest_accuracy": st.rest_accuracy,
        "gap": st.gap,
        "expected_accuracy": s.expected,
        "p": st.p,
        "p_holm": s.p_holm,
        "flagged": s.flagged,
        "ranked": s.ranked,
        "classes": [{"class": o.class_name(c), "images": k} for c, k in s.classes],
        "over_represented": [
            {
                "column": m.column,
                "value": m.value,
                "share": m.share,
                "overall": m.overall,
                "p_holm": m.p_holm,
            }
            for m in overrep or []
        ],
    }
