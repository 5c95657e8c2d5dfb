"""Audit checks against scikit-learn and hand-written loops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, make_context, write_image_folder
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from reportgen.analyses.audit import (
    AuditAnalysis,
    AuditParams,
    confusion_matrix,
    near_duplicates,
    suspect_labels,
)
from reportgen.methods.calibration import calibration
from reportgen.report.section import Table


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    got = confusion_matrix(torch.from_numpy(y), torch.from_numpy(p), 4)
    np.testing.assert_array_equal(got, sk_confusion_matrix(y, p, labels=range(4)))


def test_ece_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.1, 1.0, 500)
    conf[:3] = [0.0, 1.0, 0.5]  # bin edges
    correct = rng.uniform(size=500) < conf
    bins = 10
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if m.any():
            ece += abs(correct[m].mean() - conf[m].mean()) * m.sum() / len(conf)
    cal = calibration(torch.from_numpy(conf), torch.from_numpy(correct), bins)
    assert cal.ece == pytest.approx(ece, abs=1e-12)
    assert cal.bin_count.sum() == 500


def test_suspect_label_is_the_mislabelled_point() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0, 0.1, (20, 4))
    b = rng.normal(5, 0.1, (20, 4))
    x = torch.from_numpy(np.concatenate([a, b])).float()
    labels = torch.tensor([0] * 20 + [1] * 20)
    labels[3] = 1  # a point of cluster 0 carries label 1
    preds = torch.tensor([0] * 20 + [1] * 20)
    pos, majority, share = suspect_labels(x, labels, preds, k=5)
    assert pos == [3] and majority == [0] and share == [1.0]
    # A model that agrees with the (wrong) label does not flag it: the evidence is split.
    preds2 = preds.clone()
    preds2[3] = 1
    assert suspect_labels(x, labels, preds2, k=5)[0] == []


def test_near_duplicates_finds_copies_only() -> None:
    rng = np.random.default_rng(3)
    pixels = torch.from_numpy(rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8))
    pixels[7] = pixels[2]
    pixels[9] = pixels[4].clamp(max=250) + 1  # off by one grey level: near-duplicate
    pairs = near_duplicates(pixels, threshold=0.02)
    assert [(i, j) for i, j, _ in pairs] == [(2, 7), (4, 9)]
    assert pairs[0][2] == pytest.approx(0.0, abs=1e-3)


def test_section_flags_cross_class_duplicate(tmp_path: Path, tiny_weights: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 6, "b": 6})
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    result = AuditAnalysis().run(ctx, AuditParams())
    section = result.section
    assert section.status == "ok"
    assert result.metrics["near_duplicate_pairs"] == 1
    checks = section.blocks[0]
    assert isinstance(checks, Table) and checks.caption == "Checks"
    dup_row = next(r for r in checks.rows if r[0] == "near-duplicate image pairs")
    assert dup_row[1:3] == ["1", "warn"] and dup_row[3] == "1 with different labels"
    assert 0.0 <= result.metrics["ece"] <= 1.0
    per_class = next(
        b for b in section.blocks if isinstance(b, Table) and b.caption.startswith("Per class")
    )
    assert [r[1] for r in per_class.rows] == [6, 7]


def test_unlabelled_audit_runs_without_label_checks(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", flat=True)
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    result = AuditAnalysis().run(ctx, AuditParams())
    section = result.section
    assert section.status == "ok"
    assert "ece" not in result.metrics
    names = [r[0] for r in section.blocks[0].rows]  # type: ignore[union-attr]
    assert "calibration (ECE)" not in names and "near-duplicate image pairs" in names
