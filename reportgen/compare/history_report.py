"""The history page: figures, tables and the files ``reportgen history`` writes.

Charts, not one table per release, so that 200 releases stay readable: one small-multiples
figure of the trends (a line broken wherever the data changes), one heat-map of per-class recall
(the classes with the worst drops), one table of releases with links to their reports, one
table of consecutive changes.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.compare.formats import _pp
from reportgen.compare.history import History, Sort, build_history
from reportgen.compare.report import CompareRun, write_report_files
from reportgen.errors import ReportgenError
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.gates import evaluate_gates, parse_gates
from reportgen.report.render import (
    ReportContext,
    clean_floats,
    format_metric,
    markdown_escape,
)
from reportgen.report.section import Figure, Link, Section, Table, Text
from reportgen.runtime.outdir import (
    check_apart_from_inputs,
    prepare_output_dir,
)
from reportgen.version import __version__

MAX_HEATMAP_CLASSES = 30
"""The per-class heat-map shows the classes with the worst drops, at most this many."""


class HistoryRun(CompareRun):
    """What ``reportgen history`` wrote (exit codes as for ``reportgen compare``)."""


def _short(sha: Any) -> str:
    return sha[:12] if isinstance(sha, str) else "none"


def _ticks(ax: Any, labels: Sequence[str]) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / 24))  # at most ~24 labels, whatever the number of releases
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels([labels[i][:18] for i in range(0, n, step)], rotation=45, ha="right")


def _breaks(ax: Any, segments: Sequence[int]) -> None:
    for start in segments[1:]:
        ax.axvline(start - 0.5, color="#c0392b", linestyle="--", linewidth=1)


def trend_figure(h: History) -> Figure:
    labels = [r.label for r in h.releases]
    n = len(h.headlines)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = new_figure(3.4 * cols, 2.5 * rows)
    bounds = [*h.segments, len(h.releases)]
    for k, (key, label, _kind) in enumerate(h.headlines):
        ax = fig.add_subplot(rows, cols, k + 1)
        values = np.array([np.nan if v is None else v for v in h.trends[key]], dtype=float)
        for a, b in itertools.pairwise(bounds):
            xs = np.arange(a, b)
            ax.plot(xs, values[a:b], marker="o", markersize=3, color="#2c5d8f")
            if key == "accuracy":
                lo = [c[0] if c else np.nan for c in h.accuracy_ci[a:b]]
                hi = [c[1] if c else np.nan for c in h.accuracy_ci[a:b]]
                ax.fill_between(xs, lo, hi, color="#2c5d8f", alpha=0.18, linewidth=0)
        _breaks(ax, h.segments)
        ax.set_title(label, fontsize=9)
        _ticks(ax, labels)
        ax.grid(alpha=0.3)
    caption = (
        "Each headline metric per release, the value in that release's summary.json"
        + (
            "; accuracy with its Wilson 95 % interval (from predictions.csv)"
            if "accuracy" in h.trends
            else ""
        )
        + (
            "; red dashed lines: the evaluation data changed (the line breaks there — a trend "
            "across different data is not a trend)"
            if len(h.segments) > 1
            else ""
        )
        + "."
    )
    return Figure(
        figure_to_picture(fig), caption, "Trend charts of the headline metrics", wide=True
    )


def heatmap_figure(
    h: History, names: Sequence[str], matrix: np.ndarray, drops: np.ndarray, what: str
) -> tuple[Figure | None, list[int]]:
    """Rows (classes or subgroups) × releases in [0, 1], rows sorted by their worst drop."""
    if not names:
        return None, []
    order = sorted(range(len(names)), key=lambda j: (-drops[j], names[j]))
    shown = order[:MAX_HEATMAP_CLASSES]
    data = matrix[:, shown].T
    fig = new_figure(max(4.0, 0.35 * len(h.releases) + 2.5), max(2.0, 0.26 * len(shown) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([names[j][:28] for j in shown])
    _ticks(ax, [r.label for r in h.releases])
    _breaks(ax, h.segments)
    fig.colorbar(im, ax=ax, label=what, shrink=0.8)
    more = len(order) - len(shown)
    source = "each release's predictions.csv" if what == "recall" else "each release's summary.json"
    kind = "classes" if what == "recall" else "subgroups"
    caption = (
        f"{what.capitalize()} per {kind[:-1] if kind == 'classes' else 'subgroup'} (rows) and "
        f"release (columns), from {source}; {kind} sorted by their worst drop between two "
        "consecutive releases on the same data"
        + (f"; the {len(shown)} with the worst drops of {len(order)} {kind}" if more else "")
        + "; gray: no value in that release."
    )
    return Figure(figure_to_picture(fig), caption, f"{what} heat-map", wide=True), shown


def recall_figure(h: History) -> tuple[Figure | None, list[int]]:
    return heatmap_figure(h, h.class_names, h.recall, h.worst_drop, "recall")


def _link(out_dir: Path, release_path: Path, text: str) -> Link | str:
    target = release_path / "report.html"
    if not target.is_file():
        return text
    rel = os.path.relpath(target.resolve(), out_dir.resolve()).replace(os.sep, "/")
    return Link(text, rel)


def history_sections(h: History, out_dir: Path) -> list[Section]:
    labels = [r.label for r in h.releases]
    trends = Section(
        "history_trends",
        "Headline metrics over the releases",
        how_to_read=(
            "One point per release, in the order given. A fall that repeats over several "
            "releases is a trend; one that coincides with a red line is a change of the "
            "evaluation data, not of the model. The intervals show how much of a step could be "
            "noise from the number of images."
        ),
    )
    trends.add(trend_figure(h))
    starts = set(h.segments[1:])
    any_missing = any(r.missing for r in h.releases)  # the column only when it says something
    rows = []
    for i, r in enumerate(h.releases):
        gates = r.summary.get("gates") or []
        failed_sections = [
            s.get("name") for s in r.summary.get("sections", []) if s.get("status") == "failed"
        ]
        rows.append(
            [
                _link(out_dir, r.path, r.label),
                _short((r.summary.get("model") or {}).get("sha256")),
                _short(r.manifest) + (" (data changed)" if i in starts else ""),
                (r.summary.get("data") or {}).get("num_images"),
                *(format_metric(h.trends[k][i], kind) for k, _, kind in h.headlines[:4]),
                f"{sum(1 for g in gates if g.get('passed'))}/{len(gates)}" if gates else "none",
                ", ".join(str(s) for s in failed_sections) or "none",
                *(["; ".join(r.missing)] if any_missing else []),
            ]
        )
    trends.add(
        Table(
            "Releases (the first column links to each archived report)",
            [
                "release",
                "model SHA-256",
                "data manifest SHA-256",
                "images",
                *(label for _, label, _ in h.headlines[:4]),
                "gates passed",
                "sections failed",
                *(["missing"] if any_missing else []),
            ],
            rows,
        )
    )
    for folder, why in h.not_reports:
        trends.add(Text(f"{folder} is not a report folder and is left out: {why}", "warning"))
    sections = [trends]

    classes = Section(
        "history_classes",
        "Per-class recall over the releases",
        how_to_read=(
            "Green is a class the model gets right, red one it gets wrong. A row that turns "
            "from green to red is a class that has been sliding; the rows are sorted so that "
            "the worst single drop comes first."
        ),
    )
    figure, shown = recall_figure(h)
    if figure is None:
        classes.status, classes.reason = "skipped", "no release has labelled predictions"
    else:
        classes.add(figure)
        worst = [j for j in shown[:10] if h.worst_drop[j] > 0]
        if worst:
            classes.add(
                Table(
                    "The classes with the largest recall drop between consecutive releases",
                    ["class", "worst drop", "first release", "last release"],
                    [
                        [
                            h.class_names[j],
                            f"{100 * h.worst_drop[j]:.1f} pp",
                            _pct(h.recall[0, j]),
                            _pct(h.recall[-1, j]),
                        ]
                        for j in worst
                    ],
                )
            )
    sections.append(classes)

    if h.slice_names:
        subgroups = Section(
            "history_slices",
            "Subgroups over the releases",
            how_to_read=(
                "Accuracy per metadata subgroup (the slices section of each release): a row "
                "that turns red is a subgroup the model has been failing more and more."
            ),
        )
        figure, _ = heatmap_figure(
            h, h.slice_names, h.slice_accuracy, h.slice_worst_drop, "accuracy"
        )
        if figure is not None:
            subgroups.add(figure)
        sections.append(subgroups)

    changes = Section(
        "history_changes",
        "What changed at each release",
        how_to_read=(
            "Each row compares a release with the one before it on the images both report, "
            "matched by path and SHA-256 — the numbers reportgen compare gives for that pair. "
            "Negative flips were right before and are wrong now; McNemar's exact p says whether "
            "the flips are more one-sided than chance."
        ),
    )
    if not h.steps:
        changes.status, changes.reason = "skipped", "a single release: nothing to compare"
    else:
        step_rows = []
        for st in h.steps:
            n = st.numbers
            step_rows.append(
                [
                    f"{labels[st.old]} → {labels[st.new]}",
                    "changed" if st.data_changed else "same",
                    n.get("matched_images"),
                    n.get("negative_flips"),
                    _pct(n.get("negative_flip_rate")),
                    n.get("positive_flips"),
                    _pct(n.get("positive_flip_rate")),
                    n.get("mcnemar_p"),
                    _pp(n.get("accuracy_delta")),
                    st.reason or "",
                ]
            )
        changes.add(
            Table(
                "Consecutive releases",
                [
                    "step",
                    "data",
                    "matched",
                    "negative flips",
                    "rate",
                    "positive flips",
                    "rate",
                    "McNemar p",
                    "accuracy Δ",
                    "not compared because",
                ],
                step_rows,
            )
        )
    sections.append(changes)

    if h.verdicts:
        checks = Section(
            "history_checks",
            "Attribution checks over the releases",
            how_to_read=(
                "Per explanation method and release, the attribution_checks verdict: ok, fails "
                "the randomisation test (the maps barely change when the weights are "
                "randomised), or not better than a random map on deletion/insertion. A method "
                "that stops passing is a release whose maps can no longer be trusted."
            ),
        )
        checks.add(
            Table(
                "Verdicts per method (columns: releases)",
                ["method", *labels]
                if len(labels) <= 12
                else ["method", "releases ok", "first problem"],
                [
                    [m, *(v or "not run" for v in vs)]
                    if len(labels) <= 12
                    else [
                        m,
                        f"{sum(1 for v in vs if v == 'ok')}/{len(vs)}",
                        next(
                            (
                                f"{labels[i]}: {v}"
                                for i, v in enumerate(vs)
                                if v not in ("ok", None, "not run")
                            ),
                            "none",
                        ),
                    ]
                    for m, vs in h.verdicts.items()
                ],
            )
        )
        sections.append(checks)
    return sections


def _pct(value: Any) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f} %"
    )


def history_summary(h: History) -> dict[str, Any]:
    return {
        "releases": [
            {
                "label": r.label,
                "folder": str(r.path),
                "reportgen_version": r.summary.get("reportgen_version"),
                "model_sha256": (r.summary.get("model") or {}).get("sha256"),
                "manifest_sha256": r.manifest,
                "num_images": (r.summary.get("data") or {}).get("num_images"),
                "metrics": {k: h.trends[k][i] for k, _, _ in h.headlines},
                "accuracy_ci95": h.accuracy_ci[i],
                "missing": r.missing,
            }
            for i, r in enumerate(h.releases)
        ],
        "not_reports": [{"folder": f, "reason": why} for f, why in h.not_reports],
        "headlines": [{"key": k, "label": lab, "kind": kind} for k, lab, kind in h.headlines],
        "data_changes": [h.releases[i].label for i in h.segments[1:]],
        "steps": [
            {
                "from": h.releases[s.old].label,
                "to": h.releases[s.new].label,
                "data_changed": s.data_changed,
                "reason": s.reason,
                "notes": s.notes,
                **s.numbers,
            }
            for s in h.steps
        ],
        "per_class_recall": {
            "classes": h.class_names,
            "recall": [[None if math.isnan(v) else float(v) for v in row] for row in h.recall],
            "worst_drop": [float(v) for v in h.worst_drop],
        },
        "attribution_verdicts": h.verdicts,
        "slice_accuracy": {
            "subgroups": h.slice_names,
            "accuracy": [
                [None if math.isnan(v) else float(v) for v in row] for row in h.slice_accuracy
            ],
        },
    }


def history_markdown(h: History, gates: Sequence[dict[str, Any]]) -> str:
    lines = [f"### reportgen history: {len(h.releases)} releases", ""]
    if gates:
        failed = sum(1 for g in gates if not g["passed"])
        lines += [
            f"**Gates: {'all passed' if not failed else f'{failed} of {len(gates)} failed'}**",
            "",
        ]
        lines += ["| gate | value | result |", "|---|---|---|"]
        for g in gates:
            value = (
                g["value"]
                if g.get("value") is not None
                else markdown_escape(g.get("reason") or "no value")
            )
            lines.append(
                f"| {markdown_escape(g['expr'])} | {value} | {'pass' if g['passed'] else '**FAIL**'} |"
            )
        lines.append("")
    keys = h.headlines[:5]
    lines.append("| release | " + " | ".join(markdown_escape(lab) for _, lab, _ in keys) + " |")
    lines.append("|---" * (len(keys) + 1) + "|")
    for i, r in enumerate(h.releases):
        cells = [format_metric(h.trends[k][i], kind) for k, _, kind in keys]
        lines.append(f"| {markdown_escape(r.label)} | " + " | ".join(cells) + " |")
    for st in h.steps[-1:]:
        n = st.numbers
        lines += [
            "",
            f"Last step {markdown_escape(h.releases[st.old].label)} → "
            f"{markdown_escape(h.releases[st.new].label)}: "
            + (
                f"{n.get('negative_flips')} negative and {n.get('positive_flips')} positive flips "
                f"on {n.get('matched_images')} matched images."
                if not st.reason
                else f"not compared ({markdown_escape(st.reason)})."
            ),
        ]
    if len(h.segments) > 1:
        lines += [
            "",
            "The evaluation data changed at: "
            + ", ".join(markdown_escape(h.releases[i].label) for i in h.segments[1:])
            + ".",
        ]
    return "\n".join(lines) + "\n"


def write_history(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("html", "pdf"),
    gates: Sequence[str] = (),
    sort: Sort = "given",
    fallback_headlines: Sequence[tuple[str, str, str]] = (),
    max_html_mb: float = 15.0,
    warn: Callable[[str], None] = lambda _m: None,
) -> HistoryRun:
    """Read the report folders, write report.html/pdf, summary.json and summary.md to ``out_dir``."""
    if not dirs:
        raise ReportgenError("history: give at least one report folder")
    check_apart_from_inputs(out_dir, [(f"report folder {d}", d) for d in dirs])
    with prepare_output_dir(out_dir):
        h = build_history(dirs, sort=sort, fallback_headlines=fallback_headlines)
        known = list(h.metrics)
        parsed = parse_gates(list(gates), known, source="--fail-on")
        out = Path(out_dir)
        summary: dict[str, Any] = {
            "reportgen_version": __version__,
            "kind": "history",
            "history": clean_floats(history_summary(h)),
            "metrics": clean_floats(h.metrics),
        }
        if parsed:
            summary["gates"] = clean_floats(evaluate_gates(parsed, h.metrics))
        for folder, why in h.not_reports:
            warn(f"{folder} is not a report folder and is left out: {why}")
        sections = history_sections(h, out)
        last = h.releases[-1]
        report = ReportContext(
            title=f"Release history: {h.releases[0].label} → {last.label}"
            if len(h.releases) > 1
            else f"Release history: {last.label}",
            summary=summary,
            overview_rows=[
                (
                    "releases",
                    f"{len(h.releases)} ({', '.join(r.label for r in h.releases[:6])}{' ...' if len(h.releases) > 6 else ''})",
                ),
                (
                    "data changes",
                    ", ".join(h.releases[i].label for i in h.segments[1:])
                    or "none: every release on the same data",
                ),
                (
                    "last release",
                    f"{last.label} — {(last.summary.get('model') or {}).get('arch', '?')}",
                ),
                (
                    "left out",
                    f"{len(h.not_reports)} folder(s) that are not reports"
                    if h.not_reports
                    else "nothing",
                ),
            ],
            headlines=[],
            sections=sections,
            skipped=[],
            config_yaml="",
            versions={"reportgen": __version__, "python": platform.python_version()},
            template="history.html.j2",
        )
        files, warnings = write_report_files(
            report,
            summary,
            history_markdown(h, summary.get("gates", [])),
            out,
            formats=formats,
            max_html_mb=max_html_mb,
            warn=warn,
        )
        return HistoryRun(out, summary, sections, files, warnings)
