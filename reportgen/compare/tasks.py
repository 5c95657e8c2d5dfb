"""What changed between two binary or multi-label models: the task-specific numbers of
:func:`reportgen.compare.metrics.build_compare`.

* Binary: both models' AUROC on the same labelled images and DeLong's test of the difference
  (:func:`reportgen.methods.scores.delong`); calibration of p, the positive class' probability.
* Multi-label: "right" is the exact match of the label sets (so accuracy, flips and McNemar are
  about whole sets), and per label both models' AUROC (DeLong), sensitivity, precision and the
  label decisions that flipped, the label that lost most AUROC first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reportgen.methods.calibration import calibration
from reportgen.methods.scores import Counts, PairedAuc, delong, roc_auc
from reportgen.report.predictions import PredictionSet


def positive_probability(ps: PredictionSet) -> np.ndarray | None:
    """p(positive) per row: a binary set's column, or — for a two-class softmax model, which
    predicts the same two classes — 1 − p of the other class where class 0 is predicted."""
    if ps.p_positive is not None:
        return ps.p_positive
    two = ps.single_label and len(ps.class_names) == 2 and ps.predictions.size
    if two and int(ps.predictions.max()) <= 1:
        return np.where(ps.predictions == 1, ps.confidence, 1.0 - ps.confidence)
    return None


def binary_auroc(
    old: PredictionSet, new: PredictionSet, labels: np.ndarray, scored: np.ndarray
) -> PairedAuc | None:
    """Both models' AUROC on the scored images and DeLong's test (None when either set has no
    positive-class probabilities, or one class is missing)."""
    p_old, p_new = positive_probability(old), positive_probability(new)
    if p_old is None or p_new is None or not scored.any():
        return None
    y = labels[scored] == 1
    return delong(y, p_old[scored], p_new[scored])


def binary_ece(
    ps: PredictionSet, labels: np.ndarray, scored: np.ndarray, bins: int
) -> float | None:
    """ECE of p(positive) against the labels (the audit's binary calibration)."""
    p = positive_probability(ps)
    if p is None or not scored.any():
        return None
    y = labels[scored] == 1
    return calibration(
        torch.from_numpy(np.ascontiguousarray(p[scored])), torch.from_numpy(y), bins
    ).ece


def set_correct(ps: PredictionSet, truth: np.ndarray) -> np.ndarray:
    """Per row: the predicted label set equals the true one (``truth``: N×K booleans)."""
    assert ps.predicted_sets is not None
    return np.asarray((ps.predicted_sets == truth).all(axis=1))


def decisions_ece(
    ps: PredictionSet, truth: np.ndarray, scored: np.ndarray, bins: int
) -> float | None:
    """ECE over every (image, label) decision of the scored rows (the audit's multi-label one)."""
    if ps.probabilities is None or not scored.any():
        return None
    p = torch.from_numpy(np.ascontiguousarray(ps.probabilities[scored].ravel()))
    return calibration(p, torch.from_numpy(truth[scored].ravel()), bins).ece


@dataclass(frozen=True)
class LabelDelta:
    """One label under both multi-label models (the new report's label sets as the truth)."""

    index: int
    name: str
    support: int
    """Scored images that have the label."""
    auroc_old: float | None
    auroc_new: float | None
    auroc_p: float | None
    """DeLong's two-sided p of the AUROC difference (None when not testable)."""
    counts_old: Counts
    counts_new: Counts
    negative_flips: int
    """Images whose decision on this label was right before and is wrong now."""
    positive_flips: int

    @property
    def auroc_delta(self) -> float | None:
        if self.auroc_old is None or self.auroc_new is None:
            return None
        return self.auroc_new - self.auroc_old


def label_deltas(
    old: PredictionSet, new: PredictionSet, truth: np.ndarray, scored: np.ndarray
) -> list[LabelDelta]:
    """Per label, both models' scores on the scored images, the largest AUROC loss first."""
    assert old.probabilities is not None and new.probabilities is not None
    assert old.predicted_sets is not None and new.predicted_sets is not None
    y = truth[scored]
    po, pn = old.probabilities[scored], new.probabilities[scored]
    do, dn = old.predicted_sets[scored], new.predicted_sets[scored]
    out = []
    for j in range(y.shape[1]):
        test = delong(y[:, j], po[:, j], pn[:, j])
        right_old, right_new = do[:, j] == y[:, j], dn[:, j] == y[:, j]
        out.append(
            LabelDelta(
                index=j,
                name=new.class_name(j),
                support=int(y[:, j].sum()),
                auroc_old=roc_auc(y[:, j], po[:, j]),
                auroc_new=roc_auc(y[:, j], pn[:, j]),
                auroc_p=None if test is None else test.p,
                counts_old=Counts.of(y[:, j], do[:, j]),
                counts_new=Counts.of(y[:, j], dn[:, j]),
                negative_flips=int((right_old & ~right_new).sum()),
                positive_flips=int((~right_old & right_new).sum()),
            )
        )
    return sorted(
        out,
        key=lambda d: (d.auroc_delta is None, d.auroc_delta or 0.0, -d.negative_flips, d.index),
    )


def macro(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def confidence_of(ps: PredictionSet) -> np.ndarray:
    """How sure the model is of each row's prediction: the predicted class' probability, or
    for label sets the mean over labels of max(p, 1 − p) (what orders the flip galleries)."""
    if ps.single_label or ps.probabilities is None:
        return ps.confidence
    return np.asarray(np.maximum(ps.probabilities, 1 - ps.probabilities).mean(axis=1))


def eces(
    old: PredictionSet,
    new: PredictionSet,
    labels: np.ndarray,
    truth: np.ndarray,
    scored: np.ndarray,
    correct_old: np.ndarray,
    correct_new: np.ndarray,
    bins: int,
) -> tuple[float | None, float | None]:
    """Both models' ECE as their audits compute it: over every label decision (multi-label), of
    p(positive) (binary), of the top class' confidence (multiclass)."""
    if not new.single_label:
        return decisions_ece(old, truth, scored, bins), decisions_ece(new, truth, scored, bins)
    if new.task == "binary":
        return binary_ece(old, labels, scored, bins), binary_ece(new, labels, scored, bins)
    return (
        calibration(
            torch.from_numpy(old.confidence[scored]), torch.from_numpy(correct_old), bins
        ).ece,
        calibration(
            torch.from_numpy(new.confidence[scored]), torch.from_numpy(correct_new), bins
        ).ece,
    )


def task_summary(task: str, auroc: PairedAuc | None, changes: list[LabelDelta]) -> dict[str, Any]:
    """The binary (AUROC, DeLong) and multi-label (macro AUROC, per label) keys of summary.json's
    ``compare``: always present, None where the task has no such number (so every gate key is a
    key of every comparison)."""
    out: dict[str, Any] = {
        "task": task,
        "auroc_baseline": None,
        "auroc": None,
        "auroc_delta": None,
        "auroc_delta_ci95": None,
        "auroc_delta_p": None,
        "auroc_test": "DeLong" if task == "binary" else None,
        "macro_auroc_baseline": None,
        "macro_auroc": None,
        "macro_auroc_delta": None,
        "worst_label_auroc_delta": None,
        "labels": [],
    }
    if task == "binary" and auroc is not None:
        out.update(auroc.record())
    if task == "multilabel":
        old = macro([d.auroc_old for d in changes])
        new = macro([d.auroc_new for d in changes])
        deltas = [d.auroc_delta for d in changes if d.auroc_delta is not None]
        out.update(
            {
                "macro_auroc_baseline": old,
                "macro_auroc": new,
                "macro_auroc_delta": None if old is None or new is None else new - old,
                "worst_label_auroc_delta": min(deltas) if deltas else None,
                "labels": [
                    {
                        "label": d.name,
                        "support": d.support,
                        "auroc_baseline": d.auroc_old,
                        "auroc": d.auroc_new,
                        "auroc_delta": d.auroc_delta,
                        "auroc_delta_p": d.auroc_p,
                        "negative_flips": d.negative_flips,
                        "positive_flips": d.positive_flips,
                    }
                    for d in changes
                ],
            }
        )
    return out
