"""The comparison's subgroup table: "which subgroup did this change hurt?"."""

from __future__ import annotations

from reportgen.compare.formats import _pct, _pp
from reportgen.compare.metrics import CompareResult
from reportgen.compare.subgroups import CLUSTER_ALPHA, SliceDelta, change_made_it_fail
from reportgen.report.section import Block, Cell, Table, Text

NUMBERS = ["images", "accuracy baseline", "accuracy new", "Δ", "negative flips", "positive flips"]


def _numbers(d: SliceDelta) -> list[Cell]:
    return [
        d.n,
        _pct(d.accuracy_old),
        _pct(d.accuracy_new),
        _pp(d.delta),
        d.negative_flips,
        d.positive_flips,
    ]


def slice_blocks(r: CompareResult) -> list[Block]:
    """Per metadata subgroup, both models' accuracy, worst regression first (none without
    metadata)."""
    blocks: list[Block] = []
    if not r.slices:
        return _cluster_blocks(r)
    worst = r.slices[0]
    blocks.append(
        Table(
            caption=(
                "Which subgroup did this change hurt? Accuracy per metadata subgroup, the "
                "worst regression first (subgroups under 20 images last)"
            ),
            columns=["column", "value", *NUMBERS],
            rows=[[d.column, d.value or "(empty)", *_numbers(d)] for d in r.slices[:40]],
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
    return blocks + _cluster_blocks(r)


def _cluster_blocks(r: CompareResult) -> list[Block]:
    """Both models on the new model's failing clusters: was the failure already there?"""
    if not r.clusters:
        return []
    blocks: list[Block] = [
        Table(
            caption=(
                "Was this failure already there? Both models on the failing clusters the new "
                "model's slices section found in its own features (D1 …). They were chosen where "
                "the new model fails, so Δ leans negative by construction: read the baseline's "
                "accuracy — low too, the weakness predates this change; high, this change "
                "brought it (exact McNemar test on the cluster's flips)"
            ),
            columns=["cluster", *NUMBERS, "McNemar p"],
            rows=[[d.value, *_numbers(d), d.mcnemar_p] for d in r.clusters],
        )
    ]
    for d in r.clusters:
        both = (
            f"{d.value}: the baseline got {_pct(d.accuracy_old)} of its {d.n} images right, the "
            f"new model {_pct(d.accuracy_new)} ({d.negative_flips} negative, {d.positive_flips} "
            f"positive flips; McNemar p {d.mcnemar_p:.2g})"
        )
        if change_made_it_fail(d.delta, d.mcnemar_p):
            blocks.append(Text(f"{both}: this change made the model fail there.", "warning"))
        elif d.mcnemar_p < CLUSTER_ALPHA:
            blocks.append(
                Text(f"{both}: the weakness predates this change, which made it smaller.", "note")
            )
        else:
            blocks.append(
                Text(
                    f"{both}: no significant difference, so the failure is not shown to be new "
                    "with this change.",
                    "note",
                )
            )
    return blocks
