"""CI gates: ``--fail-on EXPR`` conditions that must hold for a run or a comparison to pass.

``EXPR`` is ``<metric> <op> <number>`` (spaces optional), ``op`` one of ``< <= > >= == !=``,
``<metric>`` a key of summary.json's ``metrics`` (``accuracy``, ``ece``, ...) or ``compare.<key>``
with a key of :data:`COMPARE_KEYS`. The expression states what must be true:
``accuracy>=0.9`` fails when accuracy is below 0.9. A metric without a value (None, NaN, not a
number) fails its gate, with that said.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.errors import ConfigError, did_you_mean, nearest

COMPARE_KEYS: tuple[str, ...] = (
    "accuracy_baseline",
    "accuracy",
    "accuracy_delta",
    "mcnemar_p",
    "negative_flips",
    "positive_flips",
    "negative_flip_rate",
    "positive_flip_rate",
    "ece_baseline",
    "ece",
    "ece_delta",
    "matched_images",
    "labelled_images",
    "changed_predictions",
    "linear_cka",
    "knn_overlap",
    "explanation_rank_corr",
    "filter_cosine_mean",
    "slices_worst_delta",
    "auroc_baseline",
    "auroc",
    "auroc_delta",
    "auroc_delta_p",
    "macro_auroc_baseline",
    "macro_auroc",
    "macro_auroc_delta",
    "worst_label_auroc_delta",
)
"""The numeric keys of summary.json's ``compare`` object, usable as ``compare.<key>`` in a gate."""

COMPARE_PREFIX = "compare."

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}

_EXPR = re.compile(
    r"\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)"
    r"\s*(?P<op><=|>=|==|!=|<|>)"
    r"\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
)
_LOOSE = re.compile(r"\s*(?P<metric>[^<>=!\s]+)\s*(?P<op>[<>=!]+)\s*(?P<number>.*?)\s*")
_OP_HINTS = {"=": "==", "=<": "<=", "=>": ">=", "<>": "!=", "=!": "!=", "===": "=="}


@dataclass(frozen=True)
class Gate:
    expr: str
    """The expression as given (surrounding spaces removed)."""
    metric: str
    """``accuracy`` or ``compare.negative_flip_rate``."""
    op: str
    threshold: float

    @property
    def is_compare(self) -> bool:
        return self.metric.startswith(COMPARE_PREFIX)


def known_metric_names(metrics: Iterable[str], *, compare: bool = True) -> list[str]:
    """The names a gate may use: the given summary metrics, plus ``compare.<key>`` when a
    comparison is made."""
    names = list(dict.fromkeys(metrics))
    if compare:
        names += [COMPARE_PREFIX + k for k in COMPARE_KEYS]
    return names


