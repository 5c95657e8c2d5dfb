"""Audit checks: what a model reviewer asks before reading the pictures.

Per-class accuracy and the main confusions, calibration (expected calibration error and a
reliability diagram), the most confident mistakes, images whose label disagrees with their
feature-space neighbours and the model (possible label errors), and near-duplicate images
(pixel-space distance ~ 0; across classes they are label conflicts). Unlabelled data gets the
checks that need no labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen import methods
from reportgen.analyses.audit_tasks import binary_blocks, binary_calibration, multilabel_audit
from reportgen.analyses.common import pixel_vectors
from reportgen.contract import Analysis, Metric, Result
from reportgen.methods.scores import BinaryScores
from reportgen.params import AnalysisParams, between, in_range, rule
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table, Text, Thumb
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext
    from reportgen.methods.calibration import Calibration

HOW_TO_READ = (
    "The checks table flags what deserves a closer look before trusting the other sections. "
    "Calibration compares the model's confidence with its accuracy: bars below the diagonal "
    "mean over-confidence; the expected calibration error (ECE) is their weighted gap (for a "
    "binary model: p, the positive class' probability, against the share of positives; for a "
    "multi-label model over every (image, label) decision). "
    "Confident mistakes and possible label errors are images to inspect by hand: a possible "
    "label error is an image whose label disagrees both with the model's prediction and with "
    "the labels of most of its feature-space neighbours. Near-duplicates inflate accuracy when "
    "they span a train/test split and are label conflicts when their labels differ."
)


@dataclass(frozen=True)
class AuditParams(AnalysisParams):
    bins: int = field(default=15, metadata=rule(between(2, 100)))
    """Confidence bins for calibration."""
    k: int = field(default=10, metadata=rule(between(1, 100)))
    """Feature-space neighbours consulted for possible label errors."""
    show: int = field(default=8, metadata=rule(between(0, 50)))
    """Images shown per list (confident mistakes, label issues, duplicates)."""
    duplicate_threshold: float = field(default=0.02, metadata=rule(in_range(0, 1, hi_open=True)))
    """Near-duplicate when the RMS pixel difference of the downsampled images is below this (0-1 scale)."""
    ece_warn: float = field(default=0.1, metadata=rule(in_range(0, 1)))
    thumb_size: int = field(default=72, metadata=rule(between(16, 256)))


# --------------------------------------------------------------------------- compute (torch -> numpy)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, n: int) -> np.ndarray:
    """n×n counts, rows = true class, columns = predicted class."""
    idx = labels.cpu().long() * n + preds.cpu().long()
    return torch.bincount(idx, minlength=n * n).reshape(n, n).numpy()


def suspect_labels(
    features: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, k: int
) -> tuple[list[int], list[int], list[float]]:
    """Positions whose label differs from the prediction and from the majority of k neighbours.

    Returns (positions, the neighbours' majority label, the share of neighbours with it), most
    certain first.
    """
    keep = (labels >= 0).nonzero().flatten()
    if keep.numel() <= k:
        return [], [], []
    x = features[keep.to(features.device)]
    y = labels[keep].to(features.device)
    p = preds[keep.to(preds.device)].to(features.device)
    own = torch.arange(x.shape[0], device=x.device)
    _, idx = methods.knn.knn(x, x, k, exclude=own)
    neigh = y[idx]
    n_classes = int(y.max()) + 1
    votes = torch.zeros(x.shape[0], n_classes, device=x.device).scatter_add_(
        1, neigh, torch.ones_like(neigh, dtype=torch.float)
    )
    share, majority = votes.max(dim=1)
    share = share / idx.shape[1]
    flagged = (majority != y) & (p == majority) & (share > 0.5)
    pos = flagged.nonzero().flatten()
    order = torch.argsort(share[pos], descending=True, stable=True)
    pos = pos[order]
    return (
        keep[pos.cpu()].tolist(),
        majority[pos].cpu().tolist(),
        share[pos].cpu().tolist(),
    )


def near_duplicates(pixels: torch.Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i < j) whose downsampled images differ by less than ``threshold`` RMS (0-1 scale)."""
    if pixels.shape[0] < 2:
        return []
    x = pixel_vectors(pixels)
    dim = x.shape[1]
    k = min(5, x.shape[0] - 1)
    dist, idx = methods.knn.knn(x, x, k, exclude=torch.arange(x.shape[0], device=x.device))
    rms = dist / float(np.sqrt(dim))
    # Each pair is found from both ends, with distances that differ in the last float bits.
    pairs: dict[tuple[int, int], float] = {}
    for i, j in (rms < threshold).nonzero().tolist():
        key = (min(i, int(idx[i, j])), max(i, int(idx[i, j])))
        pairs[key] = min(pairs.get(key, float("inf")), float(rms[i, j]))
    return sorted(((a, b, d) for (a, b), d in pairs.items()), key=lambda t: (t[2], t[0], t[1]))


# --------------------------------------------------------------------------- presentation


def reliability_figure(
    cal: Calibration,
    xlabel: str = "confidence (max softmax probability)",
    ylabel: str = "accuracy",
) -> Picture:
    fig = new_figure(4.6, 3.6)
    ax = fig.subplots()
    centres = (cal.bin_edges[:-1] + cal.bin_edges[1:]) / 2
    width = cal.bin_edges[1] - cal.bin_edges[0]
    ok = cal.bin_count > 0
    ax.bar(centres[ok], cal.bin_accuracy[ok], width=width * 0.92, color="#2458a6", label=ylabel)
    ax.bar(
        centres[ok],
        cal.bin_confidence[ok] - cal.bin_accuracy[ok],
        bottom=cal.bin_accuracy[ok],
        width=width * 0.92,
        facecolor="none",
        edgecolor="#d9534f",
        hatch="////",
        linewidth=0.8,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], color="#333", linewidth=1, linestyle="--", label="perfect calibration")
    # Each bin's image count above it: a bar of three images says little.
    tops = np.maximum(cal.bin_accuracy[ok], cal.bin_confidence[ok])
    for x, top, count in zip(centres[ok], tops, cal.bin_count[ok], strict=True):
        ax.text(x, min(top + 0.015, 1.0), str(int(count)), ha="center", va="bottom", fontsize=5.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.06)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Reliability diagram (ECE {cal.ece:.3f})")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    return figure_to_picture(fig)


