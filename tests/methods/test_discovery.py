"""Slice discovery on synthetic features: a planted failing region is found (and joined when
k-means cuts it in pieces), random errors and one hard class flag nothing, the effect-size floor
holds; each piece against an independent computation (brute-force distances, a hand loop, SciPy
Fisher with a hand Holm)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from reportgen.methods.discovery import (
    NoStructure,
    Partition,
    auto_clusters,
    class_mix_accuracy,
    discover,
    over_represented,
    partition,
    touching_groups,
)


def blobs(
    seed: int = 0,
    *,
    per: int = 100,
    classes: int = 10,
    dims: int = 16,
    planted: int = 0,
    planted_error: float = 0.7,
    hard: int | None = None,
    base_error: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, correct, labels, planted mask): one blob per class with ``base_error`` random
    mistakes; ``hard``: that class 30 % wrong; ``planted``: an elongated region far from the
    classes, images of every class, ``planted_error`` of them wrong."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 6.0
    labels = np.repeat(np.arange(classes), per)
    x = centres[labels] + rng.normal(size=(len(labels), dims))
    wrong = rng.random(len(labels)) < base_error
    if hard is not None:
        wrong[labels == hard] = rng.random(per) < 0.3
    mark = np.zeros(len(labels), bool)
    if planted:
        along = np.r_[12.0, np.zeros(dims - 1)]
        pts = rng.normal(size=dims) * 6.0 + rng.uniform(-1, 1, (planted, 1)) * along
        x = np.vstack([x, pts + rng.normal(size=(planted, dims))])
        labels = np.r_[labels, rng.integers(0, classes, planted)]
        wrong = np.r_[wrong, rng.random(planted) < planted_error]
        mark = np.r_[mark, np.ones(planted, bool)]
    return x.astype(np.float32), ~wrong, labels, mark


@pytest.mark.parametrize("seed", [0, 1])
def test_a_planted_failing_region_is_the_one_flagged_slice(seed: int) -> None:
    x, correct, labels, planted = blobs(seed, planted=150)
    d = discover(x, correct, labels, seed=seed)
    assert d.k == auto_clusters(len(correct)) == 23
    flagged = [s for s in d.slices if s.flagged]
    assert len(flagged) == 1 and d.slices[0] is flagged[0]
    top = flagged[0]
    assert len(top.clusters) > 1  # k-means cut the region in pieces; they touch, so one slice
    members = np.zeros(len(correct), bool)
    members[top.members] = True
    assert planted[members].mean() >= 0.9 and planted[members].sum() / planted.sum() >= 0.8
    # Its numbers are its members', and a joined slice carries its clusters' largest Holm p.
    assert top.stats.n == members.sum()
    assert top.stats.accuracy == pytest.approx(correct[members].mean())
    assert top.stats.rest_accuracy == pytest.approx(correct[~members].mean())
    assert np.array_equal(np.flatnonzero(np.isin(d.partition.assign, top.clusters)), top.members)
    # Seeded: the same partition and slices again.
    again = discover(x, correct, labels, seed=seed)
    assert np.array_equal(again.partition.assign, d.partition.assign)
    assert [s.clusters for s in again.slices] == [s.clusters for s in d.slices]


def test_holm_over_the_clusters_against_a_hand_loop() -> None:
    x, correct, labels, _ = blobs(3, planted=150)
    d = discover(x, correct, labels, seed=3, min_size=20)
    assign = d.partition.assign
    p = {}
    for c in range(d.k):
        m = assign == c
        if m.sum() < 20:
            continue
        k, n = int(correct[m].sum()), int(m.sum())
        rk, rn = int(correct[~m].sum()), int((~m).sum())
        p[c] = fisher_exact([[k, n - k], [rk, rn - rk]]).pvalue
    order = sorted(p, key=lambda c: p[c])
    holm, running = {}, 0.0
    for rank, c in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[c]))
        holm[c] = running
    assert d.tested == len(p)
    for s in d.slices:
        if s.p_holm is None:
            assert all(c not in p for c in s.clusters)
        else:
            assert s.p_holm == pytest.approx(max(holm[c] for c in s.clusters), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_mistakes_flag_nothing(seed: int) -> None:
    x, correct, labels, _ = blobs(seed, base_error=0.05)
    d = discover(x, correct, labels, seed=seed)
    assert not any(s.flagged for s in d.slices)


def test_one_hard_class_is_not_a_discovered_slice() -> None:
    """Class 3's clusters are significantly worse than the rest, but no worse than class 3
    elsewhere: the per-class recall's finding, not a slice."""
    x, correct, labels, _ = blobs(0, hard=3)
    d = discover(x, correct, labels, seed=0)
    significant = [s for s in d.slices if s.p_holm is not None and s.p_holm < 0.05]
    assert significant and all(s.classes[0][0] == 3 for s in significant)
    assert not any(s.flagged for s in d.slices)


