"""Slice statistics: per-subgroup accuracy with intervals, a test against the rest, Holm.

Arrays in, numbers out (no torch): a slice is a boolean mask over the scored images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.methods.scores import Counts, roc_auc

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class SliceStats:
    column: str
    value: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float] | None
    rest_n: int
    rest_accuracy: float | None
    gap: float | None
    """accuracy - rest_accuracy (negative: the slice does worse)."""
    p: float | None
    """Two-sided Fisher exact test of the slice's 2×2 table against the rest."""
    p_holm: float | None = None
    flagged: bool = False
    ranked: bool = True
    """False for slices under ``min_size``: listed, never called worst."""


def slice_stats(column: str, value: str, mask: np.ndarray, correct: np.ndarray) -> SliceStats:
    """The slice ``mask`` (over the scored images, ``correct`` their right/wrong)."""
    n = int(mask.sum())
    k = int(correct[mask].sum())
    rest = ~mask
    rn = int(rest.sum())
    rk = int(correct[rest].sum())
    acc = k / n if n else float("nan")
    rest_acc = rk / rn if rn else None
    p = None
    if n and rn:
        from scipy.stats import fisher_exact  # scipy on first use: the registry stays light

        p = float(fisher_exact([[k, n - k], [rk, rn - rk]]).pvalue)
    return SliceStats(
        column,
        value,
        n,
        k,
        acc,
        wilson(k, n),
        rn,
        rest_acc,
        None if rest_acc is None else acc - rest_acc,
        p,
    )


def quantile_bins(values: np.ndarray, bins: int) -> list[str]:
    """Numeric values -> their quantile bin as text ``[lo, hi)`` (the last bin closed)."""
    finite = values[np.isfinite(values)]
    edges = (
        np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1))) if finite.size else np.array([])
    )
    out = []
    for v in values:
        if not np.isfinite(v) or edges.size < 2:
            out.append("")
            continue
        j = min(int(np.searchsorted(edges, v, side="right")) - 1, edges.size - 2)
        closed = "]" if j == edges.size - 2 else ")"
        out.append(f"[{edges[j]:.4g}, {edges[j + 1]:.4g}{closed}")
    return out


def _numeric(values: list[str]) -> np.ndarray | None:
    """The values as floats when every non-empty one is a finite number (else None)."""
    if not any(v != "" for v in values):
        return None
    try:
        parsed = np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return None
    present = np.array([v != "" for v in values])
    return parsed if np.isfinite(parsed[present]).all() else None


def slice_columns(
    metadata: dict[str, list[str]],
    names: Sequence[str] | None = None,
    *,
    max_values: int = 50,
    bins: int = 4,
) -> tuple[dict[str, list[str]], list[str]]:
    """(column -> one slice value per image, notes on the columns left out).

    A column with 2..``max_values`` distinct values is sliced by value; a numeric one with more
    is cut into ``bins`` quantile bins; others are left out with the reason."""
    notes: list[str] = []
    out: dict[str, list[str]] = {}
    for name in names if names is not None else list(metadata):
        values = metadata[name]
        distinct = set(values)
        if 2 <= len(distinct) <= max_values:
            out[name] = values
            continue
        numeric = _numeric(values)
        if len(distinct) > max_values and numeric is not None:
            out[name] = quantile_bins(numeric, bins)
        elif len(distinct) < 2:
            notes.append(f"{name}: one value only")
        else:
            notes.append(
                f"{name}: {len(distinct)} distinct values, not numeric (max_values {max_values})"
            )
    return out, notes


# --------------------------------------------------------------------------- task metrics


BOOTSTRAP_SAMPLES = 200
"""Resamples of a slice's images behind the interval of its AUROC (seeded)."""


@dataclass(frozen=True, eq=False)
class TaskScores:
    """What a slice's task metric is computed from, per scored image.

    Binary: ``truth`` (N, 0/1), ``probs`` (N, p of the positive class), ``predicted`` (N, 0/1).
    Multi-label: ``truth`` and ``predicted`` N×K booleans, ``probs`` N×K.
    """

    task: str
    truth: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray


def _macro_auroc(truth: np.ndarray, probs: np.ndarray) -> float | None:
    values = [roc_auc(truth[:, j], probs[:, j]) for j in range(truth.shape[1])]
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _auroc(scores: TaskScores, rows: np.ndarray) -> float | None:
    if scores.task == "binary":
        return roc_auc(scores.truth[rows], scores.probs[rows])
    return _macro_auroc(scores.truth[rows], scores.probs[rows])


def bootstrap_interval(
    fn: Callable[[np.ndarray], float | None],
    rows: np.ndarray,
    seed: Sequence[int],
    samples: int = BOOTSTRAP_SAMPLES,
) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of ``fn`` over seeded resamples (with replacement) of
    ``rows``; None when ``fn`` has no value on more than half of them (one class only)."""
    rng = np.random.default_rng(list(seed))
    values = [fn(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(samples)]
    known = [v for v in values if v is not None]
    if len(known) * 2 < samples:
        return None
    lo, hi = np.percentile(known, [2.5, 97.5])
    return float(lo), float(hi)


def slice_task_metrics(scores: TaskScores, mask: np.ndarray, seed: Sequence[int]) -> dict[str, Any]:
    """A slice's task metrics (``mask`` over the scored images): binary AUROC with a seeded
    bootstrap 95 % interval and F1 at the threshold; multi-label macro AUROC with its interval
    (the labels with both classes present in the slice)."""
    rows = np.flatnonzero(mask)
    auroc = _auroc(scores, rows) if rows.size else None
    interval = (
        bootstrap_interval(lambda r: _auroc(scores, r), rows, seed) if auroc is not None else None
    )
    ci = None if interval is None else list(interval)
    if scores.task == "binary":
        f1 = Counts.of(scores.truth[rows], scores.predicted[rows]).f1 if rows.size else None
        return {"auroc": auroc, "auroc_ci95": ci, "f1": f1}
    return {"macro_auroc": auroc, "macro_auroc_ci95": ci}
