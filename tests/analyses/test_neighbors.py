"""Neighbours and k-NN agreement against scikit-learn's brute-force NearestNeighbors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, make_context, write_image_folder
from sklearn.neighbors import NearestNeighbors

from reportgen.analyses.neighbors import NeighborsAnalysis, NeighborsParams, pixel_vectors
from reportgen.report.section import Table, Text, Thumb


def _reference_agreement(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    _, idx = nn.kneighbors(x)
    # Drop each point itself (first column when there are no exact duplicates).
    neigh = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    return float((labels[neigh] == labels[:, None]).mean())


def test_agreement_and_neighbours_match_brute_force(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 7, "b": 7, "c": 7})
    ctx = make_context(
        make_config(tmp_path, {"model.weights": str(tiny_weights), "data.queries": 4})
    )
    result = NeighborsAnalysis().run(ctx, NeighborsParams(k=3))
    section = result.section
    assert section.status == "ok"
    feats = ctx.pass_result.features.numpy().astype(np.float64)
    pix = pixel_vectors(ctx.pass_result.pixels).numpy().astype(np.float64)
    labels = ctx.pass_result.labels.numpy()
    assert result.metrics["knn_agreement_feature"] == pytest.approx(
        _reference_agreement(feats, labels, 3), abs=1e-6
    )
    assert result.metrics["knn_agreement_pixel"] == pytest.approx(
        _reference_agreement(pix, labels, 3), abs=1e-6
    )

    table = next(b for b in section.blocks if isinstance(b, Table))
    assert len(table.rows) == 4 and len(table.columns) == 1 + 3 + 3
    nn = NearestNeighbors(n_neighbors=4, algorithm="brute").fit(feats)
    for q, row in zip(ctx.queries, table.rows, strict=True):
        assert all(isinstance(c, Thumb) for c in row)
        assert row[0].alt == ctx.relpath(q)
        dist, idx = nn.kneighbors(feats[q : q + 1])
        expected = [ctx.relpath(int(j)) for j in idx[0] if j != q][:3]
        assert [c.alt for c in row[1:4]] == expected
        # The distance printed under each neighbour is the euclidean distance.
        shown = [float(c.label.rsplit("· ", 1)[1]) for c in row[1:4]]
        np.testing.assert_allclose(
            shown, [d for d, j in zip(dist[0], idx[0], strict=True) if j != q][:3], rtol=5e-3
        )  # printed with 3 significant digits


def test_unlabelled_folder_has_no_agreement(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", flat=True)
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    assert not ctx.folder.labelled
    result = NeighborsAnalysis().run(ctx, NeighborsParams(k=3))
    section = result.section
    assert result.metrics["knn_agreement_feature"] is None
    assert result.metrics["knn_agreement_pixel"] is None
    assert any(isinstance(b, Text) and "unlabelled" in b.text for b in section.blocks)
