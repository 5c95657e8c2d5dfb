"""Silently wrong numbers made loud: what the pipeline can tell about the model and the folders
goes to stderr, the top of the report and summary.json's warnings — and changes what is explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_config, write_image_folder
from tiny_models import TinyNet, tiny_net
from torch import nn

from reportgen.api import run_report

ONLY = ["audit", "occlusion"]


def run(tmp_path: Path, overrides: dict[str, Any], analyses: list[str] = ONLY) -> dict[str, Any]:
    messages: list[str] = []
    cfg = make_config(tmp_path, {"output.save_arrays": True, **overrides}, analyses=analyses)
    result = run_report(cfg, warn=messages.append)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["warnings"] == result.summary["warnings"]
    assert all(w in messages for w in summary["warnings"])  # also on stderr
    html = (tmp_path / "out" / "report.html").read_text()
    for w in summary["warnings"]:
        assert "Read this first" in html
        assert w.split(":")[0].replace("'", "&#39;") in html
    return summary


def test_more_class_folders_than_outputs_explains_the_prediction(
    tmp_path: Path, tiny_weights: Path
) -> None:
    write_image_folder(tmp_path / "images", {"a": 3, "b": 3, "c": 3, "d": 3})
    summary = run(tmp_path, {"model.weights": str(tiny_weights)})
    assert any("4 class folders but the model has 3 outputs" in w for w in summary["warnings"])
    arrays = np.load(tmp_path / "out" / "arrays.npz")
    predictions = arrays["logits"].argmax(1)
    ids = arrays["dataset_ids"].tolist()
    positions = [ids.index(i) for i in arrays["image_ids"].tolist()]
    # Occlusion explains the model's prediction, not a folder index that may be no class at all.
    assert arrays["targets"].tolist() == predictions[positions].tolist()


def test_untrained_model_and_checkpoint_arch_are_said(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    summary = run(tmp_path, {})
    assert any("randomly initialised" in w for w in summary["warnings"])

    scripted = torch.jit.script(tiny_net(3).eval())
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    summary = run(
        tmp_path,
        {"model.checkpoint": str(path), "model.trust_checkpoint": True, "model.arch": "resnet50"},
    )
    assert summary["model"]["arch"] == "RecursiveScriptModule"  # the truth, not the flag
    assert any("model.arch (resnet50) is ignored" in w for w in summary["warnings"])


def test_non_finite_weights_are_flagged_and_ece_is_not_ok(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 8, "b": 8, "c": 8})
    model = tiny_net(3)
    with torch.no_grad():
        model.fc2.bias[0] = float("nan")
    weights = tmp_path / "nan.pt"
    torch.save(model.state_dict(), weights)
    summary = run(tmp_path, {"model.weights": str(weights)}, ["audit"])
    assert any("not finite" in w and "fc2.bias" in w for w in summary["warnings"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "n/a (non-finite logits)" in html


class FeaturesAndLogits(nn.Module):
    """Returns (features, logits), the order some training code uses."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.net = TinyNet(num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.pool(self.net.relu1(self.net.conv1(x)))
        feats = self.net.gap(self.net.relu2(self.net.conv2(feats))).flatten(1)
        hidden = torch.relu(self.net.fc1(feats))
        return hidden, self.net.fc2(hidden)


def features_and_logits(num_classes: int = 3) -> FeaturesAndLogits:
    torch.manual_seed(0)
    return FeaturesAndLogits(num_classes)


def test_a_features_then_logits_model_reports_on_its_logits(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    factory = tmp_path / "fl.py"
    factory.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_warnings import features_and_logits\n"
    )
    summary = run(tmp_path, {"model.arch": f"{factory}:features_and_logits"}, ["audit"])
    logits = np.load(tmp_path / "out" / "arrays.npz")["logits"]
    assert logits.shape[1] == 3  # the 12-wide features were not taken as logits
    assert any("12" in w or "logits" in w for w in summary["warnings"]), summary["warnings"]


