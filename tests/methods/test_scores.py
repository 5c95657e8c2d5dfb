"""Binary and multi-label scores against scikit-learn, DeLong's test against a hand-written
O(n²) version of its definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from reportgen.methods import scores


def _binary(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.random(n) * 0.7, 0, 1)
    return y, np.round(p, 2)  # rounded: ties, as real probabilities have


@pytest.mark.parametrize("seed", range(12))
def test_binary_scores_equal_scikit_learn(seed: int) -> None:
    y, p = _binary(seed)
    got = scores.binary_scores(y, p, 0.5)
    pred = p >= 0.5
    assert got.auroc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got.average_precision == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert got.counts.f1 == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert got.counts.sensitivity == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert got.counts.specificity == pytest.approx(recall_score(1 - y, ~pred), abs=1e-12)
    assert got.counts.precision == pytest.approx(precision_score(y, pred), abs=1e-12)
    for t, counts in got.table:
        assert counts.tp + counts.fp == int((p >= t).sum())
    assert [t for t, _ in got.table] == sorted({*scores.THRESHOLDS, 0.5})


def test_undefined_scores_are_none_not_zero() -> None:
    assert scores.roc_auc(np.ones(5), np.linspace(0, 1, 5)) is None
    assert scores.average_precision(np.zeros(5), np.linspace(0, 1, 5)) is None
    c = scores.Counts.of(np.zeros(4, bool), np.zeros(4, bool))
    assert c.f1 is None and c.sensitivity is None and c.precision is None
    assert c.specificity == 1.0


def _multilabel(seed: int, n: int = 60, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random((n, k)) < np.array([0.5, 0.3, 0.1, 0.6])[:k]
    p = np.clip(0.4 * y + rng.random((n, k)) * 0.6, 0, 1).round(2)
    return y, p


@pytest.mark.parametrize("seed", range(6))
def test_multilabel_scores_equal_scikit_learn(seed: int) -> None:
    y, p = _multilabel(seed)
    pred = p >= 0.5
    got = scores.multilabel_scores(y, p, pred)
    assert got.exact_match == pytest.approx(accuracy_score(y, pred))
    assert got.hamming_loss == pytest.approx(hamming_loss(y, pred))
    assert got.micro.f1 == pytest.approx(f1_score(y, pred, average="micro"))
    assert got.macro_auroc == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert got.macro_average_precision == pytest.approx(
        average_precision_score(y, p, average="macro")
    )
    per_label = roc_auc_score(y, p, average=None)
    assert [s.auroc for s in got.labels] == pytest.approx(list(per_label))
    assert got.worst_label_auroc == pytest.approx(per_label.min())
    assert [s.counts.f1 for s in got.labels] == pytest.approx(list(f1_score(y, pred, average=None)))
    assert [s.support for s in got.labels] == y.sum(axis=0).tolist()
    np.testing.assert_array_equal(got.co_occurrence, y.astype(int).T @ y.astype(int))


def test_a_label_present_everywhere_is_left_out_of_the_macro_auroc_and_counted() -> None:
    y, p = _multilabel(0)
    y[:, 1] = True
    got = scores.multilabel_scores(y, p, p >= 0.5)
    assert got.labels[1].auroc is None and got.macro_auroc_labels == 3
    keep = [0, 2, 3]
    assert got.macro_auroc == pytest.approx(roc_auc_score(y[:, keep], p[:, keep], average="macro"))


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's statistic straight from its definition: structural components by pairwise ψ."""
    pos, neg = y.astype(bool), ~y.astype(bool)

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, z = s[pos], s[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    va, wa = components(a)
    vb, wb = components(b)
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.stack([va, vb]))
    s01 = np.cov(np.stack([wa, wb]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    delta = vb.mean() - va.mean()
    return delta, 2 * norm.sf(abs(delta) / np.sqrt(var))


@pytest.mark.parametrize("seed", range(8))
def test_delong_equals_its_definition(seed: int) -> None:
    y, a = _binary(seed, 70)
    b = np.clip(a + np.random.default_rng(seed + 100).normal(0, 0.15, 70), 0, 1).round(2)
    got = scores.delong(y, a, b)
    assert got is not None
    delta, p = _delong_by_definition(y, a, b)
    assert got.delta == pytest.approx(delta, abs=1e-12)
    assert got.auc_old == pytest.approx(roc_auc_score(y, a)) and got.auc_new == pytest.approx(
        roc_auc_score(y, b)
    )
    assert got.p == pytest.approx(p, rel=1e-9)
    assert got.ci95 is not None and got.ci95[0] < delta < got.ci95[1]


def test_delong_of_the_same_scores_has_no_variance() -> None:
    y, a = _binary(3)
    got = scores.delong(y, a, a)
    assert got is not None and got.delta == 0 and got.p is None
    assert scores.delong(np.ones(10), a[:10], a[:10]) is None
