"""Scores of binary and multi-label predictions: NumPy in, numbers out (no torch).

The definitions are scikit-learn's, written out so that the report can say how each number was
made and the tests can check them against scikit-learn:

* AUROC (area under the ROC curve) by the Mann–Whitney statistic with mid-ranks (ties count ½),
  equal to ``sklearn.metrics.roc_auc_score``; None when only one class is present.
* Average precision ``Σₙ (Rₙ − Rₙ₋₁) Pₙ`` over the distinct scores in descending order, equal to
  ``average_precision_score``; None without a positive.
* F1, sensitivity (recall of the positive class), specificity, precision at a threshold; None
  where the ratio is 0/0 (scikit-learn would warn and write 0).
* Multi-label: exact-match ratio (``accuracy_score`` on label sets), Hamming loss, micro F1 over
  every (image, label) decision, per-label AUROC/AP/F1/support, macro averages over the labels
  where a value is defined (the number left out is recorded).
* DeLong's test (DeLong et al. 1988, with Sun & Xu's mid-rank algorithm, 2014) for the
  difference of two correlated AUROCs on the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the binary ``truth`` (1 positive); None with one class only."""
    y = np.asarray(truth).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = midranks(scores)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _descending_steps(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct score, highest first."""
    y = np.asarray(truth).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, yy = np.asarray(scores, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as scikit-learn sums it; None without positives."""
    y = np.asarray(truth).astype(bool)
    positives = int(y.sum())
    if positives == 0 or len(y) == 0:
        return None
    tp, fp = _descending_steps(y, scores)
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) through every distinct score."""
    y = np.asarray(truth).astype(bool)
    tp, fp = _descending_steps(y, scores)
    pos, neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def pr_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct score, highest score first."""
    y = np.asarray(truth).astype(bool)
    tp, fp = _descending_steps(y, scores)
    return tp / max(1, int(y.sum())), tp / np.maximum(tp + fp, 1)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Counts:
    """A binary decision's confusion counts and the rates made from them."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray) -> Counts:
        y = np.asarray(truth).astype(bool)
        p = np.asarray(predicted).astype(bool)
        return cls(
            int((y & p).sum()), int((~y & p).sum()), int((~y & ~p).sum()), int((y & ~p).sum())
        )

    @property
    def sensitivity(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The probability thresholds of the binary threshold table (the configured one is added)."""


@dataclass(frozen=True)
class BinaryScores:
    """A binary model's scores on its labelled images (probability of the positive class)."""

    n: int
    positives: int
    threshold: float
    auroc: float | None
    average_precision: float | None
    counts: Counts
    """At the configured threshold."""
    table: list[tuple[float, Counts]]
    """(threshold, counts) for :data:`THRESHOLDS` and the configured threshold, ascending."""

    def metrics(self) -> dict[str, float | None]:
        """The gate-able metrics summary.json records for a binary model."""
        return {
            "auroc": self.auroc,
            "average_precision": self.average_precision,
            "f1": self.counts.f1,
            "sensitivity": self.counts.sensitivity,
            "specificity": self.counts.specificity,
        }


def binary_scores(truth: np.ndarray, p_positive: np.ndarray, threshold: float) -> BinaryScores:
    """Scores of ``p_positive`` against ``truth`` (0/1); predictions are ``p ≥ threshold``
    (pass the head's predictions through ``p`` only: the table re-thresholds ``p``)."""
    y = np.asarray(truth).astype(bool)
    p = np.asarray(p_positive, dtype=np.float64)
    cuts = sorted({*THRESHOLDS, float(threshold)})
    return BinaryScores(
        n=len(y),
        positives=int(y.sum()),
        threshold=float(threshold),
        auroc=roc_auc(y, p),
        average_precision=average_precision(y, p),
        counts=Counts.of(y, p >= threshold),
        table=[(t, Counts.of(y, p >= t)) for t in cuts],
    )


@dataclass(frozen=True)
class LabelScores:
    """One label of a multi-label model."""

    index: int
    support: int
    """Images that have the label."""
    predicted: int
    """Images predicted to have it."""
    auroc: float | None
    average_precision: float | None
    counts: Counts


