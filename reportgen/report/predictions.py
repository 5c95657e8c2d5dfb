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
"""

from __future__ import annotations

import csv
import gc
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import ReportgenError
from reportgen.heads import np_softmax

COLUMNS = (
    "path",
    "sha256",
    "label",
    "label_name",
    "prediction",
    "prediction_name",
    "confidence",
    "p_label",
    "correct",
)
FILE_NAME = "predictions.csv"
META_PREFIX = "meta:"
"""Metadata columns follow :data:`COLUMNS` as ``meta:<column>`` (so a metadata column named like
one of reportgen's, ``label`` or ``path``, cannot be mistaken for it)."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


@dataclass(frozen=True, eq=False)
class PredictionSet:
    """One model's predictions on a list of images (rows in dataset order)."""

    source: str
    """Where the predictions come from (a file, or a description such as "baseline model")."""
    paths: list[str]
    """Image paths relative to the data root, as written in predictions.csv (:func:`csv_path`)."""
    sha256: list[str]
    labels: np.ndarray
    """int64 class index in the model's output order; -1 when unlabelled."""
    predictions: np.ndarray
    """int64 predicted class (arg-max of the logits)."""
    confidence: np.ndarray
    """float64 probability of the predicted class."""
    p_label: np.ndarray
    """float64 probability of the true class; NaN where not scored."""
    correct: np.ndarray
    """int8: 1 right, 0 wrong, -1 not scored (unlabelled, or a label the model has no output for)."""
    class_names: list[str]
    """Class index -> name; may be shorter than the largest index (see :meth:`class_name`)."""
    metadata: dict[str, list[str]] = field(default_factory=dict)
    """Metadata column -> one text value per row (a manifest's or dataset's extra columns);
    written as ``meta:<column>`` columns after :data:`COLUMNS`."""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def scored(self) -> np.ndarray:
        """Boolean mask of the rows with a label the model can be right or wrong about."""
        return np.asarray(self.correct >= 0)

    @property
    def labelled(self) -> bool:
        return bool(self.scored.any())

    def class_name(self, index: int) -> str:
        """The class's name; its index as text when no name is known (the report's convention)."""
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def accuracy(self) -> float | None:
        ok = self.correct[self.scored]
        return float(ok.mean()) if ok.size else None


def csv_path(relpath: str) -> str:
    """A relative path as written to predictions.csv: undecodable bytes become ``\\xNN``.

    Python hands file names that are not valid UTF-8 over as ``str`` with lone surrogates
    (``surrogateescape``), which cannot be encoded as UTF-8. Each such byte is written as the
    four characters ``\\xNN`` instead, so the file stays valid UTF-8 and the same name always
    gives the same text (which is all matching two folders needs).
    """
    try:
        raw = relpath.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A surrogate outside U+DC80..U+DCFF did not come from a file system; keep it visible.
        return relpath.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


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
) -> PredictionSet:
    """Predictions from N×K scores: logits (softmax in float64 here) or, with
    ``probabilities=True``, probabilities as they are.

    ``paths`` are relative paths as the data folder gives them (any ``str``); ``labels`` -1 where
    unlabelled. The prediction is the arg-max of the scores (the first one on ties, as torch).
    """
    scores = np.asarray(logits_or_probs)
    n = len(paths)
    if scores.ndim != 2 or scores.shape[0] != n or scores.shape[1] < 1:
        raise ValueError(f"scores must be N×K with N={n} rows, got shape {scores.shape}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(sha256s) != n or y.shape[0] != n:
        raise ValueError(
            f"paths ({n}), sha256s ({len(sha256s)}) and labels ({y.shape[0]}) differ in length"
        )
    probs = np.asarray(scores, dtype=np.float64) if probabilities else np_softmax(scores)
    preds = np.argmax(scores, axis=1).astype(np.int64)
    rows = np.arange(n)
    scored = (y >= 0) & (y < scores.shape[1])
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
    )


def _field(value: str) -> str:
    if _NEEDS_QUOTES.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def _float(x: float) -> str:
    return repr(float(x))


def format_predictions(ps: PredictionSet) -> str:
    """The text of predictions.csv for a prediction set (see the module docstring)."""
    meta = list(ps.metadata.items())
    lines = [",".join([*COLUMNS, *(_field(META_PREFIX + name) for name, _ in meta)])]
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
            _float(ps.confidence[i]),
            _float(ps.p_label[i]) if ok >= 0 else "",
            str(ok) if ok >= 0 else "",
            *(values[i] for _, values in meta),
        ]
        lines.append(",".join(_field(c) for c in cells))
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


class _BadRow(Exception):
    pass


MAX_CLASS_INDEX = 1_000_000
"""No classifier reportgen reads has more outputs; a larger index is a damaged file (a class
index of 10^10 would otherwise build a 10^10-entry class list)."""


