"""The PR-sized Markdown of a comparison (summary.md's deltas and gate results)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reportgen.compare.formats import _count_rate, _p_value, _pct, _pp, _signed
from reportgen.compare.subgroups import SLICE_MIN_SIZE, change_made_it_fail
from reportgen.report.render import markdown_escape
from reportgen.report.section import (
    format_number,
)


def _subgroup_rows(c: Mapping[str, Any]) -> list[str]:
    """The worst metadata subgroup (of at least SLICE_MIN_SIZE images) and the new model's
    failing clusters, both models' accuracy on each: "which subgroup did this change hurt?"."""
    rows = []
    worst = next((d for d in c.get("slices") or [] if d["n"] >= SLICE_MIN_SIZE), None)
    if worst is not None:
        name = markdown_escape(f"{worst['column']} = {worst['value'] or '(empty)'}")
        rows.append(
            f"| worst subgroup: {name} ({worst['n']} images) | {_pct(worst['accuracy_baseline'])} "
            f"| {_pct(worst['accuracy'])} | {_pp(worst['accuracy_delta'])} |"
        )
    for d in c.get("discovered_clusters") or []:
        p = d["mcnemar_p"]
        verdict = (
            "**this change made the model fail there**"
            if change_made_it_fail(d["accuracy_delta"], p)
            else "not shown to be new"
        )
        rows.append(
            f"| failing cluster {markdown_escape(d['id'])} ({d['n']} images) | "
            f"{_pct(d['accuracy_baseline'])} | {_pct(d['accuracy'])} | "
            f"{_pp(d['accuracy_delta'])} (McNemar p {_p_value(p)}): {verdict} |"
        )
    return rows


def compare_markdown(
    summary_compare: Mapping[str, Any], gates: Sequence[Mapping[str, Any]] = ()
) -> str:
    """A PR-sized Markdown summary: the gate results first, then the deltas and any warnings.

    ``summary_compare``: summary.json's ``compare`` object (:func:`compare_summary`);
    ``gates``: its ``gates`` list (``{expr, value, passed, reason}``). User text is escaped.
    """
    c = summary_compare
    lines: list[str] = []
    if gates:
        failed = sum(1 for g in gates if not g["passed"])
        lines.append(
            f"**Gates: {'all ' + str(len(gates)) + ' passed' if not failed else f'{failed} of {len(gates)} failed'}**"
        )
        lines.append("")
        lines.append("| gate | value | result |")
        lines.append("|---|---|---|")
        for g in gates:
            value = (
                format_number(g["value"], 4)
                if g.get("value") is not None
                else markdown_escape(g.get("reason") or "no value")
            )
            lines.append(
                f"| {markdown_escape(g['expr'])} | {value} | "
                f"{'pass' if g['passed'] else '**FAIL**'} |"
            )
        lines.append("")
    labelled = c.get("flip_meaning") == "label"
    lines.append("| | baseline | new | change |")
    lines.append("|---|---|---|---|")
    if labelled:
        ci = c.get("accuracy_delta_ci95")
        what = "exact match" if c.get("task") == "multilabel" else "accuracy"
        lines.append(
            f"| {what} | {_pct(c.get('accuracy_baseline'))} | {_pct(c.get('accuracy'))} | "
            f"{_pp(c.get('accuracy_delta'))}"
            + ("" if not ci else f" (95 % CI {100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})")
            + " |"
        )
        lines.append(f"| McNemar p | | | {_p_value(c.get('mcnemar_p'))} |")
        lines.append(
            f"| negative flips | | | {_count_rate(c.get('negative_flips'), c.get('negative_flip_rate'))} |"
        )
        lines.append(
            f"| positive flips | | | {_count_rate(c.get('positive_flips'), c.get('positive_flip_rate'))} |"
        )
        lines.append(
            f"| ECE | {format_number(c.get('ece_baseline'))} | {format_number(c.get('ece'))} | "
            f"{_signed(c.get('ece_delta'))} |"
        )
        for prefix, title in (("auroc", "AUROC"), ("macro_auroc", "macro AUROC")):
            if c.get(prefix) is not None or c.get(f"{prefix}_baseline") is not None:
                p_text = (
                    f" (DeLong p {_p_value(c.get('auroc_delta_p'))})" if prefix == "auroc" else ""
                )
                lines.append(
                    f"| {title} | {format_number(c.get(f'{prefix}_baseline'))} | "
                    f"{format_number(c.get(prefix))} | {_signed(c.get(f'{prefix}_delta'))}"
                    f"{p_text} |"
                )
        lines.extend(_subgroup_rows(c))
    else:
        lines.append(
            "| predictions changed (unlabelled) | | | "
            f"{_count_rate(c.get('negative_flips'), c.get('negative_flip_rate'))} |"
        )
    lines.append(f"| matched images | | | {c.get('matched_images', 'n/a')} |")
    for key, title in (
        ("linear_cka", "linear CKA"),
        ("knn_overlap", "k-NN overlap"),
        ("explanation_rank_corr", "explanation rank corr."),
    ):
        if c.get(key) is not None:
            lines.append(f"| {title} | | | {format_number(c[key])} |")
    notes = c.get("notes") or []
    if notes:
        lines.append("")
        lines.extend(f"- **Warning:** {markdown_escape(n)}" for n in notes)
    return "\n".join(lines) + "\n"