def test_the_effect_size_floor() -> None:
    """A region 8 % wrong among 2 % (one cluster of eleven): significant, but under the default
    10-point floor; flagged under a 3-point one."""
    x, correct, labels, planted = blobs(0, planted=300, planted_error=0.08)
    d = discover(x, correct, labels, seed=0, clusters=11)
    top = d.slices[0]
    assert np.array_equal(top.members, np.flatnonzero(planted))
    assert top.p_holm is not None and top.p_holm < 0.05
    assert -0.1 < (top.stats.gap or 0) < -0.03 and not any(s.flagged for s in d.slices)
    lower = discover(x, correct, labels, seed=0, clusters=11, min_gap=0.03)
    assert [s.flagged for s in lower.slices] == [True] + [False] * 10


def test_partition_runner_up_against_brute_force_distances() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 5))
    part = partition(z, 7, seed=0)
    d2 = ((z[:, None, :] - part.centres[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1)
    assert np.array_equal(order[:, 0], part.assign)  # k-means: each row at its nearest centre
    assert np.array_equal(order[:, 1], part.runner_up)
    # Clusters are numbered by their first row.
    firsts = [int(np.flatnonzero(part.assign == c)[0]) for c in range(part.k)]
    assert firsts == sorted(firsts) and part.assign[0] == 0
    # Fewer distinct rows than clusters asked for: as many clusters as distinct rows.
    assert partition(np.repeat(z[:3], 10, axis=0), 7, seed=0).k == 3


def test_touching_groups_against_a_hand_count() -> None:
    # Sizes 10, 10, 20, 10. Images whose second-nearest centre is the other cluster, both ways:
    # 0–1: 4 + 2, 0–2: 6, 1–2: 8 + 1, 2–3: 19 + 10; 0 and 1 never border 3.
    assign = np.array([0] * 10 + [1] * 10 + [2] * 20 + [3] * 10)
    runner = np.array([1] * 4 + [2] * 6 + [0] * 2 + [2] * 8 + [1] * 1 + [3] * 19 + [2] * 10)
    part = Partition(assign, runner, np.zeros((4, 2)), 4)
    assert touching_groups(part, [0, 1, 3]) == [[0, 1], [3]]  # 6 ≥ 0.1 × 10; 0 with 3
    assert touching_groups(part, [3, 0, 1, 2]) == [[0, 1, 2, 3]]
    assert touching_groups(part, [0, 3]) == [[0], [3]]
    assert touching_groups(part, [1, 2], share=0.9) == [[1, 2]]  # 9 ≥ 0.9 × 10
    assert touching_groups(part, [1, 2], share=0.95) == [[1], [2]]


def test_class_mix_accuracy_against_a_hand_loop() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    correct = rng.random(200) < 0.8
    mask = rng.random(200) < 0.3
    mask[labels == 3] = True  # class 3 only inside: counts at its own accuracy
    df = pd.DataFrame({"label": labels, "correct": correct, "inside": mask})
    expected = 0.0
    for c, group in df[df.inside].groupby("label"):
        outside = df[~df.inside & (df.label == c)]
        expected += len(group) * (outside.correct.mean() if len(outside) else group.correct.mean())
    assert class_mix_accuracy(mask, correct, labels) == pytest.approx(expected / mask.sum())


def test_over_represented_against_scipy_and_a_hand_holm() -> None:
    rng = np.random.default_rng(2)
    mask = np.zeros(300, bool)
    mask[:60] = True
    site = np.where(mask, rng.choice(["A", "B"], 300, p=[0.1, 0.9]), rng.choice(["A", "B"], 300))
    noise = rng.choice(["x", "y", "z"], 300)
    found = over_represented({"site": site.tolist(), "noise": noise.tolist()}, mask)
    pvals = {}
    for column, values in (("site", site), ("noise", noise)):
        for v in sorted(set(values)):
            a, c = int(((values == v) & mask).sum()), int(((values == v) & ~mask).sum())
            if a:
                pvals[(column, v)] = fisher_exact(
                    [[a, 60 - a], [c, 240 - c]], alternative="greater"
                ).pvalue
    keys = sorted(pvals, key=lambda k: pvals[k])
    holm, running = {}, 0.0
    for rank, key in enumerate(keys):
        running = max(running, min(1.0, (len(keys) - rank) * pvals[key]))
        holm[key] = running
    assert [(o.column, o.value) for o in found] == [("site", "B")]
    assert found[0].p_holm == pytest.approx(holm[("site", "B")])
    assert found[0].share == pytest.approx((site[mask] == "B").mean())
    assert found[0].overall == pytest.approx((site == "B").mean())


def test_features_without_structure_are_refused() -> None:
    correct = np.ones(50, bool)
    labels = np.zeros(50, int)
    with pytest.raises(NoStructure, match="are equal"):
        discover(np.ones((50, 8), np.float32), correct, labels)
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x[3, 2] = np.nan
    with pytest.raises(NoStructure, match="1 of 50 images have non-finite"):
        discover(x, correct, labels)


def test_auto_clusters_follows_the_data_size() -> None:
    assert [auto_clusters(n) for n in (10, 100, 800, 1797, 50_000)] == [2, 2, 16, 35, 64]
