"""The cost plan: every section's model passes said before the work, and counted after it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import make_config, write_image_folder
from tiny_models import tiny_net

from reportgen.api import run_report
from reportgen.contract import Cost
from reportgen.pipeline.cost import describe_plan, eta_seconds


def test_planned_passes_are_the_passes_the_sections_make(tmp_path: Path) -> None:
    """The plan is not an estimate on a CNN: each section's planned forward and
    forward+backward images equal those a hook on the model counts while it runs; the
    attribution checks' plan leaves out the maps saliency and occlusion share with it."""
    write_image_folder(tmp_path / "images")
    torch.save(tiny_net(3).state_dict(), tmp_path / "tiny.pt")
    # 18 images: clusters of 5 are tested, so the slices section runs (and plans no pass).
    cfg = make_config(
        tmp_path, {"model.weights": str(tmp_path / "tiny.pt"), "analyses.slices.min_size": 5}
    )
    result = run_report(cfg)
    assert all(s.status == "ok" for s in result.sections), [
        (s.name, s.reason) for s in result.sections if s.status != "ok"
    ]
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert set(timings["plan"]) == {s.name for s in result.sections}
    assert timings["plan"] == timings["passes"]
    # Occlusion: 3 queries × (13×13 positions of an 8-px window at stride 2 on 32 px, + 1).
    assert timings["plan"]["occlusion"] == {"forward": 3 * (13 * 13 + 1), "backward": 0}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["run"]["planned_passes"] == timings["plan"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "model passes planned" in html and "occlusion: 510 forward" in html

    # Without saliency and occlusion the checks compute those originals themselves: the plan
    # (and the count) grows by exactly their share.
    alone = make_config(
        tmp_path,
        {"model.weights": str(tmp_path / "tiny.pt"), "output.dir": str(tmp_path / "alone")},
        analyses=["attribution_checks"],
    )
    run_report(alone)
    t2 = json.loads((tmp_path / "alone" / "timings.json").read_text())
    assert t2["plan"] == t2["passes"]
    extra = (
        t2["plan"]["attribution_checks"]["backward"]
        - timings["plan"]["attribution_checks"]["backward"]
    )
    # gradient, SmoothGrad (25), guided backprop, Grad-CAM, IG (32) on the 3 queries.
    assert extra == 3 * (1 + 25 + 1 + 1 + 32)


def test_eta_uses_the_speed_of_the_sections_already_run() -> None:
    costs = {"a": Cost(forward=100), "b": Cost(backward=100), "c": None}
    assert eta_seconds(costs, {}, first_rate=50.0) == (100 + 300) / 50.0
    # "a" ran at 10 forward images/s: "b" (300 forward equivalents) needs 30 s more.
    assert eta_seconds(costs, {"a": 10.0}, first_rate=50.0) == 30.0
    assert eta_seconds(costs, {}, first_rate=None) is None
    assert "a 100 forward; b 100 forward+backward" in describe_plan(costs)
    assert "400 forward-image equivalents" in describe_plan(costs)
