"""Accuracy per metadata subgroup under two models: "which subgroup did this change hurt?"
(both comparison paths; the slices section's column rules)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reportgen.methods.slicing import slice_columns
from reportgen.methods.stats import mcnemar_exact
from reportgen.report.predictions import PredictionSet


@dataclass(frozen=True)
class SliceDelta:
    """One metadata subgroup's accuracy under both models (the new report's labels)."""

    column: str
    value: str
    n: int
    accuracy_old: float
    accuracy_new: float
    negative_flips: int
    positive_flips: int

    @property
    def delta(self) -> float:
        return self.accuracy_new - self.accuracy_old

    def record(self) -> dict[str, float | int]:
        """Its numbers for summary.json (``compare.slices``, ``compare.discovered_clusters``)."""
        return {
            "n": self.n,
            "accuracy_baseline": self.accuracy_old,
            "accuracy": self.accuracy_new,
            "accuracy_delta": self.delta,
            "negative_flips": self.negative_flips,
            "positive_flips": self.positive_flips,
        }

    @property
    def mcnemar_p(self) -> float:
        """Exact two-sided McNemar p of the subgroup's flips (the two models on its images)."""
        return mcnemar_exact(self.negative_flips, self.positive_flips)


SLICE_MIN_SIZE = 20
"""Subgroups smaller than this are listed after the others, never called the worst."""


def slice_deltas(
    new: PredictionSet, scored: np.ndarray, correct_old: np.ndarray, correct_new: np.ndarray
) -> list[SliceDelta]:
    """Per subgroup of the new report's metadata columns (the slices section's rules), the
    accuracy of both models on its labelled images, the worst regression first."""
    if not new.metadata or not scored.any():
        return []
    idx = np.nonzero(scored)[0]
    meta = {c: [v[i] for i in idx] for c, v in new.metadata.items()}
    columns, _ = slice_columns(meta)
    co, cn = correct_old[idx], correct_new[idx]
    out = []
    for column, values in columns.items():
        arr = np.array(values, dtype=object)
        for value in sorted(set(values)):
            m = arr == value
            out.append(
                SliceDelta(
                    column,
                    value,
                    int(m.sum()),
                    float(co[m].mean()),
                    float(cn[m].mean()),
                    int((co[m] & ~cn[m]).sum()),
                    int((~co[m] & cn[m]).sum()),
                )
            )
    return sorted(out, key=lambda d: (d.n < SLICE_MIN_SIZE, d.delta, d.column, d.value))


CLUSTER_ALPHA = 0.05
"""The level at which a failing cluster's change between the two models is called significant."""


def change_made_it_fail(delta: float, mcnemar_p: float) -> bool:
    """A cluster the change brought: accuracy fell and the flips say it is no chance."""
    return mcnemar_p < CLUSTER_ALPHA and delta < 0


DISCOVERED = "discovered cluster"
"""The column name of the new model's discovered failing clusters (D1, D2 …) in the deltas."""


def cluster_deltas(
    scored: np.ndarray,
    correct_old: np.ndarray,
    correct_new: np.ndarray,
    clusters: Mapping[str, np.ndarray],
) -> list[SliceDelta]:
    """Both models' accuracy on each of the new model's flagged discovered clusters (``clusters``:
    name -> boolean mask over the compared images), in the order given (D1, the worst, first).
    The clusters were chosen where the new model fails, so their deltas lean negative by
    construction: the baseline's accuracy says whether the failure was already there."""
    out = []
    for name, mask in clusters.items():
        m = np.asarray(mask, dtype=bool) & scored
        if not m.any():
            continue
        co, cn = correct_old[m], correct_new[m]
        out.append(
            SliceDelta(
                DISCOVERED,
                name,
                int(m.sum()),
                float(co.mean()),
                float(cn.mean()),
                int((co & ~cn).sum()),
                int((~co & cn).sum()),
            )
        )
    return out
