"""The audit's task-specific parts: a binary model's ROC and PR curves and threshold table, a
multi-label model's per-label table, label co-occurrence and per-decision checks.

Numbers come from :mod:`reportgen.methods.scores` (the definitions tested against
scikit-learn); this module lays them out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen import methods
from reportgen.methods.scores import BinaryScores, MultilabelScores
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Table, Text
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext
    from reportgen.methods.calibration import Calibration
    from reportgen.report.section import Section

Shown = dict[str, list[tuple[int, str]]]
"""Gallery title -> (image position, caption) pairs."""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- binary


def roc_pr_figure(truth: np.ndarray, p: np.ndarray, scores: BinaryScores) -> Picture:
    """ROC (left) and precision-recall (right) curves, the threshold's point marked."""
    fig = new_figure(8.4, 3.7)
    ax_roc, ax_pr = fig.subplots(1, 2)
    fpr, tpr = methods.scores.roc_curve(truth, p)
    ax_roc.plot(fpr, tpr, color="#2458a6", linewidth=1.6)
    ax_roc.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="chance")
    c = scores.counts
    marker = {"color": "#d9534f", "label": f"threshold {scores.threshold:g}"}
    if c.specificity is not None and c.sensitivity is not None:
        ax_roc.plot([1 - c.specificity], [c.sensitivity], "o", **marker)
    ax_roc.set_xlabel("false positive rate (1 − specificity)")
    ax_roc.set_ylabel("true positive rate (sensitivity)")
    ax_roc.set_title(f"ROC curve (AUROC {_num(scores.auroc)})")
    ax_roc.legend(loc="lower right", fontsize=7, frameon=False)
    recall, precision = methods.scores.pr_curve(truth, p)
    ax_pr.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="pre", color="#2458a6")
    base = scores.positives / max(1, scores.n)
    ax_pr.axhline(
        base, color="#999", linestyle="--", linewidth=1, label=f"positive share {base:.2f}"
    )
    if c.precision is not None and c.sensitivity is not None:
        ax_pr.plot([c.sensitivity], [c.precision], "o", **marker)
    ax_pr.set_xlabel("recall (sensitivity)")
    ax_pr.set_ylabel("precision")
    ax_pr.set_title(f"Precision-recall (AP {_num(scores.average_precision)})")
    ax_pr.set_xlim(0, 1.01)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.legend(loc="lower left", fontsize=7, frameon=False)
    return figure_to_picture(fig)


def binary_blocks(section: Section, truth: np.ndarray, p: np.ndarray, scores: BinaryScores) -> None:
    """The binary model's curves, its scores at the threshold and the threshold table."""
    c = scores.counts
    section.add(
        Table(
            caption=(
                f"Binary scores over {scores.n} labelled images ({scores.positives} positive); "
                f"predictions at p ≥ {scores.threshold:g} (model.threshold)"
            ),
            columns=["metric", "value"],
            rows=[
                ["AUROC", _num(scores.auroc)],
                ["average precision", _num(scores.average_precision)],
                ["F1", _num(c.f1)],
                ["sensitivity (recall of positives)", _pct(c.sensitivity)],
                ["specificity (recall of negatives)", _pct(c.specificity)],
                ["precision", _pct(c.precision)],
                ["true / false positives", f"{c.tp} / {c.fp}"],
                ["true / false negatives", f"{c.tn} / {c.fn}"],
            ],
        )
    )
    if scores.auroc is not None:
        section.add(
            Figure(
                roc_pr_figure(truth, p, scores),
                caption=(
                    "ROC and precision-recall curves of p = sigmoid(z) over the labelled images; "
                    "the red dot is the configured threshold."
                ),
                alt="ROC curve and precision-recall curve",
                wide=True,
            )
        )
    section.add(
        Table(
            caption="Threshold table: what each decision threshold on p would give",
            columns=[
                "threshold",
                "predicted positive",
                "precision",
                "sensitivity",
                "specificity",
                "F1",
            ],
            rows=[
                [
                    f"{t:g}" + (" (used)" if t == scores.threshold else ""),
                    cc.tp + cc.fp,
                    _pct(cc.precision),
                    _pct(cc.sensitivity),
                    _pct(cc.specificity),
                    _num(cc.f1),
                ]
                for t, cc in scores.table
            ],
        )
    )


# --------------------------------------------------------------------------- multi-label


