"""Nearest neighbours in penultimate-feature space beside those in raw-pixel space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from reportgen import methods
from reportgen.analyses.common import pixel_vectors
from reportgen.contract import Analysis, Metric, Needs, Result, SkipSection
from reportgen.params import AnalysisParams, between, rule
from reportgen.report.section import Picture, Table, Text, Thumb
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext

HOW_TO_READ = (
    "Each row starts with a query image, then its nearest images in the network's penultimate "
    "feature space, then its nearest images in raw-pixel space (distance under each). A network "
    "that has learned the task puts images of the same class next to each other in feature space "
    "even when their pixels differ (pose, colour, background), while pixel-space neighbours "
    "mostly share brightness and layout. The k-NN agreement table measures this over the whole "
    "dataset: the share of each image's k nearest neighbours that have its label (for a "
    "multi-label model: the mean Jaccard similarity of the label sets, 1 = the same labels)."
)


@dataclass(frozen=True)
class NeighborsParams(AnalysisParams):
    k: int = field(default=5, metadata=rule(between(1, 50)))
    metric: Literal["euclidean", "cosine"] = "euclidean"
    thumb_size: int = field(default=72, metadata=rule(between(16, 256)))


class NeighborsAnalysis(Analysis[NeighborsParams]):
    name = "neighbors"
    title = "Nearest neighbours: feature space vs pixel space"
    Params = NeighborsParams
    needs = Needs(features=True)
    metrics = (
        Metric("knn_agreement_feature", "k-NN agreement, features", headline=True),
        Metric("knn_agreement_pixel", "k-NN agreement, pixels", headline=True),
        Metric("knn_k", "k of the k-NN agreement", kind="count"),
    )
    order = 20

    def run(self, ctx: AnalysisContext, p: NeighborsParams) -> Result:
        section = self.section(HOW_TO_READ)
        res = ctx.pass_result
        assert res.features is not None
        n = len(res)
        if n < 2:
            raise SkipSection("needs at least two readable images")
        k = min(p.k, n - 1)
        feats = res.features
        pix = pixel_vectors(res.pixels).to(feats.device)
        queries = torch.tensor(ctx.queries, dtype=torch.long, device=feats.device)

        fd, fi = methods.knn.knn(feats[queries], feats, k, metric=p.metric, exclude=queries)
        pd, pi = methods.knn.knn(pix[queries], pix, k, metric=p.metric, exclude=queries)
        sets = self._sets(ctx)
        if sets is not None:  # multi-label: the agreement of label sets is their Jaccard
            agree_f = methods.knn.leave_one_out_jaccard(feats, sets, k, p.metric)
            agree_p = methods.knn.leave_one_out_jaccard(pix, sets, k, p.metric)
        else:
            agree_f = methods.knn.leave_one_out_agreement(feats, res.labels, k, p.metric)
            agree_p = methods.knn.leave_one_out_agreement(pix, res.labels, k, p.metric)
        metrics = {"knn_agreement_feature": agree_f, "knn_agreement_pixel": agree_p, "knn_k": k}

        fi_l, pi_l = fi.cpu().tolist(), pi.cpu().tolist()
        fd_l, pd_l = fd.cpu().tolist(), pd.cpu().tolist()
        wanted = sorted({q for q in ctx.queries} | {j for row in fi_l + pi_l for j in row})
        images = dict(zip(wanted, ctx.display_images(wanted, p.thumb_size), strict=True))
        labelled = ctx.folder.labelled
        agreement = self._agreement(ctx, sets)

        def thumb(pos: int, dist: float | None, query: int | None) -> Thumb:
            name = ctx.label_text(pos) if labelled else ctx.prediction_text(pos)
            mark = ""
            if query is not None and labelled:
                same = agreement(query, pos)
                mark = " ✓" if same == 1 else " ✗" if same == 0 else f" J={same:.2f}"
            text = name + mark if dist is None else f"{name}{mark} · {dist:.3g}"
            return Thumb(Picture(images[pos], kind="photo"), label=text, alt=ctx.relpath(pos))

        rows = []
        same_f = same_p = 0.0
        for qi, q in enumerate(ctx.queries):
            row: list[Any] = [thumb(q, None, None)]
            row += [thumb(j, d, q) for j, d in zip(fi_l[qi], fd_l[qi], strict=True)]
            row += [thumb(j, d, q) for j, d in zip(pi_l[qi], pd_l[qi], strict=True)]
            rows.append(row)
            if labelled:
                same_f += sum(agreement(q, j) for j in fi_l[qi])
                same_p += sum(agreement(q, j) for j in pi_l[qi])
        columns = (
            ["query"]
            + [f"feature #{i + 1}" for i in range(k)]
            + [f"pixel #{i + 1}" for i in range(k)]
        )
        kind = ("labels" if sets is not None else "label") if labelled else "predicted class"
        section.add(
            Table(
                caption=(
                    f"Queries (first column), their {k} nearest neighbours in {res.feature_layer} "
                    f"feature space, then in pixel space ({ctx.pixel_size}² "
                    f"downsampled inputs); under each: {kind} and {p.metric} distance"
                    + (
                        (
                            " (✓ the same label set as the query, ✗ none shared, J: the "
                            "Jaccard similarity of the two sets)."
                            if sets is not None
                            else " (✓ same label as the query)."
                        )
                        if labelled
                        else "."
                    )
                ),
                columns=columns,
                rows=rows,
            )
        )
        if labelled:
            fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
            nq = max(1, len(ctx.queries) * k)
            section.add(
                Table(
                    caption=f"Leave-one-out {k}-NN label agreement over all {n} images ({p.metric} distance)"
                    + (
                        ": the mean Jaccard similarity of each image's label set with its "
                        "neighbours'"
                        if sets is not None
                        else ""
                    ),
                    columns=[
                        "space",
                        "dimensions",
                        f"agreement (all images, k={k})",
                        "agreement (queries above)",
                    ],
                    rows=[
                        [
                            f"penultimate features ({res.feature_layer})",
                            int(feats.shape[1]),
                            fmt(agree_f),
                            fmt(same_f / nq),
                        ],
                        ["raw pixels", int(pix.shape[1]), fmt(agree_p), fmt(same_p / nq)],
                    ],
                )
            )
        else:
            section.add(
                Text(
                    "The images are unlabelled: neighbours are shown with the model's predicted class, and no agreement is computed.",
                    kind="note",
                )
            )
        return Result(section, metrics=metrics)

    @staticmethod
    def _sets(ctx: AnalysisContext) -> torch.Tensor | None:
        return ctx.pass_result.label_sets

    @staticmethod
    def _agreement(ctx: AnalysisContext, sets: torch.Tensor | None) -> Any:
        """(query, neighbour) -> 1.0 same label, 0.0 different (Jaccard for label sets)."""
        if sets is None:
            return lambda a, b: float(ctx.label(a) == ctx.label(b))
        known = sets > 0

        def jaccard(a: int, b: int) -> float:
            return float(methods.knn.jaccard(known[a], known[b]))

        return jaccard
