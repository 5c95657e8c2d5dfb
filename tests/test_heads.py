"""The output head: what a score means for each task, for NumPy arrays and torch tensors alike,
checked against direct formulas (scipy's expit and softmax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import expit
from scipy.special import softmax as scipy_softmax

from reportgen.heads import MULTICLASS, Head, np_sigmoid, np_softmax

RNG = np.random.default_rng(0)
LOGITS2 = RNG.normal(0, 3, (50, 2))
LOGITS5 = RNG.normal(0, 3, (50, 5))


def test_multiclass_is_softmax_and_argmax() -> None:
    probs = MULTICLASS.probabilities(LOGITS5)
    np.testing.assert_allclose(probs, scipy_softmax(LOGITS5, axis=1), rtol=1e-14)
    assert (MULTICLASS.predictions(LOGITS5) == LOGITS5.argmax(1)).all()
    t = RNG.integers(0, 5, 50)
    np.testing.assert_allclose(
        MULTICLASS.explained_probability(LOGITS5, t), probs[np.arange(50), t], rtol=1e-14
    )
    assert (MULTICLASS.explained_score(LOGITS5, t) == LOGITS5[np.arange(50), t]).all()
    assert MULTICLASS.classes(5) == 5


def test_softmax_of_two_logits_is_the_sigmoid_of_their_difference() -> None:
    """A two-output softmax model and its one-logit rewrite (z = z1 − z0) give the same
    probabilities (to float64 rounding) and predictions."""
    binary = Head("binary")
    z = (LOGITS2[:, 1] - LOGITS2[:, 0])[:, None]
    np.testing.assert_allclose(
        binary.probabilities(z), MULTICLASS.probabilities(LOGITS2), atol=1e-15
    )
    assert (binary.predictions(z) == MULTICLASS.predictions(LOGITS2)).all()
    np.testing.assert_allclose(binary.confidence(z), MULTICLASS.confidence(LOGITS2), atol=1e-15)
    t = RNG.integers(0, 2, 50)
    np.testing.assert_allclose(
        binary.explained_probability(z, t),
        MULTICLASS.explained_probability(LOGITS2, t),
        atol=1e-15,
    )
    # torch, float32: the same to float32 rounding
    zt, lt = torch.tensor(z, dtype=torch.float32), torch.tensor(LOGITS2, dtype=torch.float32)
    torch.testing.assert_close(binary.probabilities(zt), MULTICLASS.probabilities(lt))


def test_binary_head_reads_one_logit() -> None:
    head = Head("binary", threshold=0.3)
    z = RNG.normal(0, 2, (40, 1))
    p = expit(z[:, 0])
    np.testing.assert_allclose(head.probabilities(z), np.stack([1 - p, p], axis=1), atol=1e-15)
    assert (head.predictions(z) == (p >= 0.3)).all()
    t = np.array([0, 1] * 20)
    score = head.explained_score(z, t)
    assert (score == np.where(t == 1, z[:, 0], -z[:, 0])).all()
    np.testing.assert_allclose(head.explained_probability(z, t), np.where(t == 1, p, 1 - p))
    assert head.classes(1) == 2
    zt = torch.tensor(z)
    assert torch.equal(head.predictions(zt), torch.tensor(p >= 0.3, dtype=torch.long))
    torch.testing.assert_close(head.explained_score(zt, torch.tensor(t)), torch.tensor(score))


def test_the_threshold_is_exact_at_its_logit() -> None:
    """p ≥ t is decided as z ≥ logit(t): a logit exactly at the threshold is positive, one float
    below it negative, the same in NumPy and torch."""
    head = Head("binary", threshold=0.7)
    at = head.logit_threshold
    z = np.array([[at], [np.nextafter(at, -np.inf)], [0.0]])
    assert head.predictions(z).tolist() == [1, 0, 0]
    assert head.predictions(torch.tensor(z)).tolist() == [1, 0, 0]
    assert math.isclose(expit(at), 0.7)
    assert Head("binary").predictions(np.array([[0.0], [-1e-300]])).tolist() == [1, 0]


def test_multilabel_head_is_a_sigmoid_per_label() -> None:
    head = Head("multilabel", threshold=0.6)
    p = expit(LOGITS5)
    np.testing.assert_allclose(head.probabilities(LOGITS5), p, rtol=1e-14)
    assert (head.predictions(LOGITS5) == (p >= 0.6)).all()
    t = RNG.integers(0, 5, 50)
    np.testing.assert_allclose(head.explained_probability(LOGITS5, t), p[np.arange(50), t])
    with pytest.raises(TypeError, match="set"):
        head.confidence(LOGITS5)
    zt = torch.tensor(LOGITS5, dtype=torch.float32)
    assert torch.equal(head.predictions(zt), torch.tensor(p >= 0.6))


def test_extreme_logits_neither_overflow_nor_lose_the_small_side() -> None:
    z = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise"):
        s = np_sigmoid(z)
    assert s.tolist()[2] == 0.5 and s[0] == 0.0 and s[-1] == 1.0
    assert s[1] == pytest.approx(expit(-40.0), rel=1e-12)  # not 1 - 1
    assert np_softmax(np.array([[1000.0, 0.0]]))[0, 0] == 1.0


def test_a_head_refuses_what_it_cannot_mean() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Head("binary", threshold=1.0)
    with pytest.raises(ValueError, match="threshold"):
        Head("multilabel", threshold=0.0)
    with pytest.raises(ValueError, match="task"):
        Head("regression")  # type: ignore[arg-type]
