"""``predictions.csv``: every readable image's label, prediction and confidences, one row each.

The file is what lets two archived reports be compared without loading a model, so it is exact
and byte-reproducible:

- columns :data:`COLUMNS`, one row per readable image in dataset order, ``\\n`` line endings,
  UTF-8 without a byte-order mark;
- RFC 4180 quoting: a field holding a comma, a double quote, CR or LF is wrapped in double quotes
  and its quotes are doubled (Python 3.11's ``csv.writer`` leaves a bare CR unquoted when the line
  terminator is ``\\n``, which its own reader then splits, so fields are quoted here);
- probabilities are float64 softmax outputs written with ``repr`` — the shortest decimal that
  reads back as the same float64 — so reading the file gives the very numbers the run used, and
  a comparison from two folders equals one made inside a run;
- ``label`` is -1 and ``label_name``, ``p_label`` and ``correct`` are empty for unlabelled
  images; ``p_label`` and ``correct`` are also empty when the label is outside the model's
  outputs (a class folder the model has no output for: not scored, as in summary.json's
  accuracy); a class without a known name is named by its index, as in the report;
- file names that are not valid UTF-8 (Python gives them as ``str`` with ``surrogateescape``)
  are written with each undecodable byte as ``\\xNN`` (:func:`csv_path`), so the file stays
  valid UTF-8; ``arrays.npz``'s ``dataset_ids`` go through the same function when matched.

A binary model (one logit, :mod:`reportgen.heads`) writes the same columns over its two classes
(0 negative, 1 positive; ``confidence`` the probability of the predicted class) and then
:data:`PREDICTED_POSITIVE`, the positive class' probability. A multi-label model's file has
label sets instead (:mod:`reportgen.report.predictions_multilabel`).
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import ReportgenError
from reportgen.heads import MULTICLASS, Head
from reportgen.report.prediction_set import (
    COLUMNS,
    FILE_NAME,
    META_PREFIX,
    SHA256,
    BadRow,
    PredictionSet,
    check_row_identity,
    csv_path,
    field_text,
    float_text,
    read_error,
)
from reportgen.report.predictions_multilabel import (
    MULTILABEL_COLUMNS,
    format_multilabel,
    multilabel_prediction_set,
    read_multilabel,
)

__all__ = [
    "COLUMNS",
    "FILE_NAME",
    "META_PREFIX",
    "PREDICTED_POSITIVE",
    "PredictionSet",
    "csv_path",
    "format_predictions",
    "prediction_set",
    "predictions_csv",
    "read_predictions",
]

PREDICTED_POSITIVE = "p_positive"
"""Binary models: the column after :data:`COLUMNS` with the positive class' probability."""


