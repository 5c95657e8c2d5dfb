"""The comparison's numbers, each against an independent computation."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import confusion_matrix, precision_score, recall_score
from sklearn.neighbors import NearestNeighbors

from reportgen.compare.metrics import ExplanationMaps, build_compare, compare_summary
from reportgen.methods.stats import (
    filter_cosine,
    knn_overlap,
    linear_cka,
    mcnemar_exact,
    paired_bootstrap_ci,
)
from reportgen.report.gates import COMPARE_KEYS
from reportgen.report.predictions import PredictionSet, prediction_set

REQUIRED = {
    "accuracy_baseline",
    "accuracy",
    "accuracy_delta",
    "accuracy_delta_ci95",
    "mcnemar_p",
    "negative_flips",
    "positive_flips",
    "negative_flip_rate",
    "positive_flip_rate",
    "ece_delta",
    "matched_images",
    "linear_cka",
    "knn_overlap",
    "explanation_rank_corr",
}


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def preds_set(
    preds: list[int], labels: list[int], conf: list[float] | None = None, k: int = 3
) -> PredictionSet:
    """A set whose arg-max is ``preds`` with the given confidences (probabilities rows)."""
    n = len(preds)
    conf = conf or [0.6] * n
    probs = np.zeros((n, k))
    for i, (p, c) in enumerate(zip(preds, conf, strict=True)):
        probs[i] = (1 - c) / (k - 1)
        probs[i, p] = c
    return prediction_set(
        [f"img{i}.png" for i in range(n)],
        [sha(i) for i in range(n)],
        labels,
        [f"class{j}" for j in range(k)],
        probs,
        probabilities=True,
    )


LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2]
OLD = [0, 0, 1, 1, 1, 2, 2, 0, 2, 0, 0, 1]
NEW = [0, 1, 1, 1, 0, 2, 2, 2, 2, 2, 1, 2]


def test_flips_and_mcnemar_counted_by_hand() -> None:
    # image:      0 1 2 3 4 5 6 7 8 9 10 11
    # old right:  y y n y y n y n y y n  n   -> 7 of 12
    # new right:  y n n y n n y y y n y  y   -> 7 of 12
    # negative flips (old right, new wrong): 1, 4, 9        -> 3
    # positive flips (old wrong, new right): 7, 10, 11      -> 3
    conf_new = [0.5 + 0.04 * i for i in range(12)]
    conf_old = [0.9 - 0.03 * i for i in range(12)]
    r = build_compare(preds_set(OLD, LABELS, conf_old), preds_set(NEW, LABELS, conf_new))
    assert r.flip_meaning == "label"
    assert (r.accuracy_old, r.accuracy_new) == (7 / 12, 7 / 12)
    assert r.accuracy_delta == 0.0
    assert r.negative_flips == 3 and r.positive_flips == 3
    assert r.negative_flip_rate == 3 / 12 and r.positive_flip_rate == 3 / 12
    # Most confident wrong new prediction first: confidences rise with the index.
    assert r.negative_flip_positions.tolist() == [9, 4, 1]
    # Most confident wrong old prediction first: confidences fall with the index.
    assert r.positive_flip_positions.tolist() == [7, 10, 11]
    assert r.changed_predictions == sum(o != n for o, n in zip(OLD, NEW, strict=True))
    # Exact McNemar with b = c = 3: p = 2 * P(X <= 3 | n=6, 1/2) = 2 * 42/64 > 1 -> 1.
    assert r.mcnemar_p == 1.0


def test_discovered_clusters_counted_by_hand() -> None:
    """The new model's failing clusters: both models' accuracy on their images, the flips and
    their exact McNemar p, in the order given; kept apart from the metadata subgroups (chosen
    where the new model fails, they must not drive slices_worst_delta)."""
    d1 = np.array([i in (1, 4, 9, 10) for i in range(12)])  # old right on 1, 4, 9; new on 10
    d2 = np.array([i in (2, 5) for i in range(12)])  # both wrong on both
    r = build_compare(
        preds_set(OLD, LABELS), preds_set(NEW, LABELS), discovered={"D1": d1, "D2": d2}
    )
    assert [(c.value, c.n) for c in r.clusters] == [("D1", 4), ("D2", 2)]
    one, two = r.clusters
    assert (one.accuracy_old, one.accuracy_new) == (3 / 4, 1 / 4)
    assert (one.negative_flips, one.positive_flips) == (3, 1)
    assert one.mcnemar_p == pytest.approx(2 * (1 + 4) / 2**4)  # P(X <= 1 | n=4), both tails
    assert (two.accuracy_old, two.accuracy_new, two.mcnemar_p) == (0.0, 0.0, 1.0)
    summary = compare_summary(r)
    assert summary["slices"] == [] and summary["slices_worst_delta"] is None
    assert [c["id"] for c in summary["discovered_clusters"]] == ["D1", "D2"]
    assert summary["discovered_clusters"][0]["accuracy_delta"] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="cover the 12 images"):
        build_compare(preds_set(OLD, LABELS), preds_set(NEW, LABELS), discovered={"D1": d1[:5]})


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (0, 5), (2, 9), (13, 4), (30, 31), (0, 40)])
def test_mcnemar_exact_matches_the_binomial_sum(b: int, c: int) -> None:
    n = b + c
    expected = (
        1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    )
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_bootstrap_matches_a_slow_loop_with_the_same_seed() -> None:
    rng = np.random.default_rng(5)
    n = 157
    old = rng.random(n) < 0.7
    new = rng.random(n) < 0.75
    lo, hi = paired_bootstrap_ci(old, new, samples=300, seed=11)

    # Reference: one resample at a time, same uniforms, mean of each model separately.
    ref_rng = np.random.default_rng(11)
    deltas = []
    for _ in range(300):
        u = ref_rng.random(n)
        idx = [int(x * n) for x in u]
        deltas.append(sum(new[i] for i in idx) / n - sum(old[i] for i in idx) / n)
    deltas.sort()

    def percentile(q: float) -> float:  # linear interpolation between order statistics
        pos = q * (len(deltas) - 1)
        f = math.floor(pos)
        return deltas[f] + (deltas[min(f + 1, len(deltas) - 1)] - deltas[f]) * (pos - f)

    assert lo == pytest.approx(percentile(0.025), abs=1e-12)
    assert hi == pytest.approx(percentile(0.975), abs=1e-12)
    observed = new.mean() - old.mean()
    assert lo < observed < hi
    # Chunking does not change the stream.
    import reportgen.methods.stats as cm

    saved = cm._BOOTSTRAP_CHUNK
    try:
        cm._BOOTSTRAP_CHUNK = n * 7 + 3
        assert paired_bootstrap_ci(old, new, samples=300, seed=11) == (lo, hi)
    finally:
        cm._BOOTSTRAP_CHUNK = saved
    assert paired_bootstrap_ci(old, new, samples=300, seed=12) != (lo, hi)


def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s definition with an explicit centring matrix H = I - 11^T/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, lg = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, lg) / math.sqrt(hsic(k, k) * hsic(lg, lg))


@pytest.mark.parametrize(("n", "p", "q"), [(30, 5, 12), (12, 40, 25), (50, 50, 3)])
def test_linear_cka_matches_hsic_with_centring_matrices(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n + p + q)
    x = rng.normal(size=(n, p)) + 3.0  # an offset the centring must remove
    y = np.tanh(x[:, : min(p, q)] @ rng.normal(size=(min(p, q), q))) + rng.normal(size=(n, q)) * 0.3
    assert linear_cka(x, y) == pytest.approx(_cka_by_hsic(x, y), rel=1e-10)


def test_linear_cka_invariances_and_degenerate_input() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 8))
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 2.5 * x @ rot + 1.0) == pytest.approx(1.0, abs=1e-12)
    wide = np.concatenate([x, np.zeros((40, 5))], axis=1)  # different widths
    assert linear_cka(x, wide) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, np.ones((40, 3))) is None
    with pytest.raises(ValueError, match="same images"):
        linear_cka(x, x[:10])


def test_knn_overlap_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(60, 6))
    b = a + rng.normal(size=(60, 6)) * 0.6
    k = 5
    got = knn_overlap(a, b, k)

    def neighbours(x: np.ndarray) -> list[set[int]]:
        idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
        return [set(row[1:].tolist()) for row in idx]  # drop the image itself

    na, nb = neighbours(a), neighbours(b)
    expected = [len(s & t) / len(s | t) for s, t in zip(na, nb, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert 0.0 < got.mean() < 1.0
    np.testing.assert_array_equal(knn_overlap(a, a * 3.0, k), np.ones(60))


def _ece_slow(conf: np.ndarray, ok: np.ndarray, bins: int) -> float:
    """Equal-width bins, right-closed, the first one including 0 (the audit's convention)."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if members:
            acc = sum(ok[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            total += abs(acc - mean_conf) * len(members)
    return total / len(conf)


def test_ece_and_per_class_numbers_against_references() -> None:
    rng = np.random.default_rng(6)
    n, k = 200, 4
    labels = rng.integers(0, k, n)
    logits_old = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
    logits_new = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[labels]
    paths, shas = [f"{i}.png" for i in range(n)], [sha(i) for i in range(n)]
    names = ["a", "b", "c", "d"]
    old = prediction_set(paths, shas, labels, names, logits_old)
    new = prediction_set(paths, shas, labels, names, logits_new)
    r = build_compare(old, new, bins=10)
    for model, ece in ((old, r.ece_old), (new, r.ece_new)):
        ok = model.predictions == labels
        assert ece == pytest.approx(_ece_slow(model.confidence, ok, 10), abs=1e-12)
    assert r.ece_delta == pytest.approx(r.ece_new - r.ece_old)  # type: ignore[operator]

    rec_old = recall_score(labels, old.predictions, average=None, labels=range(k))
    rec_new = recall_score(labels, new.predictions, average=None, labels=range(k))
    pre_old = precision_score(
        labels, old.predictions, average=None, labels=range(k), zero_division=0
    )
    pre_new = precision_score(
        labels, new.predictions, average=None, labels=range(k), zero_division=0
    )
    by_class = {c.index: c for c in r.per_class}
    for c in range(k):
        row = by_class[c]
        assert row.name == names[c] and row.images == int((labels == c).sum())
        assert row.recall_old == pytest.approx(rec_old[c]) and row.recall_new == pytest.approx(
            rec_new[c]
        )
        assert row.precision_old == pytest.approx(pre_old[c])
        assert row.precision_new == pytest.approx(pre_new[c])
    changes = [c.change for c in r.per_class]
    assert changes == sorted(changes, reverse=True)
    assert r.confusion_old is not None and r.confusion_new is not None
    np.testing.assert_array_equal(
        r.confusion_old, confusion_matrix(labels, old.predictions, labels=range(k))
    )
    np.testing.assert_array_equal(
        r.confusion_new, confusion_matrix(labels, new.predictions, labels=range(k))
    )
    # Accuracy agrees with the prediction sets' own (what summary.json reports).
    assert (r.accuracy_old, r.accuracy_new) == (old.accuracy(), new.accuracy())


def test_explanation_rank_correlation_and_filters_against_scipy() -> None:
    rng = np.random.default_rng(7)
    q = 4
    a = rng.random((q, 6, 6))
    b = a + rng.random((q, 6, 6)) * 0.8
    b[2] = 1.0  # a constant map: undefined correlation, left out of the mean
    ranks = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in (0, 1, 3)]
    grad_old, grad_new = rng.random((q, 6, 6)), rng.random((q, 6, 6))
    ranks_g = [
        scipy.stats.spearmanr(grad_old[i].ravel(), grad_new[i].ravel()).statistic for i in range(q)
    ]
    maps = ExplanationMaps(
        [0, 3, 5, 7], {"gradcam": a, "gradient": grad_old}, {"gradcam": b, "gradient": grad_new}
    )

    w_old = rng.normal(size=(5, 3, 3, 3))
    w_new = w_old + rng.normal(size=(5, 3, 3, 3)) * 0.5
    w_new[4] = 0.0
    r = build_compare(
        preds_set(OLD, LABELS), preds_set(NEW, LABELS), maps=maps, filters=(w_old, w_new)
    )
    assert r.explanations is not None
    np.testing.assert_allclose(r.explanations.rank_corr["gradcam"][[0, 1, 3]], ranks, rtol=1e-12)
    assert np.isnan(r.explanations.rank_corr["gradcam"][2])
    by = r.explanations.mean_by_method()
    assert by["gradcam"] == pytest.approx(np.mean(ranks))
    assert by["gradient"] == pytest.approx(np.mean(ranks_g))
    assert r.explanation_rank_corr == pytest.approx(np.mean(ranks + ranks_g))

    cos = filter_cosine(w_old, w_new)
    expected = [
        1 - scipy.spatial.distance.cosine(w_old[i].ravel(), w_new[i].ravel()) for i in range(4)
    ]
    np.testing.assert_allclose(cos[:4], expected, rtol=1e-12)
    assert np.isnan(cos[4])
    assert r.filter_cosine_mean == pytest.approx(np.mean(expected))


def test_parts_left_out_say_why() -> None:
    maps = ExplanationMaps(
        [0, 1],
        {"gradcam": np.ones((2, 4, 4))},
        {"gradcam": np.ones((2, 5, 5)), "gradient": np.ones((2, 5, 5))},
    )
    r = build_compare(
        preds_set(OLD, LABELS),
        preds_set(NEW, LABELS),
        maps=maps,
        filters=(np.ones((4, 3, 3, 3)), np.ones((8, 3, 7, 7))),
        left_out={"features": "the baseline folder has no arrays.npz"},
    )
    assert r.left_out["features"] == "the baseline folder has no arrays.npz"  # caller's reason wins
    assert "different shapes (2×4×4 vs 2×5×5" in r.left_out["explanations"]
    assert "the baseline model has no gradient maps" in r.left_out["explanations"]
    assert "4×3×3×3 vs 8×3×7×7" in r.left_out["filters"]
    assert r.explanations is None and r.filters is None and r.linear_cka is None
    s = compare_summary(r)
    assert (
        s["linear_cka"] is None and s["knn_overlap"] is None and s["explanation_rank_corr"] is None
    )
    plain = build_compare(preds_set(OLD, LABELS), preds_set(NEW, LABELS))
    assert set(plain.left_out) == {"features", "explanations", "filters"}
    feats = np.random.default_rng(0).normal(size=(12, 3))
    short = build_compare(
        preds_set(OLD, LABELS), preds_set(NEW, LABELS), features_old=feats, features_new=feats[:5]
    )
    assert "do not match the 12 images" in short.left_out["features"]


def test_unlabelled_flips_are_changed_predictions() -> None:
    unl = [-1] * 12
    r = build_compare(preds_set(OLD, unl), preds_set(NEW, unl, [0.5 + 0.04 * i for i in range(12)]))
    changed = [i for i in range(12) if OLD[i] != NEW[i]]
    assert r.flip_meaning == "prediction_changed"
    assert r.negative_flips == len(changed) and r.negative_flip_rate == len(changed) / 12
    assert r.positive_flips is None and r.positive_flip_rate is None
    assert r.negative_flip_positions.tolist() == changed[::-1]  # most confident new first
    assert r.accuracy_old is None and r.mcnemar_p is None and r.accuracy_delta_ci95 is None
    assert r.ece_delta is None and r.per_class == [] and r.confusion_old is None
    s = compare_summary(r)
    assert s["flip_meaning"] == "prediction_changed" and s["positive_flips"] is None
    assert "unlabelled" in s["left_out"]["accuracy"]


def test_baseline_without_an_output_for_a_label_is_wrong_there() -> None:
    # The new model has 4 outputs, the baseline 3; class 3 images are scored, baseline wrong.
    labels = [0, 1, 2, 3, 3]
    paths, shas = [f"{i}" for i in range(5)], [sha(i) for i in range(5)]
    old = prediction_set(paths, shas, labels, [], np.eye(3)[[0, 1, 2, 0, 1]] * 5)
    new = prediction_set(paths, shas, labels, [], np.eye(4)[[0, 1, 2, 3, 0]] * 5)
    assert old.correct.tolist() == [1, 1, 1, -1, -1]
    r = build_compare(old, new)
    assert r.labelled_images == 5
    assert (r.accuracy_old, r.accuracy_new) == (3 / 5, 4 / 5)
    assert (r.negative_flips, r.positive_flips) == (0, 1)
    # A label neither model has an output for is not scored (as in summary.json's accuracy).
    new9 = prediction_set(paths, shas, [0, 1, 2, 3, 9], [], np.eye(4)[[0, 1, 2, 3, 0]] * 5)
    old9 = prediction_set(paths, shas, [0, 1, 2, 3, 9], [], np.eye(3)[[0, 1, 2, 0, 1]] * 5)
    assert build_compare(old9, new9).labelled_images == 4


def test_summary_keys_are_json_safe_and_match_the_gate_keys() -> None:
    rng = np.random.default_rng(8)
    feats_old, feats_new = rng.normal(size=(12, 4)), rng.normal(size=(12, 7))
    r = build_compare(
        preds_set(OLD, LABELS),
        preds_set(NEW, LABELS),
        features_old=feats_old,
        features_new=feats_new,
        k=3,
    )
    s = compare_summary(r)
    assert set(s) >= REQUIRED
    json.dumps(s, allow_nan=False)
    numeric = {k for k, v in s.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric <= set(COMPARE_KEYS)
    assert set(COMPARE_KEYS) <= set(s)
    assert s["matched_images"] == 12 and s["parameters"]["knn_k"] == 3
    assert s["linear_cka"] == pytest.approx(_cka_by_hsic(feats_old, feats_new))
    lo, hi = s["accuracy_delta_ci95"]
    assert lo <= s["accuracy_delta"] <= hi
    assert "matching" not in s


def test_misaligned_sets_are_refused() -> None:
    a = preds_set(OLD, LABELS)
    with pytest.raises(ValueError, match="differ in length"):
        build_compare(a, preds_set(NEW[:5], LABELS[:5]))
    b = prediction_set(["other", *a.paths[1:]], a.sha256, LABELS, [], np.eye(3)[NEW])
    with pytest.raises(ValueError, match="not aligned"):
        build_compare(a, b)
    with pytest.raises(ValueError, match="positions must index the 12 images"):
        build_compare(a, a, maps=ExplanationMaps([12], {}, {}))
    with pytest.raises(ValueError, match="bootstrap_samples"):
        build_compare(a, a, bootstrap_samples=0)
    flat = build_compare(a, a, filters=(np.ones((4, 27)), np.ones((4, 27))))
    assert flat.filters is None and "F×C×kh×kw" in flat.left_out["filters"]