def _parse_int(text: str, column: str, minimum: int) -> int:
    digits = text[1:] if text[:1] == "-" else text
    # ASCII digits only (str.isdigit alone also takes '²'), at most 12 of them.
    if not (digits.isascii() and digits.isdigit()) or len(text) > 12:
        raise _BadRow(f"{column} {text[:20]!r} is not a whole number of at most 12 digits")
    value = int(text)
    if value < minimum:
        raise _BadRow(f"{column} {value} is below {minimum}")
    if value >= MAX_CLASS_INDEX:
        raise _BadRow(
            f"{column} {value} is not a class index (at most {MAX_CLASS_INDEX - 1:,}); "
            "the file is damaged"
        )
    return value


def _parse_probability(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{column} {text!r} is not a number") from None
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise _BadRow(f"{column} {value} is not a probability in [0, 1]")
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
    if not all(map(_SHA256.fullmatch, shas)) or not all(map(_INT.fullmatch, label_s)):
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
    """Read a predictions.csv written by :func:`predictions_csv`.

    Raises :class:`ReportgenError` naming the file and what is wrong (missing file, not UTF-8,
    wrong header, a bad row with its line number, an image listed twice, a class index named
    two ways).
    """
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
        text = data.decode("utf-8-sig")  # tolerate a BOM added by a spreadsheet
    except UnicodeDecodeError as exc:
        raise ReportgenError(
            f"{where}: not UTF-8 text (bad byte at offset {exc.start}); "
            "is it a predictions.csv written by `reportgen run`?"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ReportgenError(f"{where}, line 1: malformed CSV ({exc})") from None
    if header is None:
        raise ReportgenError(f"{where}: empty file; expected a header line {','.join(COLUMNS)}")
    extra = header[len(COLUMNS) :]
    if (
        tuple(header[: len(COLUMNS)]) != COLUMNS
        or any(not h.startswith(META_PREFIX) or len(h) == len(META_PREFIX) for h in extra)
        or len(set(extra)) != len(extra)
    ):
        raise ReportgenError(
            f"{where}: header is {','.join(header)!r}; expected {','.join(COLUMNS)!r} "
            "and then meta:<column> columns only (a predictions.csv written by `reportgen run`)"
        )
    # The rows are millions of small objects none of which can form a cycle: the cyclic garbage
    # collector, run again and again over every object alive (other releases' rows included),
    # would cost more than the parse (reportgen history of 50 releases: 24 s -> 13 s).
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            rows = list(reader)
        except csv.Error:
            rows = None
        fast = _fast_read(rows, extra, where) if rows is not None else None
    finally:
        if collecting:
            gc.enable()
    if fast is not None:
        return fast
    # Something is wrong: read again row by row for the message that names the line.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)
    paths: list[str] = []
    shas: list[str] = []
    labels: list[int] = []
    preds: list[int] = []
    conf: list[float] = []
    p_label: list[float] = []
    correct: list[int] = []
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    meta: list[list[str]] = [[] for _ in extra]
    width = len(header)
    line = 1

    def name(index: int, value: str, column: str) -> None:
        known = names.setdefault(index, value)
        if known != value:
            raise _BadRow(
                f"{column} {value!r} for class {index}, which earlier rows call {known!r}"
            )

    try:
        for row in reader:
            line = reader.line_num
            if len(row) != width:
                raise _BadRow(f"{len(row)} fields, expected {width}")
            for values, value in zip(meta, row[len(COLUMNS) :], strict=True):
                values.append(value)
            rel, sha, label_s, label_name, pred_s, pred_name, conf_s, p_label_s, correct_s = row[
                : len(COLUMNS)
            ]
            if not rel:
                raise _BadRow("empty path")
            if rel in seen:
                raise _BadRow(f"path {rel!r} is listed twice (first on line {seen[rel]})")
            seen[rel] = line
            if not _SHA256.fullmatch(sha):
                raise _BadRow(f"sha256 {sha!r} is not 64 lowercase hex digits")
            label = _parse_int(label_s, "label", -1)
            pred = _parse_int(pred_s, "prediction", 0)
            name(pred, pred_name, "prediction_name")
            confidence = _parse_probability(conf_s, "confidence")
            if label < 0:
                if label_name or p_label_s or correct_s:
                    raise _BadRow("an unlabelled row (label -1) has label_name, p_label or correct")
                p, ok = math.nan, -1
            else:
                name(label, label_name, "label_name")
                if correct_s == "" and p_label_s == "":
                    p, ok = math.nan, -1  # a label the model has no output for
                elif correct_s in ("0", "1") and p_label_s:
                    p = _parse_probability(p_label_s, "p_label")
                    ok = int(correct_s)
                    if ok != int(label == pred):
                        raise _BadRow(f"correct is {ok} but label {label} vs prediction {pred}")
                else:
                    raise _BadRow(
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
    except _BadRow as exc:
        raise ReportgenError(f"{where}, line {line}: {exc}") from None
    except csv.Error as exc:
        raise ReportgenError(f"{where}, line {reader.line_num}: malformed CSV ({exc})") from None
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
    )
