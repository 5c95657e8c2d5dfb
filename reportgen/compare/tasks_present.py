"""The comparison's binary and multi-label parts: the AUROC change with DeLong's test, the
per-label table (the label that lost most first), and flip captions for label sets."""

from __future__ import annotations

import numpy as np

from reportgen.compare.formats import _p_value
from reportgen.compare.metrics import CompareResult
from reportgen.compare.tasks import macro
from reportgen.report.section import Block, Cell, Table, format_number


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def task_rows(r: CompareResult) -> list[list[Cell]]:
    """Headline rows: the binary AUROC change, or the multi-label macro AUROC and worst label."""
    rows: list[list[Cell]] = []
    if r.task == "binary" and r.auroc is not None:
        a = r.auroc
        ci = "" if a.ci95 is None else f" (95 % CI {a.ci95[0]:+.3f} to {a.ci95[1]:+.3f})"
        rows.append(
            [
                "AUROC (DeLong's paired test, p)",
                format_number(a.auc_old),
                format_number(a.auc_new),
                f"{a.delta:+.3f}{ci}, p {_p_value(a.p)}",
            ]
        )
    if r.task == "multilabel" and r.label_changes:
        old = macro([d.auroc_old for d in r.label_changes])
        new = macro([d.auroc_new for d in r.label_changes])
        rows.append(
            [
                "macro AUROC (over the labels)",
                format_number(old),
                format_number(new),
                _signed(None if old is None or new is None else new - old),
            ]
        )
        worst = r.label_changes[0]
        if worst.auroc_delta is not None:
            rows.append(
                [
                    f"largest label AUROC loss: {worst.name}",
                    format_number(worst.auroc_old),
                    format_number(worst.auroc_new),
                    f"{worst.auroc_delta:+.3f}, p {_p_value(worst.auroc_p)}",
                ]
            )
    return rows


def label_blocks(r: CompareResult) -> list[Block]:
    """The per-label table of a multi-label comparison, worst AUROC change first."""
    if r.task != "multilabel" or not r.label_changes:
        return []
    return [
        Table(
            caption=(
                "Which label did this change hurt? Per label, both models' AUROC (DeLong's "
                "paired test of the change) and the label decisions that flipped, the largest "
                "AUROC loss first"
            ),
            columns=[
                "label",
                "images with it",
                "AUROC baseline",
                "AUROC new",
                "Δ AUROC",
                "p",
                "negative flips",
                "positive flips",
            ],
            rows=[
                [
                    d.name,
                    d.support,
                    format_number(d.auroc_old),
                    format_number(d.auroc_new),
                    _signed(d.auroc_delta),
                    _p_value(d.auroc_p),
                    d.negative_flips,
                    d.positive_flips,
                ]
                for d in r.label_changes
            ],
        )
    ]


def set_flip_text(r: CompareResult, p: int) -> str:
    """What changed on one image of a multi-label comparison: its labels, and each model's
    predicted set."""
    old, new = r.old, r.new
    assert old.predicted_sets is not None and new.predicted_sets is not None

    def names(row: np.ndarray) -> str:
        return " | ".join(new.class_name(int(j)) for j in np.flatnonzero(row)) or "none"

    text = f"baseline {names(old.predicted_sets[p])} → new {names(new.predicted_sets[p])}"
    if new.label_sets is not None and (new.label_sets[p] >= 0).all():
        return f"labels {names(new.label_sets[p] > 0)}; {text}"
    return text
