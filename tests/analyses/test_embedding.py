"""PCA, t-SNE and the image grid against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, make_context, write_image_folder

from reportgen.analyses.common import TSNE_MAP
from reportgen.analyses.embedding import (
    EmbeddingAnalysis,
    EmbeddingParams,
    grid_assignment,
    pca_project,
    run_tsne,
)
from reportgen.contract import SkipSection
from reportgen.report.section import Figure, Table


def test_pca_matches_svd_projection() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    got = pca_project(x, 2, seed=0)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    for i in range(2):  # components are defined up to sign
        assert min(np.abs(got[:, i] - ref[:, i]).max(), np.abs(got[:, i] + ref[:, i]).max()) < 1e-8


@pytest.mark.parametrize("backend", ["sklearn", "opentsne"])
def test_tsne_separates_clusters_and_is_seeded(backend: str) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=20, size=(3, 10))
    x = np.concatenate([c + rng.normal(size=(40, 10)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), 40)
    params = EmbeddingParams(backend=backend, perplexity=15)  # type: ignore[arg-type]
    a, _ = run_tsne(x, params, seed=3)
    b, _ = run_tsne(x, params, seed=3)
    np.testing.assert_array_equal(a, b)
    # Each point's nearest 2-D neighbour has its cluster's label.
    d = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() == 1.0


def test_grid_assignment_has_no_overlaps_and_keeps_layout() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(size=(36, 2))  # one point per cell
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pts[:4] = corners * 10 - 5  # extremes of the map
    pts[4:] = pts[4:] * 8 - 4
    placed = grid_assignment(pts, grid=6, seed=0)
    cells = [(r, c) for _, r, c in placed]
    assert len(cells) == 36 and len(set(cells)) == 36  # every cell once
    assert len({i for i, _, _ in placed}) == 36  # every image once
    where = {i: (r, c) for i, r, c in placed}
    # Corners of the map land in the grid's corners (rows run top to bottom: y is flipped).
    assert where.get(0) == (5, 0)
    assert where.get(1) == (5, 5)
    assert where.get(2) == (0, 0)
    assert where.get(3) == (0, 5)


def test_grid_with_fewer_points_than_cells() -> None:
    pts = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    placed = grid_assignment(pts, grid=3, seed=0)
    assert sorted(i for i, _, _ in placed) == [0, 1, 2]
    assert len({(r, c) for _, r, c in placed}) == 3


def test_section_records_trustworthiness_and_tsne_array(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 8, "b": 8, "c": 8})
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    result = EmbeddingAnalysis().run(ctx, EmbeddingParams(perplexity=5))
    section = result.section
    assert section.status == "ok"
    trust = result.metrics["tsne_trustworthiness"]
    assert isinstance(trust, float) and 0.5 < trust <= 1.0
    assert result.arrays["tsne"].shape == (24, 2)
    assert ctx.shared_array(TSNE_MAP) is result.arrays["tsne"]  # for the slices section's map
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    assert len(figures) == 2  # scatter + image map
    grid = int(np.ceil(np.sqrt(24)))
    tile = 32 + 1
    assert figures[1].picture.pixels.shape[:2] == (grid * tile + 1, grid * tile + 1)
    assert any(isinstance(b, Table) for b in section.blocks)


def test_too_few_images_is_skipped(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 2, "b": 2})
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    with pytest.raises(SkipSection, match="at least 5"):
        EmbeddingAnalysis().run(ctx, EmbeddingParams())
