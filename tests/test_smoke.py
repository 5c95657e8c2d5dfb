"""End to end through the library on a tiny model: every enabled section renders."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_config, make_context, write_image_folder

from reportgen.api import run_report


def test_tiny_report_end_to_end(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    # 18 images: clusters of 5 are tested, so the slices section's discovery runs too.
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights), "analyses.slices.min_size": 5})
    result = run_report(cfg)
    assert result.exit_code == 0, [(s.name, s.status, s.reason) for s in result.sections]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"]["num_images"] == 18
    assert {s["status"] for s in summary["sections"]} == {"ok"}
    html = (tmp_path / "out" / "report.html").read_text()
    for s in result.sections:
        assert f'id="section-{s.name}"' in html


def test_context_has_pass_results(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images")
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tiny_weights)}))
    assert ctx.pass_result.features is not None
    assert ctx.pass_result.features.shape == (18, 12)  # input of fc2
    assert ctx.pass_result.logits.shape == (18, 3)
    assert len(ctx.queries) == 3
    assert sorted(ctx.pass_result.labels[ctx.queries].tolist()) == [0, 1, 2]
