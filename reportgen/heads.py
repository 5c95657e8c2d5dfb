"""The output head: what a model's scores mean for its task, in one place.

Every part of reportgen that turns logits into something a reader sees — probabilities, the
prediction, the confidence, the score an attribution map explains, the probability occlusion and
the deletion/insertion curves watch — asks a :class:`Head`. Nothing else calls ``softmax``.

Three tasks:

* ``multiclass``: one label per image, K ≥ 2 outputs, probabilities ``softmax(z)``, the prediction
  the arg-max (the first one on ties, as torch and NumPy break them). The explained score of class
  ``c`` is its logit ``z_c``; the explained probability ``softmax(z)_c``.
* ``binary``: one logit ``z`` (``BCEWithLogitsLoss``), two classes ``[negative, positive]``:
  ``p = sigmoid(z)`` is the positive class' probability and ``1 − p`` the negative's. The
  prediction is positive when ``p ≥ threshold``, decided as ``z ≥ logit(threshold)`` in float64 (the
  same in torch and NumPy, and exact at the default 0.5: ``z ≥ 0``). The explained score of the
  positive class is ``z``, of the negative ``−z`` (so a map of the negative class is the positive
  one's negative). A two-output softmax model is ``multiclass``: ``softmax(z₀, z₁)₁ =
  sigmoid(z₁ − z₀)``, so it and its one-logit rewrite give the same probabilities.
* ``multilabel``: K sigmoid outputs, one per label, ``p_j = sigmoid(z_j)``; the predicted set is
  ``{j : p_j ≥ threshold}``. The explained score of label ``j`` is ``z_j``, its probability ``p_j``.

The functions take NumPy arrays (float64 results, for predictions.csv and the comparisons read
back from it) or torch tensors (results in the tensor's dtype, on its device, for the methods);
the module imports no torch: tensors are used through their own methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Task = Literal["multiclass", "binary", "multilabel"]
TASKS: tuple[Task, ...] = ("multiclass", "binary", "multilabel")
DEFAULT_THRESHOLD = 0.5
BINARY_CLASS_NAMES = ("negative", "positive")
"""Class names of a binary task when neither ``data.labels`` nor the data name them."""


def _numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    """Sigmoid in float64, written as softmax of (0, z) with the larger term subtracted, so that
    ``softmax([a, b])[1]`` and ``np_sigmoid(b - a)`` are the same float (no overflow either way)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    out: np.ndarray = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def np_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max subtracted first, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class Head:
    """A task and its decision threshold (binary and multi-label); see the module docstring."""

    task: Task = "multiclass"
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; one of {', '.join(TASKS)}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")

    # ------------------------------------------------------------------ what the outputs are

    @property
    def single_label(self) -> bool:
        """One class per image (multiclass and binary): labels and predictions are indices."""
        return self.task != "multilabel"

    def classes(self, outputs: int) -> int:
        """Classes (labels) a model with ``outputs`` logits distinguishes: 2 for binary."""
        return 2 if self.task == "binary" else outputs

    @property
    def logit_threshold(self) -> float:
        """``logit(threshold)``: a score at or above it is predicted positive."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def describe(self) -> str:
        """The head in words, for the run summary."""
        if self.task == "multiclass":
            return "multiclass (softmax over the outputs, prediction = the most probable class)"
        if self.task == "binary":
            return f"binary (p = sigmoid of the one logit, positive when p ≥ {self.threshold:g})"
        return f"multi-label (p = sigmoid per label, predicted when p ≥ {self.threshold:g})"

    # ------------------------------------------------------------------ whole-output views

    def probabilities(self, logits: Any) -> Any:
        """N×C probabilities of every class: softmax (multiclass), ``[1 − p, p]`` (binary: N×2
        from N×1 logits), sigmoid per label (multi-label)."""
        if _numpy(logits):
            z = np.asarray(logits, dtype=np.float64)
            if self.task == "multiclass":
                return np_softmax(z)
            if self.task == "binary":
                return np.stack([np_sigmoid(-z[:, 0]), np_sigmoid(z[:, 0])], axis=1)
            return np_sigmoid(z)
        if self.task == "multiclass":
            return logits.softmax(1)
        if self.task == "binary":
            return _stack_binary(logits)
        return logits.sigmoid()

    def predictions(self, logits: Any) -> Any:
        """The prediction: N class indices (single-label) or an N×K boolean label set
        (multi-label)."""
        if _numpy(logits):
            z = np.asarray(logits)
            if self.task == "multiclass":
                return np.argmax(z, axis=1).astype(np.int64)
            positive = z.astype(np.float64) >= self.logit_threshold
            return positive[:, 0].astype(np.int64) if self.task == "binary" else positive
        if self.task == "multiclass":
            return logits.argmax(1)
        positive = logits.double() >= self.logit_threshold
        return positive[:, 0].long() if self.task == "binary" else positive

    def confidence(self, logits: Any) -> Any:
        """N probabilities of the predicted class (single-label tasks): the maximum softmax
        probability, or ``max(p, 1 − p)`` for binary."""
        if not self.single_label:
            raise TypeError("a multi-label prediction is a set: it has no single confidence")
        probs = self.probabilities(logits)
        preds = self.predictions(logits)
        if _numpy(probs):
            out: np.ndarray = np.take_along_axis(probs, preds[:, None], axis=1)[:, 0]
            return out
        return probs.gather(1, preds[:, None].to(probs.device))[:, 0]

    # ------------------------------------------------------------------ one target per row

    def _signed(self, logits: Any, targets: Any) -> Any:
        """The score of each row's target class: ``z_t`` (multiclass, multi-label) or ``±z``."""
        if _numpy(logits):
            z = np.asarray(logits)
            t = np.asarray(targets, dtype=np.int64)
            if self.task == "binary":
                return np.where(t == 1, z[:, 0], -z[:, 0])
            return np.take_along_axis(z, t[:, None], axis=1)[:, 0]
        t = targets.to(logits.device)
        if self.task == "binary":
            z = logits[:, 0]
            return z.where(t == 1, -z)
        return logits.gather(1, t[:, None])[:, 0]

    def explained_score(self, logits: Any, targets: Any) -> Any:
        """N scores the attribution maps explain (what gradients are taken of): the target's
        logit; for binary ``z`` (positive) or ``−z`` (negative)."""
        return self._signed(logits, targets)

    def explained_probability(self, logits: Any, targets: Any) -> Any:
        """N probabilities of each row's target (what occlusion and the deletion/insertion
        curves watch): ``softmax(z)_t``, ``sigmoid(±z)`` (binary) or ``sigmoid(z_t)``."""
        if self.task == "multiclass":
            probs = self.probabilities(logits)
            if _numpy(probs):
                t = np.asarray(targets, dtype=np.int64)
                out: np.ndarray = np.take_along_axis(probs, t[:, None], axis=1)[:, 0]
                return out
            return probs.gather(1, targets.to(probs.device)[:, None])[:, 0]
        signed = self._signed(logits, targets)
        return np_sigmoid(signed) if _numpy(signed) else signed.sigmoid()


MULTICLASS = Head()
"""The head of a softmax classifier (the default everywhere a task is not said)."""


def _stack_binary(z: Any) -> Any:
    """N×1 logits (a tensor) -> N×2 ``[sigmoid(−z), sigmoid(z)]``, each computed directly (no
    ``1 − p`` cancellation), without importing torch."""
    out = z.new_empty((z.shape[0], 2))
    out[:, 0] = (-z[:, 0]).sigmoid()
    out[:, 1] = z[:, 0].sigmoid()
    return out
