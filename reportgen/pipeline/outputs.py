"""Writing one run's outputs: everything rendered in memory first, then written atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from reportgen.compare.markdown import compare_markdown
from reportgen.config import Config
from reportgen.contract import PassResult
from reportgen.heads import Head
from reportgen.loading.folders import DataFolder
from reportgen.report.predictions import (
    FILE_NAME,
    PredictionSet,
    format_predictions,
    prediction_set,
)
from reportgen.report.render import (
    Encoding,
    Headline,
    ReportContext,
    overview_rows,
    render_html,
    render_html_once,
    render_markdown,
    to_json,
)
from reportgen.report.section import Section
from reportgen.report.text import safe_data, safe_text
from reportgen.runtime.writes import write_all_atomic


def markdown_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What summary.md shows first: the comparison's deltas and the gates."""
    if "compare" in summary:
        return {"compare_md": compare_markdown(summary["compare"], summary.get("gates", []))}
    return {}


def report_title(cfg: Config, summary: Mapping[str, Any]) -> str:
    root = summary["data"]["root"]
    return safe_text(cfg.output.title or f"{summary['model']['arch']} on {Path(root).name or root}")


def write_outputs(
    cfg: Config,
    summary: dict[str, Any],
    sections: list[Section],
    headlines: list[Headline],
    arrays: Callable[[], bytes],
    out_dir: Path,
    warn: Callable[[str], None],
    predictions: str | None = None,
) -> tuple[list[Path], list[str]]:
    """Render every output in memory, then write them all atomically.

    Nothing in ``out_dir`` changes until every output rendered: a failure while rendering (the PDF,
    say) leaves an existing report.html / summary.json from an earlier run untouched.
    ``arrays`` builds arrays.npz (called only with ``output.save_arrays``); ``predictions`` is
    the text of predictions.csv.
    """
    warnings: list[str] = []
    # Names that are not UTF-8 are shown escaped, never a crash (in place: the caller's summary
    # is the one the run returns).
    safe = safe_data(summary)
    summary.clear()
    summary.update(safe)
    report = ReportContext(
        title=report_title(cfg, summary),
        summary=summary,
        overview_rows=overview_rows(summary, headlines),
        headlines=headlines,
        sections=sections,
        skipped=summary["data"]["skipped"],
        config_yaml=yaml.safe_dump(
            summary["provenance"]["config"], sort_keys=False, allow_unicode=True
        ),
        versions=summary["provenance"]["versions"],
        extra=markdown_extra(summary),
    )
    budget = int(cfg.output.max_html_mb * 1024 * 1024)
    payloads: dict[Path, bytes | str] = {}
    encoding = Encoding()
    output: dict[str, Any] = {"html_budget_bytes": budget}
    if "html" in cfg.output.formats:
        html = render_html(report, budget)
        encoding = html.encoding
        html_bytes = len(html.html.encode("utf-8"))
        output.update(
            html_bytes=html_bytes,
            html_over_budget=html.over_budget,
            image_encoding=dataclasses.asdict(encoding),
        )
        if encoding != Encoding():
            msg = (
                f"report.html was over its {cfg.output.max_html_mb:g} MB budget: images re-encoded "
                f"(photo quality {encoding.photo_quality}, photo scale {encoding.photo_scale:g}, "
                f"line-art scale {encoding.line_scale:g}); final size {html_bytes / 1024 / 1024:.2f} MB"
            )
            if html.over_budget:
                msg += " — still over budget at the smallest setting"
            warn(msg)
            warnings.append(msg)
        payloads[out_dir / "report.html"] = html.html
    if "pdf" in cfg.output.formats:
        from reportgen.report.pdf import html_to_pdf

        # Same pictures as the HTML (already shrunk to its budget, if it had to be). A PDF that
        # cannot be rendered must not cost the user the HTML and summary already computed: it
        # is reported (exit code 1) and the rest is written. An interruption (KeyboardInterrupt)
        # still writes nothing, leaving an earlier report intact.
        try:
            pdf = html_to_pdf(render_html_once(report, encoding, for_pdf=True))
        except Exception as exc:
            msg = f"report.pdf could not be rendered: {type(exc).__name__}: {exc}"
            warn(msg)
            warnings.append(msg)
            output["failed"] = [msg]
        else:
            output["pdf_bytes"] = len(pdf)
            payloads[out_dir / "report.pdf"] = pdf
    if predictions is not None:
        payloads[out_dir / FILE_NAME] = predictions
        # The generation check: summary.json names the predictions.csv written with it, so a
        # folder left mixing two runs (a kill between the renames) is found by any reader.
        output["predictions_sha256"] = hashlib.sha256(predictions.encode("utf-8")).hexdigest()
    if cfg.output.save_arrays:
        payloads[out_dir / "arrays.npz"] = arrays()
    summary["output"] = output
    payloads[out_dir / "summary.md"] = render_markdown(report)
    # Renamed in this order, summary.json last: until it lands, the folder's summary.json is the
    # old one, which the new predictions.csv does not match.
    payloads[out_dir / "summary.json"] = to_json(summary)
    write_all_atomic(payloads)
    if output.get("failed"):
        # An older report.pdf would no longer match the report beside it.
        (out_dir / "report.pdf").unlink(missing_ok=True)
    return list(payloads), warnings


def arrays_npz(
    pass_result: PassResult, folder: DataFolder, analysis_arrays: Mapping[str, np.ndarray]
) -> bytes:
    """arrays.npz: the whole dataset's arrays, then every analysis' own (see the README)."""
    arrays: dict[str, np.ndarray] = {
        "dataset_ids": np.array(
            [folder.items[i].relpath for i in pass_result.item_index], dtype=np.str_
        ),
        "logits": pass_result.logits.float().cpu().numpy(),
        "labels": pass_result.labels.numpy(),
    }
    if pass_result.label_sets is not None:
        arrays["label_sets"] = pass_result.label_sets.numpy()
    if pass_result.features is not None:
        arrays["features"] = pass_result.features.float().cpu().numpy()
    arrays.update(analysis_arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def run_predictions(
    pass_result: PassResult,
    folder: DataFolder,
    logits: torch.Tensor,
    source: str,
    head: Head | None = None,
) -> PredictionSet:
    """One model's predictions on the run's readable images, in dataset order (predictions.csv's
    rows; the in-run comparison uses the same rows for the baseline's logits and head).
    ``head``: default the run's."""
    items = [folder.items[i] for i in pass_result.item_index]
    digests = {rel: digest for rel, _, digest in pass_result.manifest}
    return prediction_set(
        [it.relpath for it in items],
        [digests[it.relpath] for it in items],
        pass_result.labels.numpy(),
        folder.class_names,
        logits.float().cpu().numpy(),
        source=source,
        head=head or pass_result.head,
        label_sets=None if pass_result.label_sets is None else pass_result.label_sets.numpy(),
        metadata={
            name: [values[it.row] if it.row >= 0 else "" for it in items]
            for name, values in folder.metadata.items()
        },
    )


def predictions_text(pass_result: PassResult, folder: DataFolder) -> str:
    """predictions.csv: one row per readable image in dataset order (see the README)."""
    return format_predictions(run_predictions(pass_result, folder, pass_result.logits, "this run"))