def test_images_with_non_finite_outputs_are_left_out_of_every_metric(tmp_path: Path) -> None:
    """NaN logits on a third of the images were predicted as class 0 and counted in accuracy;
    ECE silently became None. Now they are counted, named, and left out — and the metrics are
    the ones computed on the other images alone."""
    from conftest import TESTS

    write_image_folder(tmp_path / "images", {"a": 8, "b": 8, "c": 8})
    arch = f"{TESTS / 'tiny_models.py'}:nan_on_red"
    torch.manual_seed(0)
    torch.save(tiny_net(3).state_dict(), tmp_path / "w.pt")
    summary = run(
        tmp_path, {"model.arch": arch, "model.weights": str(tmp_path / "w.pt")}, ["audit"]
    )
    assert summary["data"]["num_nonfinite_outputs"] == 8
    warning = next(w for w in summary["warnings"] if "not finite (NaN or Inf) on 8 of 24" in w)
    assert "a/" in warning
    # The reference: predictions.csv's rows of the 16 other images (their logits are TinyNet's).
    preds = summary_predictions(tmp_path / "out" / "predictions.csv")
    finite = [r for r in preds if not r["path"].startswith("a/")]
    assert len(finite) == 16
    expected = sum(r["label"] == r["prediction"] for r in finite) / len(finite)
    assert summary["metrics"]["accuracy"] == pytest.approx(expected)
    assert summary["metrics"]["ece"] is not None
    html = (tmp_path / "out" / "report.html").read_text()
    assert "of 16 labelled images (8 with non-finite outputs left out)" in html
    # No image without finite outputs is a query (nothing to explain on it).
    assert not any(q.startswith("a/") for q in summary["data"]["queries"])


def summary_predictions(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("change", ["replace", "delete"])
def test_a_query_replaced_during_the_run_is_left_out_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A query image replaced between the pass and the re-read was explained as the new
    picture beside the old prediction and hash. Now every re-read checks the SHA-256 the pass
    recorded: the file is left out of the per-image sections and named in the warnings."""
    from PIL import Image

    from reportgen.pipeline import execute

    write_image_folder(tmp_path / "images", {"a": 4, "b": 4, "c": 4})
    torch.save(tiny_net(3).state_dict(), tmp_path / "w.pt")
    real = execute.select_queries
    replaced: list[str] = []

    def select_then_replace(result: Any, folder: Any, spec: Any, seed: int) -> list[int]:
        queries = real(result, folder, spec, seed)
        item = folder.items[result.item_index[queries[0]]]
        if change == "delete":
            item.path.unlink()
        else:
            Image.new("RGB", (40, 40), (0, 0, 0)).save(item.path)  # another picture
        replaced.append(item.relpath)
        return queries

    monkeypatch.setattr(execute, "select_queries", select_then_replace)
    summary = run(
        tmp_path,
        {"model.weights": str(tmp_path / "w.pt")},
        ["activations", "occlusion", "saliency"],
    )
    assert any(f"{replaced[0]} changed or was deleted" in w for w in summary["warnings"])
    statuses = {s["name"]: s["status"] for s in summary["sections"]}
    assert statuses == {"activations": "ok", "occlusion": "ok", "saliency": "ok"}
    arrays = np.load(tmp_path / "out" / "arrays.npz")
    assert replaced[0] not in arrays["image_ids"].tolist()  # not among the explained queries


def test_a_changed_thumbnail_is_a_gray_tile_and_named(tmp_path: Path) -> None:
    """Galleries re-read images after the pass: a replaced file is not shown as the new picture
    beside the old numbers, but as a plain tile, and the run names it."""
    from conftest import make_config, make_context
    from PIL import Image

    write_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    torch.save(tiny_net(3).state_dict(), tmp_path / "w.pt")
    ctx = make_context(make_config(tmp_path, {"model.weights": str(tmp_path / "w.pt")}))
    item = ctx.folder.items[ctx.pass_result.item_index[4]]
    before = ctx.display_images([4, 5], size=24)
    Image.new("RGB", (40, 40), (255, 255, 255)).save(item.path)
    after = ctx.display_images([4, 5], size=24)
    assert np.array_equal(after[1], before[1])
    assert after[0].shape == (24, 24, 3) and (after[0] == 128).all()
    assert ctx.changed_files == [item.display]