def parse_gate(expr: str, known: Iterable[str], *, source: str = "gate") -> Gate:
    """Parse and validate one ``<metric> <op> <number>`` expression.

    ``known``: every metric name the gate may use (see :func:`known_metric_names`).
    Raises :class:`ConfigError` naming ``source`` and the expression: a malformed expression, an
    unknown operator or number, or an unknown metric (with the nearest known names).
    """
    known_list = list(known)
    text = expr.strip()
    where = f"{source} {text!r}"
    typeset = [c for c in ("≥", "≤", "≠", "＝", "＜", "＞") if c in text]
    if typeset:
        ascii_ops = {"≥": ">=", "≤": "<=", "≠": "!=", "＝": "==", "＜": "<", "＞": ">"}
        raise ConfigError(
            f"{where}: {typeset[0]!r} is not an operator here; write "
            f"{ascii_ops[typeset[0]]!r} (one of < <= > >= == !=)"
        )
    m = _EXPR.fullmatch(text)
    if m is not None and not math.isfinite(float(m["number"])):
        raise ConfigError(
            f"{where}: the threshold {m['number']!r} is too large to be a finite number; "
            "write a finite threshold"
        )
    if m is None:
        loose = _LOOSE.fullmatch(text)
        if loose is None or not loose["metric"]:
            raise ConfigError(
                f"{where}: expected <metric> <op> <number>, e.g. 'accuracy>=0.9' or "
                "'compare.negative_flip_rate<=0.01' (op one of < <= > >= == !=)"
            )
        op = loose["op"]
        if op not in OPERATORS:
            hint = f" (did you mean '{_OP_HINTS[op]}'?)" if op in _OP_HINTS else ""
            raise ConfigError(f"{where}: unknown operator {op!r}{hint}; use one of < <= > >= == !=")
        number = loose["number"]
        if not number:
            raise ConfigError(f"{where}: no number after {op!r}")
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{where}: the threshold must be a finite number, not {number!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", loose["metric"]):
            raise ConfigError(f"{where}: {loose['metric']!r} is not a metric name")
        raise ConfigError(
            f"{where}: {number!r} is not a plain number (write e.g. 0.9, -0.005 or 1e-3; "
            "no %, units or thousands separators)"
        )
    metric = m["metric"]
    if metric not in known_list:
        if metric.startswith(COMPARE_PREFIX):
            # Match the key alone: the shared prefix would make every compare name look close.
            keys = [k[len(COMPARE_PREFIX) :] for k in known_list if k.startswith(COMPARE_PREFIX)]
            close = [COMPARE_PREFIX + k for k in nearest(metric[len(COMPARE_PREFIX) :], keys)]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        else:
            hint = did_you_mean(metric, known_list)
        raise ConfigError(
            f"{where}: unknown metric {metric!r}{hint}; "
            "a key of summary.json's metrics, or compare.<key> for a comparison"
        )
    return Gate(text, metric, m["op"], float(m["number"]))


def parse_gates(exprs: Sequence[str], known: Iterable[str], *, source: str = "gate") -> list[Gate]:
    """:func:`parse_gate` for each expression (the first bad one raises)."""
    known_list = list(known)
    return [parse_gate(e, known_list, source=source) for e in exprs]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate_gates(
    gates: Sequence[Gate],
    metrics: Mapping[str, Any],
    compare: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Check each gate against summary.json's ``metrics`` and ``compare`` objects.

    Returns ``[{expr, value, passed, reason}]`` in the gates' order; ``reason`` is None for a
    gate that could be checked, else why it failed without a value.
    """
    out: list[dict[str, Any]] = []
    for g in gates:
        if g.is_compare:
            key = g.metric[len(COMPARE_PREFIX) :]
            if compare is None:
                raw, reason = None, "no comparison was made (no baseline)"
            else:
                raw = compare.get(key)
                reason = f"{g.metric} has no value" + _why_none(key, compare)
        else:
            raw = metrics.get(g.metric)
            reason = f"{g.metric} has no value" + (
                " (the images are unlabelled)" if g.metric in ("accuracy", "ece") else ""
            )
        value = _number(raw)
        if value is None:
            if raw is not None and not (isinstance(raw, float) and math.isnan(raw)):
                reason = f"{g.metric} is {raw!r}, not a number"
            out.append({"expr": g.expr, "value": None, "passed": False, "reason": reason})
            continue
        passed = OPERATORS[g.op](value, g.threshold)
        out.append({"expr": g.expr, "value": value, "passed": bool(passed), "reason": None})
    return out


def _why_none(key: str, compare: Mapping[str, Any]) -> str:
    left = compare.get("left_out")
    parts = {
        "linear_cka": "features",
        "knn_overlap": "features",
        "explanation_rank_corr": "explanations",
        "filter_cosine_mean": "filters",
    }
    if isinstance(left, Mapping):
        part = parts.get(key)
        if part in left:
            return f" ({part} left out: {left[part]})"
    if compare.get("flip_meaning") == "prediction_changed" and key in (
        "accuracy",
        "accuracy_baseline",
        "accuracy_delta",
        "mcnemar_p",
        "positive_flips",
        "positive_flip_rate",
        "ece",
        "ece_baseline",
        "ece_delta",
    ):
        return " (the images are unlabelled)"
    return ""


def gates_failed(results: Sequence[Mapping[str, Any]]) -> bool:
    """True when any gate failed (the CLI then exits with code 3)."""
    return any(not r["passed"] for r in results)