def co_occurrence_figure(true: np.ndarray, predicted: np.ndarray, names: list[str]) -> Picture:
    """Label co-occurrence: how often two labels come together, in the labels and in the
    predictions (K×K counts; the diagonal is each label's count)."""
    k = true.shape[0]
    size = float(np.clip(0.35 * k + 2.2, 3.2, 6.5))
    fig = new_figure(2 * size + 0.8, size + 1.2)  # room for titles and rotated names
    axes = fig.subplots(1, 2)
    top = max(1, int(true.max()), int(predicted.max()))
    artist = None
    for ax, matrix, title in ((axes[0], true, "labels"), (axes[1], predicted, "predictions")):
        artist = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(k), labels=[n[:14] for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(k), labels=[n[:14] for n in names], fontsize=7)
        ax.set_title(f"Co-occurrence in the {title}", fontsize=9)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i, j] > top / 2 else "#1d232b",
                    )
    if artist is not None:
        fig.colorbar(artist, ax=list(axes), shrink=0.8, label="images")
    return figure_to_picture(fig)


def suspect_label_pairs(
    features: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor, k: int
) -> list[tuple[int, int, float]]:
    """(row, label, share) where a label's presence disagrees with the prediction and with the
    majority of the row's k feature-space neighbours (rows: the labelled images given), most
    certain first."""
    n = features.shape[0]
    if n <= k:
        return []
    own = torch.arange(n, device=features.device)
    _, idx = methods.knn.knn(features, features, k, exclude=own)
    y = truth.to(features.device).bool()
    share_on = y[idx].float().mean(dim=1)  # N×K: neighbours having each label
    majority = share_on > 0.5
    share = torch.where(majority, share_on, 1 - share_on)
    flagged = (majority != y) & (predicted.to(features.device).bool() == majority) & (share > 0.5)
    rows, labels = flagged.nonzero(as_tuple=True)
    values = share[rows, labels]
    order = torch.argsort(values, descending=True, stable=True)
    return [(int(rows[i]), int(labels[i]), float(values[i])) for i in order.cpu().tolist()]


