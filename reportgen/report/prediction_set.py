"""The rows of ``predictions.csv`` as one model's prediction set: the type every writer, reader
and comparison shares (see :mod:`reportgen.report.predictions` for the file format)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from reportgen.errors import ReportgenError
from reportgen.heads import Task

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

SHA256 = re.compile(r"[0-9a-f]{64}")
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
    task: Task = "multiclass"
    """What the model's outputs meant (:mod:`reportgen.heads`)."""
    p_positive: np.ndarray | None = None
    """Binary: float64 probability of the positive class per row (the ``p_positive`` column)."""
    probabilities: np.ndarray | None = None
    """Multi-label: N×K float64 probability of every label (the ``p:<label>`` columns)."""
    label_sets: np.ndarray | None = None
    """Multi-label: N×K int8 truth, 1/0 per label, -1 across an unlabelled row. ``labels`` and
    ``predictions`` are then -1 everywhere and ``correct`` is the exact match of the sets."""
    predicted_sets: np.ndarray | None = None
    """Multi-label: N×K booleans, the predicted labels."""

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
        """Share of the scored rows predicted right (multi-label: the exact-match ratio)."""
        ok = self.correct[self.scored]
        return float(ok.mean()) if ok.size else None

    @property
    def single_label(self) -> bool:
        return self.task != "multilabel"


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


def field_text(value: str) -> str:
    """A CSV field, quoted (RFC 4180) when it holds a comma, a double quote, CR or LF."""
    if _NEEDS_QUOTES.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def float_text(x: float) -> str:
    """A float64 as the shortest decimal that reads back as the same float."""
    return repr(float(x))


class BadRow(Exception):
    """A predictions.csv row that is not what reportgen writes (the reader adds file and line)."""


def check_row_identity(rel: str, sha: str, seen: dict[str, int], line: int) -> None:
    """A row names an image once, by a non-empty path and a SHA-256 (BadRow otherwise)."""
    if not rel:
        raise BadRow("empty path")
    if rel in seen:
        raise BadRow(f"path {rel!r} is listed twice (first on line {seen[rel]})")
    seen[rel] = line
    if not SHA256.fullmatch(sha):
        raise BadRow(f"sha256 {sha!r} is not 64 lowercase hex digits")


def read_error(where: str, line: int, exc: Exception) -> ReportgenError:
    """The one-line error for a bad row (BadRow) or malformed CSV (csv.Error) at ``line``."""
    if isinstance(exc, BadRow):
        return ReportgenError(f"{where}, line {line}: {exc}")
    return ReportgenError(f"{where}, line {line}: malformed CSV ({exc})")
