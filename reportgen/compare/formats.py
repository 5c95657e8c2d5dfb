"""How the comparison pages write their numbers (percentages, percentage points, p-values)."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} pp"


def _signed(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def _p_value(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _count_rate(count: int | None, rate: float | None) -> str:
    if count is None:
        return "n/a"
    return f"{count} ({_pct(rate)})" if rate is not None else str(count)
