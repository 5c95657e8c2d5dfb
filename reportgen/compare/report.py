"""``reportgen compare OLD_DIR NEW_DIR``: a comparison report from two archived report folders.

No model is loaded: per-image parts come from each folder's predictions.csv, feature and
explanation parts from arrays.npz when both folders have it. The outputs (report.html,
report.pdf, summary.json, summary.md) are rendered in memory and written atomically.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.compare.folders import folder_thumbnails, read_report_folder
from reportgen.compare.markdown import compare_markdown
from reportgen.compare.matching import compare_folders
from reportgen.compare.metrics import compare_summary
from reportgen.compare.present import compare_section
from reportgen.report.gates import evaluate_gates, gates_failed, known_metric_names, parse_gates
from reportgen.report.render import (
    ReportContext,
    clean_floats,
    markdown_escape,
    render_html,
    render_html_once,
    to_json,
)
from reportgen.report.section import Section
from reportgen.runtime.outdir import (
    check_apart_from_inputs,
    prepare_output_dir,
    remove_stale_outputs,
)
from reportgen.runtime.writes import write_all_atomic
from reportgen.version import __version__

EXIT_OK, EXIT_OUTPUT_FAILED, EXIT_GATE_FAILED = 0, 1, 3


@dataclass
class CompareRun:
    out_dir: Path
    summary: dict[str, Any]
    sections: list[Section]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rank: int = 0

    @property
    def exit_code(self) -> int:
        if gates_failed(self.summary.get("gates", [])):
            return EXIT_GATE_FAILED
        return EXIT_OUTPUT_FAILED if self.summary.get("output", {}).get("failed") else EXIT_OK


def _side(folder: Any) -> dict[str, Any]:
    s = folder.summary
    return {
        "folder": str(folder.path),
        "arch": folder.arch,
        "checkpoint_sha256": s.get("model", {}).get("sha256"),
        "manifest_sha256": s.get("data", {}).get("manifest_sha256"),
        "reportgen_version": folder.version,
        "num_images": s.get("data", {}).get("num_images"),
    }


def _data_root(folder: Any) -> Path:
    """The new run's data folder (recorded relative to its report folder when inside it)."""
    root = Path(str(folder.summary.get("data", {}).get("root", "")))
    return root if root.is_absolute() else folder.path / root


def compare_reports(
    old_dir: str | Path,
    new_dir: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("html", "pdf"),
    gates: Sequence[str] = (),
    seed: int = 0,
    allow_version_mismatch: bool = False,
    max_html_mb: float = 15.0,
    warn: Callable[[str], None] = lambda _m: None,
) -> CompareRun:
    """Compare ``new_dir`` against ``old_dir`` and write the comparison into ``out_dir``.

    The output folder gets the run's rules: apart from the inputs, checked and locked before any
    work (a second comparison into it fails at once), written atomically, and left describing
    this comparison only (a report.pdf of an earlier one with more formats is removed).
    """
    check_apart_from_inputs(
        out_dir, [("the old report folder", old_dir), ("the new report folder", new_dir)]
    )
    with prepare_output_dir(out_dir):
        return _compare_into(
            old_dir,
            new_dir,
            out_dir,
            formats=formats,
            gates=gates,
            seed=seed,
            allow_version_mismatch=allow_version_mismatch,
            max_html_mb=max_html_mb,
            warn=warn,
        )


def _compare_into(
    old_dir: str | Path,
    new_dir: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str],
    gates: Sequence[str],
    seed: int,
    allow_version_mismatch: bool,
    max_html_mb: float,
    warn: Callable[[str], None],
) -> CompareRun:
    old, new = read_report_folder(old_dir), read_report_folder(new_dir)
    known = known_metric_names(new.summary.get("metrics", {}), compare=True)
    parsed = parse_gates(list(gates), known, source="--fail-on")
    result = compare_folders(
        old_dir, new_dir, seed=seed, allow_version_mismatch=allow_version_mismatch
    )
    root = _data_root(new)
    matched = dict(zip(result.new.paths, result.new.sha256, strict=True))
    # Images named by path under the root (a folder, a manifest's root) can be shown; shard
    # members and dataset rows are listed by name (reading them needs the source, not a path).
    by_path = new.summary.get("data", {}).get("source", "folder") in ("folder", "manifest")
    section = compare_section(
        result,
        thumbnails=folder_thumbnails(root, matched) if by_path and root.is_dir() else None,
    )
    compare = clean_floats(compare_summary(result))
    summary: dict[str, Any] = {
        "reportgen_version": __version__,
        "kind": "compare",
        "baseline": _side(old),
        "new": _side(new),
        "metrics": new.summary.get("metrics", {}),
        "compare": compare,
        "sections": [{"name": section.name, "title": section.title, "status": section.status}],
    }
    if parsed:
        summary["gates"] = clean_floats(
            evaluate_gates(parsed, summary["metrics"], summary["compare"])
        )
    versions = {"reportgen": __version__, "python": platform.python_version()}
    report = ReportContext(
        title=f"{new.arch} against {old.arch}",
        summary=summary,
        overview_rows=[
            ("baseline", f"{old.arch} — {old.path}"),
            ("new", f"{new.arch} — {new.path}"),
            ("matched images", str(compare.get("matched_images"))),
        ],
        headlines=[],
        sections=[section],
        skipped=[],
        config_yaml="",
        versions=versions,
        template="compare.html.j2",
    )
    out = Path(out_dir)
    title = f"### reportgen compare: {markdown_escape(new.arch)} against {markdown_escape(old.arch)}\n\n"
    body = compare_markdown(compare, summary.get("gates", []))
    files, warnings = write_report_files(
        report,
        summary,
        title + body.rstrip("\n") + "\n",
        out,
        formats=formats,
        max_html_mb=max_html_mb,
        warn=warn,
    )
    return CompareRun(out, summary, [section], files, warnings)


def write_report_files(
    report: ReportContext,
    summary: dict[str, Any],
    markdown: str,
    out: Path,
    *,
    formats: Sequence[str],
    max_html_mb: float,
    warn: Callable[[str], None],
) -> tuple[list[Path], list[str]]:
    """Render report.html (within the size budget) and report.pdf as asked, add summary.json
    (with ``output``) and summary.md, write them atomically and remove stale outputs (e.g. the
    PDF of an earlier report). A PDF that cannot be rendered is a warning and
    ``summary.output.failed``, not a lost report. Returns (files written, warnings)."""
    payloads: dict[Path, bytes | str] = {}
    output: dict[str, Any] = {}
    warnings: list[str] = []
    html = render_html(report, int(max_html_mb * 1024 * 1024))
    if "html" in formats:
        payloads[out / "report.html"] = html.html
        output["html_bytes"] = len(html.html.encode("utf-8"))
    if "pdf" in formats:
        from reportgen.report.pdf import html_to_pdf

        try:
            payloads[out / "report.pdf"] = html_to_pdf(
                render_html_once(report, html.encoding, for_pdf=True)
            )
        except Exception as exc:
            msg = f"report.pdf could not be rendered: {type(exc).__name__}: {exc}"
            warn(msg)
            warnings.append(msg)
            output["failed"] = [msg]
    summary["output"] = output
    payloads[out / "summary.json"] = to_json(summary)
    payloads[out / "summary.md"] = markdown
    out.mkdir(parents=True, exist_ok=True)
    write_all_atomic(payloads)
    remove_stale_outputs(out, list(payloads))
    return list(payloads), warnings
