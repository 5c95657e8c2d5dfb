"""Gate expressions: parsing, validation with nearest names, evaluation."""

from __future__ import annotations

import math

import pytest

from reportgen.errors import ConfigError
from reportgen.report.gates import (
    COMPARE_KEYS,
    Gate,
    evaluate_gates,
    gates_failed,
    known_metric_names,
    parse_gate,
    parse_gates,
)

METRICS = ["accuracy", "ece", "knn_agreement_feature", "num_labelled"]
KNOWN = known_metric_names(METRICS)


@pytest.mark.parametrize(
    ("expr", "metric", "op", "threshold"),
    [
        ("accuracy>=0.9", "accuracy", ">=", 0.9),
        ("  accuracy >= 0.9  ", "accuracy", ">=", 0.9),
        ("compare.negative_flip_rate<=0.01", "compare.negative_flip_rate", "<=", 0.01),
        ("compare.accuracy_delta>=-0.005", "compare.accuracy_delta", ">=", -0.005),
        ("compare.accuracy_delta >= -.005", "compare.accuracy_delta", ">=", -0.005),
        ("ece<.1", "ece", "<", 0.1),
        ("ece < 1e-1", "ece", "<", 0.1),
        ("num_labelled>100", "num_labelled", ">", 100.0),
        ("num_labelled==+100", "num_labelled", "==", 100.0),
        ("compare.mcnemar_p!=1", "compare.mcnemar_p", "!=", 1.0),
        ("accuracy>=5.", "accuracy", ">=", 5.0),
        ("compare.matched_images>=2E3", "compare.matched_images", ">=", 2000.0),
    ],
)
def test_parse(expr: str, metric: str, op: str, threshold: float) -> None:
    g = parse_gate(expr, KNOWN)
    assert g == Gate(expr.strip(), metric, op, threshold)
    assert g.is_compare == metric.startswith("compare.")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("accuracy=0.9", "unknown operator '=' \\(did you mean '=='\\?\\)"),
        ("accuracy=>0.9", "unknown operator '=>' \\(did you mean '>='\\?\\)"),
        ("accuracy=<0.9", "did you mean '<='"),
        ("accuracy<>0.9", "did you mean '!='"),
        ("accuracy!0.9", "unknown operator '!'; use one of < <= > >= == !="),
        ("accuracy>>0.9", "unknown operator '>>'"),
        ("accuracy>=", "no number after '>='"),
        ("accuracy>=90%", "'90%' is not a plain number"),
        ("accuracy>=1_000", "'1_000' is not a plain number"),
        ("accuracy>=0.9 0.8", "is not a plain number"),
        ("accuracy>=nan", "must be a finite number, not 'nan'"),
        ("accuracy>=inf", "must be a finite number"),
        ("accuracy>=1e309", "'1e309' is too large to be a finite number"),
        ("accuracy<=-2e308", "too large to be a finite number"),
        ("accuracy ≥ 0.9", "'≥' is not an operator here; write '>='"),
        ("accuracy≤0.9", "write '<='"),
        ("compare.negative_flip_rate ≠ 0", "write '!='"),
        ("accuracy 0.9", "expected <metric> <op> <number>"),
        ("", "expected <metric> <op> <number>"),
        (">=0.9", "expected <metric> <op> <number>"),
        ("acc-uracy>=0.9", "'acc-uracy' is not a metric name"),
        ("acuracy>=0.9", "unknown metric 'acuracy' \\(did you mean 'accuracy'"),
        ("compare.negativ_flip_rate<=0.01", "did you mean 'compare.negative_flip_rate'"),
        ("negative_flip_rate<=0.01", "did you mean 'compare.negative_flip_rate'"),
        ("compare.zzz<=0.01", "unknown metric 'compare.zzz';"),
    ],
)
def test_parse_errors_name_the_expression(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_gate(expr, KNOWN, source="--fail-on")
    assert str(info.value).startswith(f"--fail-on {expr.strip()!r}: ")


def test_compare_names_only_when_comparing() -> None:
    assert known_metric_names(METRICS, compare=False) == METRICS
    assert [n for n in KNOWN if n.startswith("compare.")] == [f"compare.{k}" for k in COMPARE_KEYS]
    with pytest.raises(ConfigError, match=r"unknown metric 'compare\.accuracy'"):
        parse_gate("compare.accuracy>=0.9", known_metric_names(METRICS, compare=False))


def test_evaluate_each_operator_and_boundaries() -> None:
    metrics = {"accuracy": 0.9, "ece": 0.05}
    exprs = [
        "accuracy>=0.9",
        "accuracy>0.9",
        "accuracy<=0.9",
        "accuracy<0.9",
        "accuracy==0.9",
        "accuracy!=0.9",
        "ece<0.1",
    ]
    results = evaluate_gates(parse_gates(exprs, KNOWN), metrics)
    assert [r["passed"] for r in results] == [True, False, True, False, True, False, True]
    assert [r["expr"] for r in results] == exprs
    assert all(r["value"] in (0.9, 0.05) and r["reason"] is None for r in results)
    assert gates_failed(results) and not gates_failed(results[:1])
    assert not gates_failed([])


def test_metric_without_a_value_fails_with_that_said() -> None:
    gates = parse_gates(
        [
            "accuracy>=0.5",
            "ece<=0.1",
            "knn_agreement_feature>=0.5",
            "num_labelled>=1",
            "compare.linear_cka>=0.5",
            "compare.accuracy_delta>=0",
            "compare.negative_flip_rate<=0.1",
        ],
        KNOWN,
    )
    compare = {
        "linear_cka": None,
        "accuracy_delta": None,
        "negative_flip_rate": 0.05,
        "flip_meaning": "prediction_changed",
        "left_out": {"features": "the baseline folder has no arrays.npz"},
    }
    metrics = {
        "accuracy": None,
        "ece": math.nan,
        "knn_agreement_feature": "n/a",
        "num_labelled": True,
    }
    r = evaluate_gates(gates, metrics, compare)
    assert [x["passed"] for x in r] == [False, False, False, False, False, False, True]
    assert r[0]["reason"] == "accuracy has no value (the images are unlabelled)"
    assert r[1]["reason"] == "ece has no value (the images are unlabelled)"
    assert r[2]["reason"] == "knn_agreement_feature is 'n/a', not a number"
    assert r[3]["reason"] == "num_labelled is True, not a number"
    assert r[4]["reason"] == (
        "compare.linear_cka has no value (features left out: the baseline folder has no arrays.npz)"
    )
    assert r[5]["reason"] == "compare.accuracy_delta has no value (the images are unlabelled)"
    assert r[6] == {
        "expr": "compare.negative_flip_rate<=0.1",
        "value": 0.05,
        "passed": True,
        "reason": None,
    }
    assert all(x["value"] is None for x in r[:6])
    no_compare = evaluate_gates(gates[-1:], metrics, None)
    assert no_compare[0]["passed"] is False
    assert no_compare[0]["reason"] == "no comparison was made (no baseline)"


def test_integers_compare_as_numbers() -> None:
    r = evaluate_gates(parse_gates(["compare.negative_flips<=3"], KNOWN), {}, {"negative_flips": 3})
    assert r[0]["passed"] is True and r[0]["value"] == 3.0