def prediction_set(
    paths: Sequence[str],
    sha256s: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    logits_or_probs: Any,
    *,
    probabilities: bool = False,
    source: str = "this run",
    metadata: dict[str, list[str]] | None = None,
    head: Head = MULTICLASS,
    label_sets: np.ndarray | None = None,
) -> PredictionSet:
    """Predictions from N×K scores: logits read by ``head`` (softmax or sigmoid in float64
    here) or, with ``probabilities=True``, multiclass probabilities as they are.

    ``paths`` are relative paths as the data folder gives them (any ``str``); ``labels`` -1 where
    unlabelled. The prediction is the head's: the arg-max of the scores (the first one on ties,
    as torch), or for a binary head ``p ≥ threshold``. A multi-label head takes its truth from
    ``label_sets`` (N×K, -1 across unlabelled rows).
    """
    if not head.single_label:
        return multilabel_prediction_set(
            paths, sha256s, class_names, logits_or_probs, head, label_sets, source, metadata
        )
    scores = np.asarray(logits_or_probs)
    n = len(paths)
    if scores.ndim != 2 or scores.shape[0] != n or scores.shape[1] < 1:
        raise ValueError(f"scores must be N×K with N={n} rows, got shape {scores.shape}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(sha256s) != n or y.shape[0] != n:
        raise ValueError(
            f"paths ({n}), sha256s ({len(sha256s)}) and labels ({y.shape[0]}) differ in length"
        )
    if probabilities:
        probs = np.asarray(scores, dtype=np.float64)
        preds = np.argmax(scores, axis=1).astype(np.int64)
    else:
        probs = head.probabilities(scores)
        preds = head.predictions(scores)
    rows = np.arange(n)
    scored = (y >= 0) & (y < probs.shape[1])
    p_label = np.full(n, np.nan)
    p_label[scored] = probs[rows[scored], y[scored]]
    correct = np.full(n, -1, dtype=np.int8)
    correct[scored] = (preds[scored] == y[scored]).astype(np.int8)
    return PredictionSet(
        source=source,
        paths=[csv_path(p) for p in paths],
        sha256=list(sha256s),
        labels=y,
        predictions=preds,
        confidence=probs[rows, preds] if n else np.zeros(0),
        p_label=p_label,
        correct=correct,
        class_names=list(class_names),
        metadata=dict(metadata or {}),
        task=head.task,
        p_positive=probs[:, 1].copy() if head.task == "binary" else None,
    )


def format_predictions(ps: PredictionSet) -> str:
    """The text of predictions.csv for a prediction set (see the module docstring)."""
    if not ps.single_label:
        return format_multilabel(ps)
    meta = list(ps.metadata.items())
    binary = [PREDICTED_POSITIVE] if ps.p_positive is not None else []
    lines = [",".join([*COLUMNS, *binary, *(field_text(META_PREFIX + name) for name, _ in meta)])]
    for i in range(len(ps)):
        label = int(ps.labels[i])
        pred = int(ps.predictions[i])
        ok = int(ps.correct[i])
        cells = [
            ps.paths[i],
            ps.sha256[i],
            str(label),
            ps.class_name(label) if label >= 0 else "",
            str(pred),
            ps.class_name(pred),
            float_text(ps.confidence[i]),
            float_text(ps.p_label[i]) if ok >= 0 else "",
            str(ok) if ok >= 0 else "",
            *([float_text(ps.p_positive[i])] if ps.p_positive is not None else []),
            *(values[i] for _, values in meta),
        ]
        lines.append(",".join(field_text(c) for c in cells))
    return "\n".join(lines) + "\n"


def predictions_csv(
    paths: Sequence[str],
    sha256s: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    logits_or_probs: Any,
    *,
    probabilities: bool = False,
) -> str:
    """The text of predictions.csv from a run's images and scores (see :func:`prediction_set`)."""
    return format_predictions(
        prediction_set(
            paths, sha256s, labels, class_names, logits_or_probs, probabilities=probabilities
        )
    )


# --------------------------------------------------------------------------- reading


MAX_CLASS_INDEX = 1_000_000
"""No classifier reportgen reads has more outputs; a larger index is a damaged file (a class
index of 10^10 would otherwise build a 10^10-entry class list)."""


def _parse_int(text: str, column: str, minimum: int) -> int:
    digits = text[1:] if text[:1] == "-" else text
    # ASCII digits only (str.isdigit alone also takes '²'), at most 12 of them.
    if not (digits.isascii() and digits.isdigit()) or len(text) > 12:
        raise BadRow(f"{column} {text[:20]!r} is not a whole number of at most 12 digits")
    value = int(text)
    if value < minimum:
        raise BadRow(f"{column} {value} is below {minimum}")
    if value >= MAX_CLASS_INDEX:
        raise BadRow(
            f"{column} {value} is not a class index (at most {MAX_CLASS_INDEX - 1:,}); "
            "the file is damaged"
        )
    return value


def _parse_probability(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRow(f"{column} {text!r} is not a number") from None
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise BadRow(f"{column} {value} is not a probability in [0, 1]")
    return value


_INT = re.compile(r"-?[0-9]{1,11}")
_PROBABILITY_OK = frozenset({"0", "1"})


def _fast_read(rows: list[list[str]], extra: list[str], where: str) -> PredictionSet | None:
    """The rows as a PredictionSet when every check holds, checked column by column; None when
    any fails (the caller then reads row by row, for a message naming the line)."""
    width = len(COLUMNS) + len(extra)
    if any(len(r) != width for r in rows):
        return None
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
    paths, shas, label_s, label_name, pred_s, pred_name, conf_s, p_label_s, correct_s = cols[:9]
    if not all(paths) or len(set(paths)) != len(paths):
        return None
    if not all(map(SHA256.fullmatch, shas)) or not all(map(_INT.fullmatch, label_s)):
        return None
    if not all(map(_INT.fullmatch, pred_s)):
        return None
    labels = np.array(list(map(int, label_s)), dtype=np.int64)
    preds = np.array(list(map(int, pred_s)), dtype=np.int64)
    if labels.size and (
        labels.min() < -1 or preds.min() < 0 or max(labels.max(), preds.max()) >= MAX_CLASS_INDEX
    ):
        return None
    try:
        conf = np.array(list(map(float, conf_s)), dtype=np.float64)
        unlabelled = labels < 0
        scored = np.array([c != "" for c in correct_s], dtype=bool)
        has_p = np.array([p != "" for p in p_label_s], dtype=bool)
        p_label = np.full(len(rows), np.nan)
        p_label[has_p] = list(map(float, (p for p in p_label_s if p)))
    except ValueError:
        return None
    bad_conf = ~np.isnan(conf) & ((conf < 0) | (conf > 1))
    bad_p = has_p & ~np.isnan(p_label) & ((p_label < 0) | (p_label > 1))
    if bad_conf.any() or bad_p.any() or (scored != has_p).any():
        return None
    if (unlabelled & (scored | np.array([n != "" for n in label_name], dtype=bool))).any():
        return None
    if not all(c in _PROBABILITY_OK for c in correct_s if c):
        return None
    correct = np.full(len(rows), -1, dtype=np.int8)
    correct[scored] = [int(c) for c in correct_s if c]
    if (correct[scored] != (labels[scored] == preds[scored])).any():
        return None
    names: dict[int, str] = {}
    for index, value in zip(preds.tolist(), pred_name, strict=True):
        if names.setdefault(index, value) != value:
            return None
    for index, value in zip(labels.tolist(), label_name, strict=True):
        if index >= 0 and names.setdefault(index, value) != value:
            return None
    size = max(names) + 1 if names else 0
    return PredictionSet(
        source=where,
        paths=list(paths),
        sha256=list(shas),
        labels=labels,
        predictions=preds,
        confidence=conf,
        p_label=p_label,
        correct=correct,
        class_names=[names.get(i, str(i)) for i in range(size)],
        metadata={h[len(META_PREFIX) :]: list(col) for h, col in zip(extra, cols[9:], strict=True)},
    )


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a predictions.csv written by :func:`predictions_csv` (any task).

    Raises :class:`ReportgenError` naming the file and what is wrong (missing file, not UTF-8,
    wrong header, a bad row with its line number, an image listed twice, a class index named
    two ways).
    """
    where, text = read_csv_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ReportgenError(f"{where}, line 1: malformed CSV ({exc})") from None
    if header is None:
        raise ReportgenError(f"{where}: empty file; expected a header line {','.join(COLUMNS)}")
    if tuple(header[: len(MULTILABEL_COLUMNS)]) == MULTILABEL_COLUMNS:
        return read_multilabel(text, header, where)
    extra = header[len(COLUMNS) :]
    binary = bool(extra) and extra[0] == PREDICTED_POSITIVE
    meta_columns = extra[1:] if binary else extra
    if (
        tuple(header[: len(COLUMNS)]) != COLUMNS
        or any(not h.startswith(META_PREFIX) or len(h) == len(META_PREFIX) for h in meta_columns)
        or len(set(meta_columns)) != len(meta_columns)
    ):
        raise ReportgenError(
            f"{where}: header is {','.join(header)!r}; expected {','.join(COLUMNS)!r}, "
            f"{PREDICTED_POSITIVE} for a binary model, and then meta:<column> columns only (a "
            "predictions.csv written by `reportgen run`)"
        )
    # The rows are millions of small objects none of which can form a cycle: the cyclic garbage
    # collector, run again and again over every object alive (other releases' rows included),
    # would cost more than the parse (reportgen history of 50 releases: 24 s -> 13 s).
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            rows: list[list[str]] | None = list(reader)
        except csv.Error:
            rows = None
        fast = None
        if rows is not None and all(len(r) == len(header) for r in rows):
            p_texts = [r[len(COLUMNS)] for r in rows] if binary else None
            if binary:
                rows = [r[: len(COLUMNS)] + r[len(COLUMNS) + 1 :] for r in rows]
            fast = _fast_read(rows, meta_columns, where)
            if fast is not None and p_texts is not None:
                fast = _with_positive(fast, p_texts)
    finally:
        if collecting:
            gc.enable()
    if fast is not None:
        return fast
    return _slow_read(text, header, meta_columns, binary, where)


def read_csv_text(path: str | Path) -> tuple[str, str]:
    """(the file as named in messages, its text): a missing file, a folder, an unreadable or
    non-UTF-8 file is one ReportgenError naming it (a byte-order mark is tolerated)."""
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportgenError(
            f"{where}: no such file; a report folder written by `reportgen run` holds one"
        ) from None
    except IsADirectoryError:
        raise ReportgenError(f"{where}: is a folder, not a predictions.csv file") from None
    except OSError as exc:
        raise ReportgenError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        return where, data.decode("utf-8-sig")  # tolerate a BOM added by a spreadsheet
    except UnicodeDecodeError as exc:
        raise ReportgenError(
            f"{where}: not UTF-8 text (bad byte at offset {exc.start}); "
            "is it a predictions.csv written by `reportgen run`?"
        ) from None


def _with_positive(ps: PredictionSet, texts: Sequence[str]) -> PredictionSet | None:
    """The binary column parsed onto a single-label set; None when a value is not a
    probability (the caller then reads row by row for the message)."""
    try:
        p = np.array(list(map(float, texts)), dtype=np.float64)
    except ValueError:
        return None
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        return None
    if (ps.predictions > 1).any() or (ps.labels > 1).any():
        return None
    return dataclasses.replace(ps, task="binary", p_positive=p)


def _slow_read(
    text: str, header: list[str], extra: list[str], binary: bool, where: str
) -> PredictionSet:
    """Something is wrong: read again row by row, for the message that names the line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)
    paths: list[str] = []
    shas: list[str] = []
    labels: list[int] = []
    preds: list[int] = []
    conf: list[float] = []
    p_label: list[float] = []
    correct: list[int] = []
    positive: list[float] = []
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    meta: list[list[str]] = [[] for _ in extra]
    width = len(header)
    first_meta = len(COLUMNS) + (1 if binary else 0)
    line = 1

    def name(index: int, value: str, column: str) -> None:
        known = names.setdefault(index, value)
        if known != value:
            raise BadRow(f"{column} {value!r} for class {index}, which earlier rows call {known!r}")

    try:
        for row in reader:
            line = reader.line_num
            if len(row) != width:
                raise BadRow(f"{len(row)} fields, expected {width}")
            for values, value in zip(meta, row[first_meta:], strict=True):
                values.append(value)
            rel, sha, label_s, label_name, pred_s, pred_name, conf_s, p_label_s, correct_s = row[
                : len(COLUMNS)
            ]
            check_row_identity(rel, sha, seen, line)
            label = _parse_int(label_s, "label", -1)
            pred = _parse_int(pred_s, "prediction", 0)
            name(pred, pred_name, "prediction_name")
            confidence = _parse_probability(conf_s, "confidence")
            if binary:
                if pred > 1 or label > 1:
                    raise BadRow(
                        f"a binary model's classes are 0 and 1, not label {label} / prediction "
                        f"{pred}"
                    )
                p_pos = _parse_probability(row[len(COLUMNS)], PREDICTED_POSITIVE)
                if math.isnan(p_pos):
                    raise BadRow(f"{PREDICTED_POSITIVE} is not a probability")
                positive.append(p_pos)
            if label < 0:
                if label_name or p_label_s or correct_s:
                    raise BadRow("an unlabelled row (label -1) has label_name, p_label or correct")
                p, ok = math.nan, -1
            else:
                name(label, label_name, "label_name")
                if correct_s == "" and p_label_s == "":
                    p, ok = math.nan, -1  # a label the model has no output for
                elif correct_s in ("0", "1") and p_label_s:
                    p = _parse_probability(p_label_s, "p_label")
                    ok = int(correct_s)
                    if ok != int(label == pred):
                        raise BadRow(f"correct is {ok} but label {label} vs prediction {pred}")
                else:
                    raise BadRow(
                        f"p_label {p_label_s!r} and correct {correct_s!r}: both empty, or a "
                        "probability and 0/1"
                    )
            paths.append(rel)
            shas.append(sha)
            labels.append(label)
            preds.append(pred)
            conf.append(confidence)
            p_label.append(p)
            correct.append(ok)
    except BadRow as exc:
        raise read_error(where, line, exc) from None
    except csv.Error as exc:
        raise read_error(where, reader.line_num, exc) from None
    size = max(names) + 1 if names else 0
    class_names = [names.get(i, str(i)) for i in range(size)]
    return PredictionSet(
        source=where,
        paths=paths,
        sha256=shas,
        labels=np.array(labels, dtype=np.int64),
        predictions=np.array(preds, dtype=np.int64),
        confidence=np.array(conf, dtype=np.float64),
        p_label=np.array(p_label, dtype=np.float64),
        correct=np.array(correct, dtype=np.int8),
        class_names=class_names,
        metadata={h[len(META_PREFIX) :]: values for h, values in zip(extra, meta, strict=True)},
        task="binary" if binary else "multiclass",
        p_positive=np.array(positive, dtype=np.float64) if binary else None,
    )