def confusion_figure(cm: np.ndarray, names: list[str]) -> Picture:
    n = cm.shape[0]
    size = float(np.clip(0.32 * n + 2.2, 3.5, 9.0))
    fig = new_figure(size + 0.8, size)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=[s[:14] for s in names], rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=[s[:14] for s in names], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "#1d232b",
                    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_title("Confusion matrix (rows normalised)")
    return figure_to_picture(fig)


class AuditAnalysis(Analysis[AuditParams]):
    name = "audit"
    title = "Audit checks: errors, calibration, label issues, duplicates"
    Params = AuditParams
    metrics = (
        Metric("near_duplicate_pairs", "near-duplicate image pairs", kind="count"),
        Metric("mean_confidence", "mean confidence"),
        Metric("ece", "expected calibration error"),
        Metric("possible_label_errors", "possible label errors", kind="count"),
    )
    order = 90

    def run(self, ctx: AnalysisContext, p: AuditParams) -> Result:
        section = self.section(HOW_TO_READ)
        metrics: dict[str, Any] = {}
        res = ctx.pass_result
        checks: list[list[Any]] = []
        shown: dict[str, list[tuple[int, str]]] = {}
        dups = near_duplicates(res.pixels, p.duplicate_threshold)
        conflicts = (
            [d for d in dups if ctx.label_text(d[0]) != ctx.label_text(d[1])]
            if ctx.folder.labelled
            else []
        )
        metrics["near_duplicate_pairs"] = len(dups)
        if ctx.head.single_label:
            self._single_label(ctx, p, section, metrics, checks, shown)
        else:
            metrics.update(
                multilabel_audit(
                    ctx,
                    section,
                    checks,
                    shown,
                    bins=p.bins,
                    k=p.k,
                    ece_warn=p.ece_warn,
                    reliability=reliability_figure,
                )
            )
        checks.append(
            [
                "near-duplicate image pairs",
                str(len(dups)),
                "warn" if conflicts else ("note" if dups else "ok"),
                f"{len(conflicts)} with different labels"
                if ctx.folder.labelled
                else f"RMS pixel difference < {p.duplicate_threshold:g}",
            ]
        )
        section.blocks.insert(
            0, Table(caption="Checks", columns=["check", "value", "status", "detail"], rows=checks)
        )
        shown["Near-duplicate pairs"] = [
            (i, f"≈ {ctx.relpath(j)} (RMS {d:.3f})") for i, j, d in dups[: p.show]
        ]
        shown = {title: items[: p.show] for title, items in shown.items()}
        wanted = sorted({i for items in shown.values() for i, _ in items})
        if wanted:
            images = dict(zip(wanted, ctx.display_images(wanted, p.thumb_size), strict=True))
            for title, items in shown.items():
                if not items:
                    continue
                row: list[Any] = [
                    Thumb(Picture(images[i], kind="photo"), label=text, alt=ctx.relpath(i))
                    for i, text in items
                ]
                section.add(
                    Table(caption=title, columns=[f"#{k + 1}" for k in range(len(row))], rows=[row])
                )
        return Result(section, metrics=metrics)

    def _single_label(
        self,
        ctx: AnalysisContext,
        p: AuditParams,
        section: Section,
        metrics: dict[str, Any],
        checks: list[list[Any]],
        shown: dict[str, list[tuple[int, str]]],
    ) -> None:
        """Multiclass and binary: calibration, confusions, per class, label errors, mistakes
        (binary adds its curves and threshold table)."""
        res = ctx.pass_result
        n_classes = res.num_classes
        binary = ctx.head.task == "binary"
        confidence = res.confidence()
        preds = res.predictions
        labels = res.labels.to(preds.device)
        known = res.scored().to(preds.device)  # non-finite outputs have nothing to score
        if not ctx.labels_are_model_classes:
            known = torch.zeros_like(known)  # folder positions are not model classes
        metrics["mean_confidence"] = float(confidence.mean())
        top_share = float(torch.bincount(preds.cpu(), minlength=n_classes).max()) / len(res)
        expected_top = (
            float(torch.bincount(labels[known].cpu(), minlength=n_classes).max())
            / max(1, int(known.sum()))
            if bool(known.any())
            else None
        )
        labelled = (labels >= 0) & (labels < n_classes)
        if not bool(known.any()) and bool(labelled.any()) and ctx.labels_are_model_classes:
            checks.append(
                [
                    "calibration (ECE)",
                    "n/a (non-finite logits)",
                    "warn",
                    f"none of the {int(labelled.sum())} labelled images has finite outputs",
                ]
            )
        if bool(known.any()):
            y, yhat, conf = labels[known], preds[known], confidence[known]
            correct = yhat == y
            if binary:
                cal, truth, prob = binary_calibration(ctx, known, p.bins)
                mean_text = (
                    f"mean p {float(prob.mean()):.3f} vs positive share {float(truth.mean()):.3f}"
                )
            else:
                cal = methods.calibration.calibration(conf, correct, p.bins)
                mean_text = (
                    f"mean confidence {float(conf.mean()):.3f} vs accuracy "
                    f"{float(correct.float().mean()):.3f}"
                )
            metrics["ece"] = cal.ece
            cm = confusion_matrix(y, yhat, n_classes)
            present = sorted(set(y.cpu().tolist()) | set(yhat.cpu().tolist()))
            names = [ctx.class_name(c) for c in present]
            cm_small = cm[np.ix_(present, present)]
            counts = cm.sum(axis=1)
            min_count = int(counts[counts > 0].min())
            max_count = int(counts.max())
            checks.append(
                [
                    "calibration (ECE)",
                    f"{cal.ece:.3f}" if np.isfinite(cal.ece) else "n/a (non-finite logits)",
                    # NaN compares False with anything: only a finite, small ECE is "ok".
                    "ok" if cal.ece <= p.ece_warn else "warn",
                    mean_text,
                ]
            )
            checks.append(
                [
                    "class balance (largest / smallest class)",
                    f"{max_count / max(1, min_count):.2f}",
                    "warn" if max_count > 3 * min_count else "ok",
                    f"{min_count}–{max_count} images per class",
                ]
            )
            # Neighbours need features and at least two labelled images: otherwise the check
            # is not made, and says so (never "0 possible label errors: ok").
            why_not = (
                "needs penultimate features (not available for this model)"
                if res.features is None
                else "needs at least two labelled images to have neighbours"
                if int(known.sum()) < 2
                else None
            )
            suspects, majority, share = (
                suspect_labels(res.features, res.labels, preds, min(p.k, len(res) - 1))
                if why_not is None and res.features is not None
                else ([], [], [])
            )
            metrics["possible_label_errors"] = None if why_not else len(suspects)
            checks.append(
                [
                    "possible label errors",
                    "n/a" if why_not else str(len(suspects)),
                    "n/a" if why_not else "warn" if suspects else "ok",
                    why_not
                    or "label disagrees with the prediction and with most feature-space neighbours",
                ]
            )
            mistakes = (~correct).nonzero().flatten()
            order = torch.argsort(conf[mistakes], descending=True, stable=True)
            known_pos = known.nonzero().flatten()
            worst = known_pos[mistakes[order]][: p.show].cpu().tolist()
            shown["Most confident mistakes"] = [
                (
                    i,
                    f"{ctx.class_name(ctx.label(i))} → {ctx.class_name(int(preds[i]))} ({float(confidence[i]):.2f})",
                )
                for i in worst
            ]
            shown["Possible label errors"] = [
                (
                    i,
                    f"label {ctx.class_name(ctx.label(i))}; neighbours say {ctx.class_name(m)} ({100 * s:.0f} %)",
                )
                for i, m, s in zip(suspects[: p.show], majority, share, strict=False)
            ]
            per_class: list[list[Any]] = []
            for c in present:
                row_total = int(cm[c].sum())
                col_total = int(cm[:, c].sum())
                off = cm[c].copy()
                off[c] = 0
                confused = int(off.argmax()) if off.sum() else None
                per_class.append(
                    [
                        ctx.class_name(c),
                        row_total,
                        None if row_total == 0 else float(cm[c, c] / row_total),
                        None if col_total == 0 else float(cm[c, c] / col_total),
                        "—"
                        if confused is None
                        else f"{ctx.class_name(confused)} ({int(off[confused])})",
                    ]
                )
            if binary:
                scores = res.task_scores()
                if isinstance(scores, BinaryScores):
                    binary_blocks(section, truth, prob, scores)
            section.add(
                Figure(
                    reliability_figure(
                        cal,
                        "p (predicted probability of the positive class)",
                        "share of positives",
                    )
                    if binary
                    else reliability_figure(cal),
                    caption=f"Calibration over {int(known.sum())} labelled images in {p.bins} "
                    + ("bins of p" if binary else "confidence bins")
                    + "; above each bar, its number of images.",
                    alt="Reliability diagram",
                )
            )
            if len(present) <= 40:
                section.add(
                    Figure(
                        confusion_figure(cm_small, names),
                        caption="Confusion matrix: each row is a true class, normalised to 1; off-diagonal cells are confusions.",
                        alt="Confusion matrix",
                    )
                )
            section.add(
                Table(
                    caption="Per class: recall (accuracy on the class), precision, and the class it is most often mistaken for",
                    columns=["class", "images", "recall", "precision", "most confused with"],
                    rows=per_class,
                )
            )
        else:
            section.add(
                Text(
                    "The images are unlabelled: checks that need labels (accuracy, calibration, label errors) are left out."
                    if ctx.labels_are_model_classes
                    else "The class folders cannot be the model's classes (see the warnings at the top): checks that compare labels with predictions (calibration, confusions, label errors) are left out.",
                    kind="note",
                )
            )
        checks.append(
            [
                "predictions collapse (share of the most predicted class)",
                f"{top_share:.2f}",
                "warn"
                if top_share > max(0.5, 2 * (expected_top or 1.0 / max(1, n_classes)))
                else "ok",
                f"expected about {expected_top:.2f} from the labels"
                if expected_top is not None
                else "a share near 1 means the model predicts one class",
            ]
        )
