"""``predictions.csv`` of a multi-label model: label sets instead of one class per image.

Columns :data:`MULTILABEL_COLUMNS`, then one ``p:<label>`` column per label in output order, then
the ``meta:<column>`` columns:

- ``labels``: the image's true labels, ``|``-separated names (empty: none of them, or unlabelled);
- ``predicted``: the labels whose probability reaches the threshold, ``|``-separated;
- ``exact_match``: 1 when the two sets are equal, 0 when not, empty for an unlabelled image;
- ``p:<label>``: the label's sigmoid probability, written so that it reads back to the same
  float64.

Rows, quoting and file names follow :mod:`reportgen.report.predictions`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reportgen.errors import ReportgenError
from reportgen.heads import Head
from reportgen.report.prediction_set import (
    META_PREFIX,
    BadRow,
    PredictionSet,
    check_row_identity,
    csv_path,
    field_text,
    float_text,
    read_error,
)

MULTILABEL_COLUMNS = ("path", "sha256", "labels", "predicted", "exact_match")
PROBABILITY_PREFIX = "p:"
SEPARATOR = "|"


def multilabel_prediction_set(
    paths: Sequence[str],
    sha256s: Sequence[str],
    class_names: Sequence[str],
    logits: Any,
    head: Head,
    label_sets: np.ndarray | None,
    source: str,
    metadata: dict[str, list[str]] | None,
) -> PredictionSet:
    """A multi-label model's predictions: probabilities and predicted sets from N×K logits,
    the truth from ``label_sets`` (N×K, 1/0, -1 across an unlabelled row; None: unlabelled)."""
    z = np.asarray(logits)
    n = len(paths)
    if z.ndim != 2 or z.shape[0] != n or z.shape[1] < 1:
        raise ValueError(f"scores must be N×K with N={n} rows, got shape {z.shape}")
    if len(sha256s) != n:
        raise ValueError(f"paths ({n}) and sha256s ({len(sha256s)}) differ in length")
    k = z.shape[1]
    truth = (
        np.full((n, k), -1, dtype=np.int8)
        if label_sets is None
        else np.asarray(label_sets, dtype=np.int8)
    )
    if truth.shape != (n, k):
        raise ValueError(f"label sets must be {n}×{k}, got shape {truth.shape}")
    probs = head.probabilities(z)
    predicted = np.asarray(head.predictions(z), dtype=bool)
    known = (truth >= 0).all(axis=1)
    correct = np.full(n, -1, dtype=np.int8)
    correct[known] = ((truth[known] > 0) == predicted[known]).all(axis=1).astype(np.int8)
    names = [*class_names[:k], *(str(i) for i in range(len(class_names), k))]
    return PredictionSet(
        source=source,
        paths=[csv_path(p) for p in paths],
        sha256=list(sha256s),
        labels=np.full(n, -1, dtype=np.int64),
        predictions=np.full(n, -1, dtype=np.int64),
        confidence=np.full(n, np.nan),
        p_label=np.full(n, np.nan),
        correct=correct,
        class_names=names,
        metadata=dict(metadata or {}),
        task="multilabel",
        probabilities=probs,
        label_sets=truth,
        predicted_sets=predicted,
    )


def _names(row: np.ndarray, names: Sequence[str]) -> str:
    return SEPARATOR.join(names[int(j)] for j in np.flatnonzero(row))


def format_multilabel(ps: PredictionSet) -> str:
    """The text of a multi-label predictions.csv (see the module docstring)."""
    assert ps.probabilities is not None and ps.label_sets is not None
    assert ps.predicted_sets is not None
    names = ps.class_names
    meta = list(ps.metadata.items())
    header = [
        *MULTILABEL_COLUMNS,
        *(field_text(PROBABILITY_PREFIX + name) for name in names),
        *(field_text(META_PREFIX + name) for name, _ in meta),
    ]
    lines = [",".join(header)]
    for i in range(len(ps)):
        ok = int(ps.correct[i])
        cells = [
            ps.paths[i],
            ps.sha256[i],
            _names(ps.label_sets[i] > 0, names) if ok >= 0 else "",
            _names(ps.predicted_sets[i], names),
            str(ok) if ok >= 0 else "",
            *(float_text(v) for v in ps.probabilities[i]),
            *(values[i] for _, values in meta),
        ]
        lines.append(",".join(field_text(c) for c in cells))
    return "\n".join(lines) + "\n"


def _label_set(text: str, index: dict[str, int], column: str) -> list[int]:
    out = []
    for name in text.split(SEPARATOR) if text else []:
        if name not in index:
            raise BadRow(f"{column} names {name!r}, which is not one of the p:<label> columns")
        out.append(index[name])
    return out


def read_multilabel(text: str, header: list[str], where: str) -> PredictionSet:
    """Read a multi-label predictions.csv whose header is ``header`` (ReportgenError naming the
    file and line for anything that is not what :func:`format_multilabel` writes)."""
    rest = header[len(MULTILABEL_COLUMNS) :]
    probs_cols = [h for h in rest if h.startswith(PROBABILITY_PREFIX)]
    meta_cols = rest[len(probs_cols) :]
    names = [h[len(PROBABILITY_PREFIX) :] for h in probs_cols]
    if (
        not probs_cols
        or rest[: len(probs_cols)] != probs_cols
        or any(not h.startswith(META_PREFIX) or len(h) == len(META_PREFIX) for h in meta_cols)
        or len(set(names)) != len(names)
        or len(set(meta_cols)) != len(meta_cols)
    ):
        raise ReportgenError(
            f"{where}: header is {','.join(header)!r}; a multi-label predictions.csv has "
            f"{','.join(MULTILABEL_COLUMNS)}, one p:<label> column per label, then meta:<column> "
            "columns"
        )
    index = {name: j for j, name in enumerate(names)}
    k = len(names)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)
    paths: list[str] = []
    shas: list[str] = []
    truth: list[list[int]] = []
    predicted: list[list[bool]] = []
    correct: list[int] = []
    probs: list[list[float]] = []
    meta: list[list[str]] = [[] for _ in meta_cols]
    seen: dict[str, int] = {}
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if len(row) != len(header):
                raise BadRow(f"{len(row)} fields, expected {len(header)}")
            rel, sha, labels_s, predicted_s, match_s = row[: len(MULTILABEL_COLUMNS)]
            check_row_identity(rel, sha, seen, line)
            mine = [False] * k
            for j in _label_set(predicted_s, index, "predicted"):
                mine[j] = True
            if match_s == "":
                if labels_s:
                    raise BadRow("an unlabelled row (exact_match empty) lists labels")
                truth.append([-1] * k)
                correct.append(-1)
            elif match_s in ("0", "1"):
                true = [0] * k
                for j in _label_set(labels_s, index, "labels"):
                    true[j] = 1
                if int(match_s) != int([bool(t) for t in true] == mine):
                    raise BadRow(
                        f"exact_match is {match_s} but labels {labels_s!r} vs "
                        f"predicted {predicted_s!r}"
                    )
                truth.append(true)
                correct.append(int(match_s))
            else:
                raise BadRow(f"exact_match {match_s!r} is not empty, 0 or 1")
            values = []
            for name, cell in zip(
                names, row[len(MULTILABEL_COLUMNS) : len(MULTILABEL_COLUMNS) + k], strict=True
            ):
                try:
                    v = float(cell)
                except ValueError:
                    raise BadRow(f"p:{name} {cell!r} is not a number") from None
                if math.isnan(v) or not 0.0 <= v <= 1.0:
                    raise BadRow(f"p:{name} {v} is not a probability in [0, 1]")
                values.append(v)
            for values_out, value in zip(meta, row[len(MULTILABEL_COLUMNS) + k :], strict=True):
                values_out.append(value)
            paths.append(rel)
            shas.append(sha)
            predicted.append(mine)
            probs.append(values)
    except BadRow as exc:
        raise read_error(where, line, exc) from None
    except csv.Error as exc:
        raise read_error(where, reader.line_num, exc) from None
    n = len(paths)
    return PredictionSet(
        source=where,
        paths=paths,
        sha256=shas,
        labels=np.full(n, -1, dtype=np.int64),
        predictions=np.full(n, -1, dtype=np.int64),
        confidence=np.full(n, np.nan),
        p_label=np.full(n, np.nan),
        correct=np.array(correct, dtype=np.int8),
        class_names=names,
        metadata={h[len(META_PREFIX) :]: v for h, v in zip(meta_cols, meta, strict=True)},
        task="multilabel",
        probabilities=np.array(probs, dtype=np.float64).reshape(n, k),
        label_sets=np.array(truth, dtype=np.int8).reshape(n, k),
        predicted_sets=np.array(predicted, dtype=bool).reshape(n, k),
    )
