"""Failing slices found in feature space (slice discovery). Arrays in, numbers out.

The scored images' penultimate features are reduced by PCA and cut into ``k`` clusters by seeded
k-means. The clusters are formed without looking at which images are wrong, so testing each
one's errors afterwards is fair: every cluster of at least ``min_size`` images gets the declared
subgroups' statistics (Wilson interval, two-sided Fisher exact test against the rest, Holm over
the clusters tested). A cluster is *flagged* when its corrected p is below ``alpha`` and its
accuracy is at least ``min_gap`` below both the rest's and what its class mix predicts (the
images of the same classes outside it): errors gather near the class boundaries of the features
the model itself computes, so on a large set a boundary cluster a few points worse is
"significant" without being a slice anyone could name, and a cluster made of one hard class is
the per-class recall's finding, not a new one. Flagged clusters that touch (at least
:data:`TOUCH` of the smaller one's images have the other's centre as their second-nearest) are
one slice: a failing region k-means cut in pieces.

A discovered slice is a hypothesis for a person to name (what do these images share?), not a
finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from reportgen.methods.slicing import SliceStats, holm, slice_stats

IMAGES_PER_CLUSTER = 50
"""``clusters: 0`` (auto) makes one cluster per this many scored images ..."""
MAX_AUTO_CLUSTERS = 64
"""... at least 2 and at most this many: small enough clusters to be pure, large enough to test
(flagged neighbours are joined again, so a region cut in pieces is still one slice)."""
TOUCH = 0.1
"""Two flagged clusters are one slice when at least this share of the smaller one's images have
the other's centre as their second-nearest."""
STARTS = 3
"""k-means runs from this many seeded k-means++ starts; the tightest partition is kept."""


class NoStructure(ValueError):
    """Features on which clusters mean nothing (non-finite values, all rows equal)."""


