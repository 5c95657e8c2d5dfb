"""What changed between two models on the same images: the numbers behind "Changes against the
baseline".

One function, :func:`build_compare`, serves both the baseline inside a run and ``reportgen
compare`` on two report folders, so the two give the same numbers for the same inputs. Inputs are
two aligned :class:`~reportgen.report.predictions.PredictionSet` (row i is the same image in both, one
class vocabulary) and optionally NumPy arrays (penultimate features, explanation maps, first-layer
filters); the output is plain data.

Labels: the truth is ``new.labels``. An image is *scored* when it has a label that at least one of
the two models has an output for; a model without an output for the label is wrong on it. With
the same class list this is exactly the images summary.json's accuracy counts.

Flips: with labels, a negative flip is an image the old model got right and the new one gets
wrong, a positive flip the reverse (Yan et al., CVPR 2021); rates are over the scored images.
Without labels (no scored image) a "negative flip" is any image whose prediction changed and
positive flips are not defined (None): any change counts against the new model, so a gate on
``negative_flip_rate`` stays meaningful. :attr:`CompareResult.flip_meaning` says which applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from reportgen.compare.subgroups import SLICE_MIN_SIZE, SliceDelta, cluster_deltas, slice_deltas
from reportgen.compare.tasks import (
    LabelDelta,
    binary_auroc,
    confidence_of,
    eces,
    label_deltas,
    set_correct,
    task_summary,
)
from reportgen.methods.attribution import spearman
from reportgen.methods.scores import PairedAuc
from reportgen.methods.stats import (
    BOOTSTRAP_SAMPLES,
    confusion_counts,
    filter_cosine,
    knn_overlap,
    linear_cka,
    mcnemar_exact,
    paired_bootstrap_ci,
)
from reportgen.report.predictions import PredictionSet
from reportgen.report.render import clean_floats

FlipMeaning = Literal["label", "prediction_changed"]


@dataclass(frozen=True, eq=False)
class ExplanationMaps:
    """The two models' maps for the same query images.

    ``positions``: row positions of the query images in the aligned prediction sets.
    ``old``/``new``: method name -> Q×H×W map (one per position, same order).
    """

    positions: list[int]
    old: Mapping[str, np.ndarray]
    new: Mapping[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class PerClass:
    index: int
    name: str
    images: int
    """Scored images whose true class this is."""
    recall_old: float | None
    recall_new: float | None
    precision_old: float | None
    precision_new: float | None

    @property
    def recall_delta(self) -> float | None:
        return _delta(self.recall_old, self.recall_new)

    @property
    def precision_delta(self) -> float | None:
        return _delta(self.precision_old, self.precision_new)

    @property
    def change(self) -> float:
        """The larger absolute change of recall and precision (what the table is sorted by)."""
        return max(abs(self.recall_delta or 0.0), abs(self.precision_delta or 0.0))


@dataclass(frozen=True, eq=False)
class ExplanationCompare:
    maps: ExplanationMaps
    rank_corr: dict[str, np.ndarray]
    """Method -> Spearman rank correlation per query (NaN where a map is constant)."""
    left_out: dict[str, str]
    """Method -> why it was not compared (shapes differ, only one model has it)."""

    def mean_by_method(self) -> dict[str, float | None]:
        return {m: _nanmean(v) for m, v in self.rank_corr.items()}


@dataclass(frozen=True, eq=False)
class FilterCompare:
    old: np.ndarray
    new: np.ndarray
    """F×C×kh×kw first-layer weights of each model."""
    cosine: np.ndarray
    """Per-filter cosine similarity of the flattened weights (NaN for an all-zero filter)."""


@dataclass(frozen=True, eq=False)
class CompareResult:
    """Everything the comparison found; :func:`compare_summary` turns it into JSON-safe numbers."""

    old: PredictionSet
    new: PredictionSet
    class_names: list[str]
    labels: np.ndarray
    """The truth used (``new.labels``)."""
    scored: np.ndarray
    """Boolean mask: images counted for accuracy, flips, calibration, per-class numbers."""
    correct_old: np.ndarray
    correct_new: np.ndarray
    """Boolean per image (meaningful where ``scored``)."""
    flip_meaning: FlipMeaning
    accuracy_old: float | None
    accuracy_new: float | None
    accuracy_delta_ci95: tuple[float, float] | None
    bootstrap_samples: int
    seed: int
    """Seed of the bootstrap."""
    mcnemar_p: float | None
    negative_flips: int
    positive_flips: int | None
    negative_flip_positions: np.ndarray
    """Row positions of the negative flips (or changed predictions), most confident first."""
    positive_flip_positions: np.ndarray
    changed_predictions: int
    ece_old: float | None
    ece_new: float | None
    bins: int
    per_class: list[PerClass]
    confusion_old: np.ndarray | None
    confusion_new: np.ndarray | None
    """K×K counts over the scored images (rows true, columns predicted); None without labels."""
    linear_cka: float | None
    knn_k: int | None
    knn_overlap_per_image: np.ndarray | None
    explanations: ExplanationCompare | None
    filters: FilterCompare | None
    left_out: dict[str, str] = field(default_factory=dict)
    """Part ("features", "explanations", "filters", ...) -> why it is not in the comparison."""
    notes: list[str] = field(default_factory=list)
    """Warnings the reader must see (different data manifests, class lists matched by name...)."""
    matching: dict[str, Any] = field(default_factory=dict)
    """How two report folders' images were matched (empty for a baseline inside a run)."""
    slices: list[SliceDelta] = field(default_factory=list)
    """Per metadata subgroup, both models' accuracy, worst regression first."""
    clusters: list[SliceDelta] = field(default_factory=list)
    """Per failing cluster the new model's slices section found (D1 …), both models' accuracy."""
    task: str = "multiclass"
    """The new model's task; multi-label "accuracy" and flips are about whole label sets."""
    auroc: PairedAuc | None = None
    """Binary: both AUROCs on the labelled images and DeLong's test of the difference."""
    label_changes: list[LabelDelta] = field(default_factory=list)
    """Multi-label: per label both models' AUROC, decisions and flips, worst AUROC loss first."""

    @property
    def matched_images(self) -> int:
        return len(self.new)

    @property
    def labelled_images(self) -> int:
        return int(self.scored.sum())

    @property
    def accuracy_delta(self) -> float | None:
        return _delta(self.accuracy_old, self.accuracy_new)

    @property
    def ece_delta(self) -> float | None:
        return _delta(self.ece_old, self.ece_new)

    @property
    def negative_flip_rate(self) -> float | None:
        return _rate(self.negative_flips, self._flip_base)

    @property
    def positive_flip_rate(self) -> float | None:
        return None if self.positive_flips is None else _rate(self.positive_flips, self._flip_base)

    @property
    def _flip_base(self) -> int:
        return self.labelled_images if self.flip_meaning == "label" else self.matched_images

    @property
    def knn_overlap(self) -> float | None:
        v = self.knn_overlap_per_image
        return None if v is None or v.size == 0 else float(v.mean())

    @property
    def explanation_rank_corr(self) -> float | None:
        if self.explanations is None or not self.explanations.rank_corr:
            return None
        return _nanmean(np.concatenate(list(self.explanations.rank_corr.values())))

    @property
    def filter_cosine_mean(self) -> float | None:
        return None if self.filters is None else _nanmean(self.filters.cosine)