@dataclass(frozen=True)
class MultilabelScores:
    """A multi-label model's scores on its labelled images (N×K truth and probabilities)."""

    n: int
    labels: list[LabelScores]
    exact_match: float | None
    hamming_loss: float | None
    micro: Counts
    macro_auroc: float | None
    macro_auroc_labels: int
    """Labels with both classes present (the rest have no AUROC and are left out of the mean)."""
    macro_average_precision: float | None
    macro_f1: float | None
    co_occurrence: np.ndarray = field(repr=False)
    """K×K images having both labels (the diagonal: each label's support)."""

    @property
    def worst_label_auroc(self) -> float | None:
        values = [s.auroc for s in self.labels if s.auroc is not None]
        return min(values) if values else None

    def metrics(self) -> dict[str, float | None]:
        """The gate-able metrics summary.json records for a multi-label model."""
        return {
            "macro_auroc": self.macro_auroc,
            "micro_f1": self.micro.f1,
            "exact_match": self.exact_match,
            "hamming_loss": self.hamming_loss,
            "worst_label_auroc": self.worst_label_auroc,
        }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def multilabel_scores(
    truth: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray
) -> MultilabelScores:
    """Scores of N×K ``probabilities`` (and the N×K ``predicted`` sets) against N×K ``truth``."""
    y = np.asarray(truth).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    d = np.asarray(predicted).astype(bool)
    n, k = y.shape
    labels = [
        LabelScores(
            index=j,
            support=int(y[:, j].sum()),
            predicted=int(d[:, j].sum()),
            auroc=roc_auc(y[:, j], p[:, j]),
            average_precision=average_precision(y[:, j], p[:, j]),
            counts=Counts.of(y[:, j], d[:, j]),
        )
        for j in range(k)
    ]
    micro = Counts(0, 0, 0, 0)
    for s in labels:
        micro = micro + s.counts
    aucs = [s.auroc for s in labels]
    yi = y.astype(np.int64)
    return MultilabelScores(
        n=n,
        labels=labels,
        exact_match=float((y == d).all(axis=1).mean()) if n else None,
        hamming_loss=float((y != d).mean()) if n and k else None,
        micro=micro,
        macro_auroc=_mean(aucs),
        macro_auroc_labels=sum(a is not None for a in aucs),
        macro_average_precision=_mean([s.average_precision for s in labels]),
        macro_f1=_mean([s.counts.f1 for s in labels]),
        co_occurrence=yi.T @ yi,
    )


# --------------------------------------------------------------------------- DeLong


@dataclass(frozen=True)
class PairedAuc:
    """Two models' AUROCs on the same images and DeLong's test of their difference."""

    auc_old: float
    auc_new: float
    delta: float
    ci95: tuple[float, float] | None
    p: float | None
    """Two-sided; None when the difference has no variance (identical rankings)."""

    def record(self) -> dict[str, Any]:
        return {
            "auroc_baseline": self.auc_old,
            "auroc": self.auc_new,
            "auroc_delta": self.delta,
            "auroc_delta_ci95": None if self.ci95 is None else list(self.ci95),
            "auroc_delta_p": self.p,
            "auroc_test": "DeLong",
        }


def _structural(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (V10 per positive, V01 per negative) by mid-ranks."""
    pos, neg = scores[y], scores[~y]
    m, n = len(pos), len(neg)
    all_ranks = midranks(np.r_[pos, neg])
    v10 = (all_ranks[:m] - midranks(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - midranks(neg)) / m
    return v10, v01


def delong(truth: np.ndarray, old: np.ndarray, new: np.ndarray) -> PairedAuc | None:
    """DeLong's test of AUROC(new) − AUROC(old) on the same images; None with one class only
    or fewer than two images of either class."""
    y = np.asarray(truth).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return None
    parts = [_structural(y, np.asarray(s, dtype=np.float64)) for s in (old, new)]
    v10 = np.stack([p[0] for p in parts])
    v01 = np.stack([p[1] for p in parts])
    aucs = v10.mean(axis=1)
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    delta = float(aucs[1] - aucs[0])
    if not var > 1e-18:
        return PairedAuc(float(aucs[0]), float(aucs[1]), delta, (delta, delta), None)
    sd = math.sqrt(var)
    z = delta / sd
    p = math.erfc(abs(z) / math.sqrt(2.0))
    return PairedAuc(float(aucs[0]), float(aucs[1]), delta, (delta - Z95 * sd, delta + Z95 * sd), p)