def auto_clusters(n: int) -> int:
    """The default number of clusters for ``n`` scored images."""
    return int(min(MAX_AUTO_CLUSTERS, max(2, n // IMAGES_PER_CLUSTER)))


def reduce(features: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """The first ``dims`` principal components of the rows (float64; seeded randomised SVD for
    large inputs, exact otherwise)."""
    dims = int(min(dims, features.shape[0], features.shape[1]))
    large = features.shape[1] > 512 and features.shape[0] > 1000
    pca = PCA(n_components=dims, svd_solver="randomized" if large else "full", random_state=seed)
    return np.asarray(pca.fit_transform(features), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Partition:
    """k-means clusters of the reduced features."""

    assign: np.ndarray
    """Cluster (0..k-1) of each row."""
    runner_up: np.ndarray
    """The second-nearest centre of each row (which neighbouring cluster it borders)."""
    centres: np.ndarray
    k: int


def partition(z: np.ndarray, k: int, seed: int) -> Partition:
    """Seeded k-means of the rows of ``z`` into at most ``k`` clusters (fewer when there are
    fewer distinct rows); clusters numbered by their first row, so the numbering follows the
    data order rather than the solver's."""
    distinct = int(np.unique(z, axis=0).shape[0])
    k = max(1, min(k, distinct))
    km = KMeans(n_clusters=k, n_init=STARTS, random_state=seed).fit(z)
    raw = np.asarray(km.labels_)
    first = np.array([int(np.flatnonzero(raw == c)[0]) for c in range(k)])
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(k)
    centres = np.asarray(km.cluster_centers_)[np.argsort(first, kind="stable")]
    assign = rank[raw]
    if k == 1:
        return Partition(assign, assign.copy(), centres, 1)
    d2 = (z * z).sum(1)[:, None] + (centres * centres).sum(1)[None, :] - 2.0 * (z @ centres.T)
    d2[np.arange(len(assign)), assign] = np.inf
    return Partition(assign, d2.argmin(1), centres, k)


def touching_groups(
    part: Partition, clusters: Sequence[int], share: float = TOUCH
) -> list[list[int]]:
    """``clusters`` grouped by touch (connected components; each group sorted, groups in the
    order of their first cluster)."""
    sizes = np.bincount(part.assign, minlength=part.k)
    parent = {c: c for c in clusters}

    def root(c: int) -> int:
        while parent[c] != c:
            c = parent[c]
        return c

    for i, a in enumerate(clusters):
        for b in clusters[i + 1 :]:
            between = int(((part.assign == a) & (part.runner_up == b)).sum())
            between += int(((part.assign == b) & (part.runner_up == a)).sum())
            if between >= share * min(sizes[a], sizes[b]):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for c in clusters:
        groups.setdefault(root(c), []).append(c)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def class_mix_accuracy(mask: np.ndarray, correct: np.ndarray, labels: np.ndarray) -> float:
    """The accuracy ``mask``'s images would have if each did as well as the images of its class
    outside the mask (a class found only inside counts at its own accuracy: no excess).
    ``labels`` are class indices ≥ 0; O(N + classes)."""
    size = int(labels.max()) + 1
    hits = correct.astype(np.float64)
    n_all = np.bincount(labels, minlength=size)
    k_all = np.bincount(labels, weights=hits, minlength=size)
    n_in = np.bincount(labels[mask], minlength=size)
    k_in = np.bincount(labels[mask], weights=hits[mask], minlength=size)
    n_out, k_out = n_all - n_in, k_all - k_in
    present = n_in > 0
    acc = np.where(n_out > 0, k_out / np.maximum(n_out, 1), k_in / np.maximum(n_in, 1))
    return float((n_in[present] * acc[present]).sum() / n_in.sum())


@dataclass(frozen=True, eq=False)
class FoundSlice:
    """One cluster, or flagged clusters that touch, with its numbers."""

    clusters: tuple[int, ...]
    """Its k-means clusters (0-based)."""
    members: np.ndarray
    """Rows (indices into the scored images) in it, ascending."""
    stats: SliceStats
    expected: float
    """The accuracy its class mix predicts (:func:`class_mix_accuracy`)."""
    classes: list[tuple[int, int]]
    """(label, images), most common first."""
    p_holm: float | None = None
    """Holm-corrected p (over the clusters tested); a joined slice carries its clusters' largest."""
    flagged: bool = False

    @property
    def ranked(self) -> bool:
        """Tested (at least ``min_size`` images); smaller clusters are listed, never ranked."""
        return self.p_holm is not None


@dataclass(frozen=True, eq=False)
class Discovery:
    k: int
    """Clusters made."""
    dims: int
    """Principal components clustered."""
    tested: int
    """Clusters of at least ``min_size`` images (the Holm family)."""
    slices: list[FoundSlice]
    """Flagged slices worst first, then the other clusters worst first (untested ones last)."""
    partition: Partition
    reduced: np.ndarray
    """The reduced features (N×dims), e.g. for a 2-D map when there is no t-SNE."""


def _found(
    clusters: Sequence[int], part: Partition, correct: np.ndarray, labels: np.ndarray
) -> FoundSlice:
    mask = np.isin(part.assign, clusters)
    name = "+".join(str(c + 1) for c in clusters)
    values, counts = np.unique(labels[mask], return_counts=True)
    order = np.lexsort((values, -counts))
    return FoundSlice(
        tuple(int(c) for c in clusters),
        np.flatnonzero(mask),
        slice_stats("cluster", name, mask, correct),
        class_mix_accuracy(mask, correct, labels),
        [(int(values[i]), int(counts[i])) for i in order],
    )


def discover(
    features: np.ndarray,
    correct: np.ndarray,
    labels: np.ndarray,
    *,
    clusters: int = 0,
    dims: int = 32,
    seed: int = 0,
    min_size: int = 20,
    alpha: float = 0.05,
    min_gap: float = 0.1,
) -> Discovery:
    """Cluster the scored images' ``features`` (rows aligned with ``correct`` and ``labels``),
    test each cluster against the rest and join flagged clusters that touch."""
    bad = int((~np.isfinite(features).all(axis=1)).sum())
    if bad:
        raise NoStructure(f"{bad} of {len(features)} images have non-finite features")
    spread = float((features.max(axis=0) - features.min(axis=0)).max())
    if not spread > 1e-6 * max(float(np.abs(features[0]).max()), 1e-30):
        raise NoStructure(f"the features of all {len(features)} images are equal")
    z = reduce(features, dims, seed)
    part = partition(z, clusters or auto_clusters(len(correct)), seed)
    cells = [_found([c], part, correct, labels) for c in range(part.k)]
    tested = [i for i, s in enumerate(cells) if s.stats.n >= min_size and s.stats.p is not None]
    adjusted = holm([cells[i].stats.p for i in tested])  # type: ignore[misc]
    for i, q in zip(tested, adjusted, strict=True):
        s = cells[i]
        worse = s.stats.accuracy <= min(
            (s.stats.rest_accuracy or 0.0) - min_gap, s.expected - min_gap
        )
        cells[i] = FoundSlice(
            s.clusters, s.members, s.stats, s.expected, s.classes, q, bool(q < alpha and worse)
        )
    flagged = [i for i, s in enumerate(cells) if s.flagged]
    joined: list[FoundSlice] = []
    for group in touching_groups(part, flagged):
        if len(group) == 1:
            joined.append(cells[group[0]])
            continue
        s = _found(group, part, correct, labels)
        worst_p = max(cells[c].p_holm or 0.0 for c in group)
        joined.append(
            FoundSlice(s.clusters, s.members, s.stats, s.expected, s.classes, worst_p, True)
        )
    rest = [s for s in cells if not s.flagged]

    def key(s: FoundSlice) -> tuple[bool, float, tuple[int, ...]]:
        return (not s.ranked, s.stats.accuracy, s.clusters)

    ranked = sorted(joined, key=key) + sorted(rest, key=key)
    return Discovery(part.k, int(z.shape[1]), len(tested), ranked, part, z)


@dataclass(frozen=True)
class OverRepresented:
    """A metadata value much more common in a slice than elsewhere."""

    column: str
    value: str
    share: float
    """Share of the slice's images with this value."""
    overall: float
    """Share among all scored images."""
    p_holm: float
    """One-sided Fisher exact test (more common inside than outside), Holm over every value of
    every column tested for this slice."""


def over_represented(
    columns: Mapping[str, Sequence[str]], mask: np.ndarray, alpha: float = 0.05, top: int = 3
) -> list[OverRepresented]:
    """The metadata values significantly over-represented in ``mask`` (one value per scored
    image in each column), largest excess first, at most ``top``."""
    from scipy.stats import fisher_exact

    n, total = int(mask.sum()), len(mask)
    found: list[tuple[str, str, int, int, float]] = []
    for column, values in columns.items():
        arr = np.asarray(values, dtype=object)
        for value in sorted(set(arr.tolist())):
            has = arr == value
            a, c = int((has & mask).sum()), int((has & ~mask).sum())
            if a == 0:
                continue
            p = float(fisher_exact([[a, n - a], [c, total - n - c]], alternative="greater").pvalue)
            found.append((column, value, a, a + c, p))
    adjusted = holm([f[4] for f in found])
    out = [
        OverRepresented(column, value, a / n, both / total, q)
        for (column, value, a, both, _), q in zip(found, adjusted, strict=True)
        if q < alpha
    ]
    out.sort(key=lambda o: (-(o.share - o.overall), o.column, o.value))
    return out[:top]