def _delta(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else new - old


def _rate(count: int, base: int) -> float | None:
    return count / base if base else None


def _nanmean(v: np.ndarray) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    ok = v[np.isfinite(v)]
    return float(ok.mean()) if ok.size else None


# --------------------------------------------------------------------------- the comparison


def _check_aligned(old: PredictionSet, new: PredictionSet) -> None:
    if len(old) != len(new):
        raise ValueError(f"prediction sets differ in length: {len(old)} vs {len(new)}")
    if old.paths != new.paths or old.sha256 != new.sha256:
        raise ValueError("prediction sets are not aligned: rows name different images")


def _flip_order(positions: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Most confident first; ties in dataset order."""
    order = np.argsort(-confidence[positions], kind="stable")
    return positions[order]


def _per_class(cm_old: np.ndarray, cm_new: np.ndarray, names: list[str]) -> list[PerClass]:
    """Recall and precision per class from the two confusion matrices (rows true, columns
    predicted), for every class that is a label or a prediction of either model."""
    truth = cm_old.sum(axis=1)  # the same labels under both models
    pred_old, pred_new = cm_old.sum(axis=0), cm_new.sum(axis=0)
    hit_old, hit_new = np.diag(cm_old), np.diag(cm_new)

    def share(num: int, den: int) -> float | None:
        return num / den if den else None

    rows = [
        PerClass(
            index=c,
            name=names[c] if c < len(names) else str(c),
            images=int(truth[c]),
            recall_old=share(int(hit_old[c]), int(truth[c])),
            recall_new=share(int(hit_new[c]), int(truth[c])),
            precision_old=share(int(hit_old[c]), int(pred_old[c])),
            precision_new=share(int(hit_new[c]), int(pred_new[c])),
        )
        for c in np.flatnonzero(truth + pred_old + pred_new).tolist()
    ]
    return sorted(rows, key=lambda r: (-r.change, r.index))


def _explanations(maps: ExplanationMaps) -> tuple[ExplanationCompare, str | None]:
    corr: dict[str, np.ndarray] = {}
    left: dict[str, str] = {}
    q = len(maps.positions)
    for method in sorted(set(maps.old) | set(maps.new)):
        if method not in maps.old or method not in maps.new:
            which = "baseline" if method not in maps.old else "new"
            left[method] = f"the {which} model has no {method} maps"
            continue
        a, b = np.asarray(maps.old[method]), np.asarray(maps.new[method])
        if a.shape != b.shape or a.ndim != 3 or a.shape[0] != q:
            left[method] = (
                f"maps of different shapes ({'×'.join(map(str, a.shape))} vs "
                f"{'×'.join(map(str, b.shape))}; {q} queries expected, Q×H×W each)"
            )
            continue
        corr[method] = np.array([spearman(a[i], b[i]) for i in range(q)], dtype=np.float64)
    reason = None
    if not corr:
        reason = "; ".join(f"{m}: {r}" for m, r in left.items()) or "no explanation maps were given"
    return ExplanationCompare(maps, corr, left), reason


def build_compare(
    old: PredictionSet,
    new: PredictionSet,
    *,
    features_old: np.ndarray | None = None,
    features_new: np.ndarray | None = None,
    maps: ExplanationMaps | None = None,
    filters: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    k: int = 10,
    bins: int = 15,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    left_out: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    matching: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    discovered: Mapping[str, np.ndarray] | None = None,
) -> CompareResult:
    """Compare two models' predictions (and optionally features, maps, filters) on the same images.

    ``old``/``new`` must be aligned: the same images in the same order, one class vocabulary
    (indices mean the same class in both). ``left_out``: parts the caller already knows are
    missing, with the reason (they take precedence over the generic reasons given here);
    ``notes``: warnings to carry into the report; ``matching``: how the images were matched
    (from :mod:`reportgen.compare.folders`); ``device``: where the k-NN search runs (features
    stay NumPy arrays; the result does not depend on it beyond float rounding of near-ties);
    ``discovered``: the new model's flagged discovered clusters, name -> mask over the images.
    """
    _check_aligned(old, new)
    n = len(new)
    if bootstrap_samples < 1:
        raise ValueError("bootstrap_samples must be at least 1")
    if any(len(mask) != n for mask in (discovered or {}).values()):
        raise ValueError(f"discovered cluster masks must cover the {n} images")
    if maps is not None and any(not 0 <= p < n for p in maps.positions):
        raise ValueError(f"explanation map positions must index the {n} images")
    reasons: dict[str, str] = dict(left_out or {})
    names = list(new.class_names)
    for i, nm in enumerate(old.class_names):
        if i >= len(names):
            names.append(nm)
    labels = new.labels
    multilabel = not new.single_label
    if multilabel != (not old.single_label):
        raise ValueError(
            "one model is multi-label and the other single-label: their predictions cannot be "
            "compared"
        )
    truth = np.zeros((n, 0), dtype=bool)
    if multilabel:
        assert new.label_sets is not None and old.predicted_sets is not None
        assert new.predicted_sets is not None
        truth = new.label_sets > 0
        scored = np.asarray((new.label_sets >= 0).all(axis=1))
        correct_old, correct_new = set_correct(old, truth), set_correct(new, truth)
        changed = (old.predicted_sets != new.predicted_sets).any(axis=1)
    else:
        scored = np.asarray((labels >= 0) & ((old.correct >= 0) | (new.correct >= 0)))
        correct_old = old.predictions == labels
        correct_new = new.predictions == labels
        changed = old.predictions != new.predictions
    conf_old, conf_new = confidence_of(old), confidence_of(new)
    positions = np.arange(n)

    acc_old: float | None = None
    acc_new: float | None = None
    ece_old: float | None = None
    ece_new: float | None = None
    paired: PairedAuc | None = None
    label_changes: list[LabelDelta] = []
    if scored.any():
        flip_meaning: FlipMeaning = "label"
        co, cn = correct_old[scored], correct_new[scored]
        acc_old, acc_new = float(co.mean()), float(cn.mean())
        neg_mask = scored & correct_old & ~correct_new
        pos_mask = scored & ~correct_old & correct_new
        neg, pos = int(neg_mask.sum()), int(pos_mask.sum())
        ci = paired_bootstrap_ci(co, cn, samples=bootstrap_samples, seed=seed)
        p_value: float | None = mcnemar_exact(neg, pos)
        # The confidence of the wrong prediction: what broke / what used to be wrong.
        neg_order = _flip_order(positions[neg_mask], conf_new)
        pos_order = _flip_order(positions[pos_mask], conf_old)
        ece_old, ece_new = eces(old, new, labels, truth, scored, co, cn, bins)
        cm_old: np.ndarray | None = None
        cm_new: np.ndarray | None = None
        if multilabel:
            label_changes = label_deltas(old, new, truth, scored)
            per_class = _per_label(label_changes)
        else:
            y, po, pn = labels[scored], old.predictions[scored], new.predictions[scored]
            size = max(len(names), int(max(y.max(), po.max(), pn.max())) + 1)
            names += [str(i) for i in range(len(names), size)]
            cm_old, cm_new = confusion_counts(y, po, size), confusion_counts(y, pn, size)
            per_class = _per_class(cm_old, cm_new, names)
            paired = binary_auroc(old, new, labels, scored) if new.task == "binary" else None
        positive: int | None = pos
    else:
        flip_meaning = "prediction_changed"
        ci = None
        p_value = None
        neg, positive = int(changed.sum()), None
        neg_order = _flip_order(positions[changed], conf_new)
        pos_order = np.zeros(0, dtype=np.int64)
        per_class = []
        cm_old = cm_new = None
        for part in ("accuracy", "calibration", "per_class"):
            reasons.setdefault(part, "the images are unlabelled")

    cka: float | None = None
    overlap: np.ndarray | None = None
    knn_k: int | None = None
    if features_old is None or features_new is None:
        reasons.setdefault("features", "penultimate features of both models were not given")
    elif features_old.shape[0] != n or features_new.shape[0] != n:
        reasons.setdefault(
            "features",
            f"feature rows ({features_old.shape[0]}, {features_new.shape[0]}) do not match the "
            f"{n} images",
        )
    else:
        cka = linear_cka(features_old, features_new)
        if cka is None:
            reasons.setdefault("linear_cka", "one of the feature sets is constant")
        if n >= 2 and k >= 1:
            knn_k = min(k, n - 1)
            overlap = knn_overlap(features_old, features_new, knn_k, device=device)
        else:
            reasons.setdefault("knn_overlap", "k-NN overlap needs at least two images")

    explanations: ExplanationCompare | None = None
    if maps is None:
        reasons.setdefault("explanations", "explanation maps of both models were not given")
    else:
        explanations, why = _explanations(maps)
        if why is not None:
            reasons.setdefault("explanations", why)
            explanations = None

    filt: FilterCompare | None = None
    if filters is None:
        reasons.setdefault("filters", "first-layer filters of both models were not given")
    else:
        fo, fn = np.asarray(filters[0]), np.asarray(filters[1])
        if fo.ndim != 4 or fn.ndim != 4:
            reasons.setdefault(
                "filters", "first-layer filters must be F×C×kh×kw convolution weights"
            )
        elif fo.shape != fn.shape:
            reasons.setdefault(
                "filters",
                f"first-layer filters have different shapes ({'×'.join(map(str, fo.shape))} vs "
                f"{'×'.join(map(str, fn.shape))}): they are compared only between the same "
                "architecture",
            )
        else:
            filt = FilterCompare(fo, fn, filter_cosine(fo, fn))

    return CompareResult(
        old=old,
        new=new,
        class_names=names,
        labels=labels,
        scored=scored,
        correct_old=correct_old,
        correct_new=correct_new,
        flip_meaning=flip_meaning,
        accuracy_old=acc_old,
        accuracy_new=acc_new,
        accuracy_delta_ci95=ci,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        mcnemar_p=p_value,
        negative_flips=neg,
        positive_flips=positive,
        negative_flip_positions=neg_order,
        positive_flip_positions=pos_order,
        changed_predictions=int(changed.sum()),
        ece_old=ece_old,
        ece_new=ece_new,
        bins=bins,
        per_class=per_class,
        confusion_old=cm_old,
        confusion_new=cm_new,
        linear_cka=cka,
        knn_k=knn_k,
        knn_overlap_per_image=overlap,
        explanations=explanations,
        filters=filt,
        left_out=reasons,
        notes=list(notes),
        matching=dict(matching or {}),
        slices=slice_deltas(new, scored, correct_old, correct_new),
        clusters=cluster_deltas(scored, correct_old, correct_new, discovered or {}),
        task=new.task,
        auroc=paired,
        label_changes=label_changes,
    )


def _per_label(changes: list[LabelDelta]) -> list[PerClass]:
    """A multi-label comparison's per-label rows: sensitivity as the recall, precision."""
    rows = [
        PerClass(
            index=d.index,
            name=d.name,
            images=d.support,
            recall_old=d.counts_old.sensitivity,
            recall_new=d.counts_new.sensitivity,
            precision_old=d.counts_old.precision,
            precision_new=d.counts_new.precision,
        )
        for d in changes
    ]
    return sorted(rows, key=lambda r: (-r.change, r.index))


FLIP_MEANINGS = {
    "label": "negative flip: the baseline was right and the new model is wrong; positive flip: "
    "the reverse (rates over the labelled images)",
    "prediction_changed": "unlabelled images: a negative flip is any image whose prediction "
    "changed (rates over all matched images); positive flips are not defined",
}


def compare_summary(result: CompareResult) -> dict[str, Any]:
    """The ``compare`` object of summary.json: the keys in :data:`reportgen.report.gates.COMPARE_KEYS`
    (numbers, None where not computable) plus descriptive extras. JSON-safe."""
    ci = result.accuracy_delta_ci95
    summary: dict[str, Any] = {
        "accuracy_baseline": result.accuracy_old,
        "accuracy": result.accuracy_new,
        "accuracy_delta": result.accuracy_delta,
        "accuracy_delta_ci95": None if ci is None else [ci[0], ci[1]],
        "mcnemar_p": result.mcnemar_p,
        "negative_flips": result.negative_flips,
        "positive_flips": result.positive_flips,
        "negative_flip_rate": result.negative_flip_rate,
        "positive_flip_rate": result.positive_flip_rate,
        "ece_baseline": result.ece_old,
        "ece": result.ece_new,
        "ece_delta": result.ece_delta,
        "matched_images": result.matched_images,
        "labelled_images": result.labelled_images,
        "changed_predictions": result.changed_predictions,
        "linear_cka": result.linear_cka,
        "knn_overlap": result.knn_overlap,
        "explanation_rank_corr": result.explanation_rank_corr,
        "filter_cosine_mean": result.filter_cosine_mean,
        "slices_worst_delta": min(
            (d.delta for d in result.slices if d.n >= SLICE_MIN_SIZE), default=None
        ),
        "slices": [{"column": d.column, "value": d.value, **d.record()} for d in result.slices],
        "discovered_clusters": [
            {"id": d.value, **d.record(), "mcnemar_p": d.mcnemar_p} for d in result.clusters
        ],
        # Descriptive extras (not gate metrics).
        "flip_meaning": result.flip_meaning,
        "parameters": {
            "knn_k": result.knn_k,
            "bootstrap_samples": result.bootstrap_samples,
            "seed": result.seed,
            "ece_bins": result.bins,
        },
        "explanation_rank_corr_by_method": (
            {} if result.explanations is None else result.explanations.mean_by_method()
        ),
        "left_out": dict(sorted(result.left_out.items())),
        "notes": list(result.notes),
    }
    summary.update(task_summary(result.task, result.auroc, result.label_changes))
    if result.matching:
        summary["matching"] = dict(result.matching)
    cleaned: dict[str, Any] = clean_floats(summary)
    return cleaned