def multilabel_audit(
    ctx: AnalysisContext,
    section: Section,
    checks: list[list[Any]],
    shown: Shown,
    *,
    bins: int,
    k: int,
    ece_warn: float,
    reliability: Any,
) -> dict[str, Any]:
    """The multi-label audit: per-label scores, calibration over every (image, label) decision,
    co-occurrence, confident mistakes and possible label errors. Returns its metrics."""
    res = ctx.pass_result
    scored = res.scored()
    scores = res.task_scores()
    names = [ctx.class_name(j) for j in range(int(res.logits.shape[1]))]
    metrics: dict[str, Any] = {}
    if not isinstance(scores, MultilabelScores) or res.label_sets is None:
        section.add(
            Text(
                "The images are unlabelled: checks that need label sets (per-label scores, "
                "calibration, label errors) are left out.",
                kind="note",
            )
        )
        return metrics
    positions = scored.nonzero().flatten()
    probs = res.probabilities()[positions.to(res.logits.device)].cpu()
    truth = (res.label_sets[positions] > 0).cpu()
    predicted = res.predicted_sets[positions.to(res.logits.device)].cpu()
    cal = methods.calibration.calibration(probs.flatten(), truth.flatten(), bins)
    metrics["ece"] = cal.ece
    metrics["mean_confidence"] = float(torch.maximum(probs, 1 - probs).mean())
    checks += [
        [
            "exact match (predicted set = label set)",
            _pct(scores.exact_match),
            "ok" if (scores.exact_match or 0) >= 0.5 else "warn",
            f"{round((scores.exact_match or 0) * scores.n)} of {scores.n} labelled images",
        ],
        [
            "Hamming loss (wrong label decisions)",
            _num(scores.hamming_loss),
            "ok",
            f"share of the {scores.n}×{len(names)} decisions that are wrong",
        ],
        [
            "calibration (ECE over every label decision)",
            _num(cal.ece),
            "ok" if cal.ece <= ece_warn else "warn",
            f"mean p {float(probs.mean()):.3f} vs label share {float(truth.float().mean()):.3f}",
        ],
    ]
    never = [names[s.index] for s in scores.labels if s.support and not s.predicted]
    checks.append(
        [
            "labels never predicted (though present)",
            str(len(never)),
            "warn" if never else "ok",
            ", ".join(never[:5]) or "every label present in the data is predicted somewhere",
        ]
    )
    undefined = len(names) - scores.macro_auroc_labels
    rows: list[list[Any]] = [
        [
            names[s.index],
            s.support,
            s.predicted,
            _num(s.auroc),
            _num(s.average_precision),
            _num(s.counts.f1),
            _pct(s.counts.sensitivity),
            _pct(s.counts.specificity),
        ]
        for s in sorted(scores.labels, key=lambda s: (s.auroc is None, s.auroc or 0.0, s.index))
    ]
    rows.append(
        [
            "macro average",
            "",
            "",
            _num(scores.macro_auroc),
            _num(scores.macro_average_precision),
            _num(scores.macro_f1),
            "",
            "",
        ]
    )
    rows.append(
        [
            "micro (all decisions)",
            scores.micro.tp + scores.micro.fn,
            scores.micro.tp + scores.micro.fp,
            "",
            "",
            _num(scores.micro.f1),
            _pct(scores.micro.sensitivity),
            _pct(scores.micro.specificity),
        ]
    )
    section.add(
        Table(
            caption=(
                f"Per label over {scores.n} labelled images, worst AUROC first (support: images "
                f"with the label; predicted: images where p ≥ {res.head.threshold:g})"
                + (
                    f"; {undefined} label(s) present in every image or in none have no AUROC "
                    "and are left out of the macro average"
                    if undefined
                    else ""
                )
            ),
            columns=[
                "label",
                "support",
                "predicted",
                "AUROC",
                "average precision",
                "F1",
                "sensitivity",
                "specificity",
            ],
            rows=rows,
        )
    )
    section.add(
        Figure(
            reliability(cal, "predicted probability of a label", "share with the label"),
            caption=(
                f"Calibration over all {truth.numel()} (image, label) decisions in {bins} "
                "probability bins."
            ),
            alt="Reliability diagram",
        )
    )
    yi = truth.long()
    pi = predicted.long()
    section.add(
        Figure(
            co_occurrence_figure((yi.T @ yi).numpy(), (pi.T @ pi).numpy(), names),
            caption=(
                "Label co-occurrence: images having both labels, in the labels (left) and in the "
                "predictions (right); the diagonal counts each label."
            ),
            alt="Label co-occurrence matrices",
            wide=len(names) > 6,
        )
    )
    wrong = truth != predicted
    margin = (probs - 0.5).abs().masked_fill(~wrong, -1.0)
    best = margin.max(dim=1)
    order = torch.argsort(best.values, descending=True, stable=True)
    mistakes = [int(i) for i in order.tolist() if best.values[i] >= 0]
    shown["Most confident mistakes"] = [
        (
            int(positions[i]),
            f"{names[int(best.indices[i])]}: "
            + ("false alarm" if predicted[i, best.indices[i]] else "missed")
            + f" (p {float(probs[i, best.indices[i]]):.2f})",
        )
        for i in mistakes
    ]
    if res.features is None or len(positions) < 2:
        metrics["possible_label_errors"] = None
        checks.append(["possible label errors", "n/a", "n/a", "needs penultimate features"])
        return metrics
    feats = res.features[positions.to(res.features.device)]
    suspects = suspect_label_pairs(feats, truth, predicted, min(k, len(positions) - 1))
    metrics["possible_label_errors"] = len(suspects)
    checks.append(
        [
            "possible label errors (image, label)",
            str(len(suspects)),
            "warn" if suspects else "ok",
            "a label's presence disagrees with the prediction and with most neighbours",
        ]
    )
    seen: set[int] = set()
    gallery = []
    for row, label, share in suspects:
        if row in seen:
            continue
        seen.add(row)
        has = "has" if truth[row, label] else "lacks"
        gallery.append(
            (
                int(positions[row]),
                f"{has} {names[label]}; neighbours disagree ({100 * share:.0f} %)",
            )
        )
    shown["Possible label errors"] = gallery
    return metrics


def binary_calibration(
    ctx: AnalysisContext, known: torch.Tensor, bins: int
) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """(calibration of p = P(positive) against the labels, the labels, p) on the scored images,
    p in float64 as predictions.csv has it."""
    res = ctx.pass_result
    mask = known.cpu()
    z = res.logits.float().cpu()[mask].numpy()
    p = np.ascontiguousarray(res.head.probabilities(z)[:, 1])
    y = (res.labels[mask] == 1).numpy()
    cal = methods.calibration.calibration(torch.from_numpy(p), torch.from_numpy(y), bins)
    return cal, y, p
