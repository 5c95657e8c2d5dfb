"""Comparing binary and multi-label models: AUROC changes with DeLong's test, flips at the
threshold, per-label flips and AUROC deltas, all against hand counts and scikit-learn."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reportgen.compare.metrics import build_compare, compare_summary
from reportgen.compare.present import compare_section
from reportgen.heads import MULTICLASS, Head
from reportgen.methods.calibration import calibration
from reportgen.methods.scores import delong
from reportgen.report.predictions import PredictionSet, prediction_set
from reportgen.report.section import Table

RNG = np.random.default_rng(7)
N = 120
PATHS = [f"img/{i:03d}.png" for i in range(N)]
SHAS = [hashlib.sha256(p.encode()).hexdigest() for p in PATHS]


def _binary_sets() -> tuple[PredictionSet, PredictionSet, np.ndarray]:
    y = RNG.integers(0, 2, N)
    z_old = (2.0 * y - 1) + RNG.normal(0, 1.5, N)
    z_new = (2.5 * y - 1.2) + RNG.normal(0, 1.2, N)
    head = Head("binary")
    names = ["no", "yes"]
    old = prediction_set(PATHS, SHAS, y, names, z_old[:, None], head=head)
    new = prediction_set(PATHS, SHAS, y, names, z_new[:, None], head=head)
    return old, new, y


def test_binary_comparison_flips_at_the_threshold_and_tests_the_auroc_change() -> None:
    old, new, y = _binary_sets()
    r = build_compare(old, new, seed=1)
    s = compare_summary(r)
    right_old = (old.p_positive >= 0.5) == y  # type: ignore[operator]
    right_new = (new.p_positive >= 0.5) == y  # type: ignore[operator]
    assert s["negative_flips"] == int((right_old & ~right_new).sum())
    assert s["positive_flips"] == int((~right_old & right_new).sum())
    assert s["auroc_baseline"] == pytest.approx(roc_auc_score(y, old.p_positive))
    assert s["auroc"] == pytest.approx(roc_auc_score(y, new.p_positive))
    test = delong(y, old.p_positive, new.p_positive)  # type: ignore[arg-type]
    assert test is not None and s["auroc_delta_p"] == pytest.approx(test.p)
    assert s["auroc_delta"] == pytest.approx(s["auroc"] - s["auroc_baseline"])
    assert s["auroc_test"] == "DeLong" and s["task"] == "binary"
    # ECE of p against the labels, as the audit computes it
    want = calibration(torch.from_numpy(new.p_positive.copy()), torch.from_numpy(y == 1), 15).ece  # type: ignore[union-attr]
    assert s["ece"] == pytest.approx(want)
    rows = [row for b in compare_section(r).blocks if isinstance(b, Table) for row in b.rows]
    assert any(str(row[0]).startswith("AUROC (DeLong") for row in rows)


def test_a_two_output_baseline_of_a_binary_model_is_compared_on_the_same_classes() -> None:
    """The same classifier written as softmax over two logits and as one sigmoid logit: nothing
    changed, so no flip and an AUROC delta of 0."""
    y = RNG.integers(0, 2, N)
    z2 = np.stack([np.zeros(N), (2.0 * y - 1) + RNG.normal(0, 1, N)], axis=1)
    names = ["no", "yes"]
    old = prediction_set(PATHS, SHAS, y, names, z2, head=MULTICLASS)
    new = prediction_set(PATHS, SHAS, y, names, z2[:, 1:] - z2[:, :1], head=Head("binary"))
    s = compare_summary(build_compare(old, new))
    assert s["negative_flips"] == 0 and s["positive_flips"] == 0
    assert s["auroc_delta"] == pytest.approx(0.0, abs=1e-12)


def _multilabel_sets() -> tuple[PredictionSet, PredictionSet, np.ndarray]:
    k = 4
    truth = RNG.random((N, k)) < [0.5, 0.2, 0.4, 0.1]
    z_old = np.where(truth, 1.0, -1.0) + RNG.normal(0, 1.4, (N, k))
    z_new = np.where(truth, 1.0, -1.0) + RNG.normal(0, 1.4, (N, k))
    z_new[:, 1] = RNG.normal(0, 1, N)  # the new model forgot label 1
    sets = truth.astype(np.int8)
    sets[-5:] = -1  # five unlabelled images
    head = Head("multilabel")
    names = ["a", "b", "c", "d"]
    old = prediction_set(PATHS, SHAS, [-1] * N, names, z_old, head=head, label_sets=sets)
    new = prediction_set(PATHS, SHAS, [-1] * N, names, z_new, head=head, label_sets=sets)
    return old, new, truth


def test_multilabel_comparison_is_about_sets_and_names_the_label_that_lost() -> None:
    old, new, truth = _multilabel_sets()
    r = build_compare(old, new, seed=2)
    s = compare_summary(r)
    scored = np.arange(N) < N - 5
    right_old = (old.predicted_sets == truth).all(axis=1)  # type: ignore[union-attr]
    right_new = (new.predicted_sets == truth).all(axis=1)  # type: ignore[union-attr]
    assert s["labelled_images"] == N - 5
    assert s["accuracy_baseline"] == pytest.approx(right_old[scored].mean())
    assert s["accuracy"] == pytest.approx(right_new[scored].mean())
    assert s["negative_flips"] == int((right_old & ~right_new & scored).sum())
    labels = {row["label"]: row for row in s["labels"]}
    assert s["labels"][0]["label"] == "b"  # the largest AUROC loss first
    for j, name in enumerate(["a", "b", "c", "d"]):
        y = truth[scored, j]
        assert labels[name]["auroc"] == pytest.approx(
            roc_auc_score(y, new.probabilities[scored, j])
        )  # type: ignore[index]
        decided_old = old.predicted_sets[scored, j] == y  # type: ignore[index]
        decided_new = new.predicted_sets[scored, j] == y  # type: ignore[index]
        assert labels[name]["negative_flips"] == int((decided_old & ~decided_new).sum())
        assert labels[name]["positive_flips"] == int((~decided_old & decided_new).sum())
    assert s["worst_label_auroc_delta"] == pytest.approx(labels["b"]["auroc_delta"])
    assert s["worst_label_auroc_delta"] < -0.2
    section = compare_section(r)
    captions = [b.caption for b in section.blocks if isinstance(b, Table)]
    assert any("Which label did this change hurt?" in c for c in captions)
    assert any(c.startswith("Per label") for c in captions)


def test_a_multilabel_and_a_single_label_model_are_not_compared() -> None:
    old, _, y = _binary_sets()
    _, new, _ = _multilabel_sets()
    with pytest.raises(ValueError, match="multi-label"):
        build_compare(old, new)
    assert y.size
