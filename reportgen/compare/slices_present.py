"""The comparison's subgroup table: "which subgroup did this change hurt?"."""

from __future__ import annotations

from reportgen.compare.formats import _pct, _pp
from reportgen.compare.metrics import CompareResult
from reportgen.report.section import Block, Table, Text


def slice_blocks(r: CompareResult) -> list[Block]:
    """Per metadata subgroup, both models' accuracy, worst regression first (none without
    metadata)."""
    blocks: list[Block] = []
    if not r.slices:
        return blocks
    worst = r.slices[0]
    blocks.append(
        Table(
            caption=(
                "Which subgroup did this change hurt? Accuracy per metadata subgroup, the "
                "worst regression first (subgroups under 20 images last)"
            ),
            columns=[
                "column",
                "value",
                "images",
                "accuracy baseline",
                "accuracy new",
                "Δ",
                "negative flips",
                "positive flips",
            ],
            rows=[
                [
                    d.column,
                    d.value or "(empty)",
                    d.n,
                    _pct(d.accuracy_old),
                    _pct(d.accuracy_new),
                    _pp(d.delta),
                    d.negative_flips,
                    d.positive_flips,
                ]
                for d in r.slices[:40]
            ],
        )
    )
    if worst.delta < 0 and worst.n >= 20:
        blocks.append(
            Text(
                f"The largest subgroup regression: {worst.column} = {worst.value or '(empty)'} "
                f"{_pp(worst.delta)} on {worst.n} images ({worst.negative_flips} negative "
                "flips).",
                kind="warning"
                if r.accuracy_delta is not None and worst.delta < r.accuracy_delta - 0.01
                else "note",
            )
        )
    return blocks
