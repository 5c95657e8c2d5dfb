"""The embedded demo: end to end at reduced size, and the trained CNN's quality at full size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen.api import load_config, run_demo, run_report
from reportgen.demo import digit_images, prepare_demo, train_digits

_DATA_URI = re.compile(r"data:[\w/+.-]+(;[\w=.-]+)*,[A-Za-z0-9+/=%._~-]*")
_URL_ATTR = re.compile(
    r"""\b(src|href|srcset|action|poster|background|xlink:href|formaction)\s*=\s*["']?([^"'\s>]*)""",
    re.IGNORECASE,
)


def assert_self_contained(html: str) -> None:
    """No external reference: only data: URIs and #anchors, no script, no remote CSS."""
    lowered = html.lower()
    for tag in ("<script", "<link", "<iframe", "<object", "<embed", "<base", "@import"):
        assert tag not in lowered, tag
    for attr, value in _URL_ATTR.findall(html):
        assert value.startswith(("data:", "#")), f"{attr}={value[:80]}"
    for value in re.findall(r"url\(\s*['\"]?([^'\")]*)", html):
        assert value.startswith(("data:", "#")), f"url({value[:80]})"
    without_data = _DATA_URI.sub("", html)
    for scheme in ("http:", "https:", "file:", "ftp:", "//"):
        assert scheme not in without_data.lower(), scheme
    assert 'http-equiv="Content-Security-Policy"' in html


def test_self_contained_check_catches_external_references() -> None:
    ok = (
        '<meta http-equiv="Content-Security-Policy" content="default-src none">'
        '<img src="data:image/png;base64,iVBOR//w+="><a href="#s">x</a>'
    )
    assert_self_contained(ok)
    for bad in (
        '<img src="https://example.com/a.png">',
        '<img src="//cdn.example.com/a.png">',
        '<a href="file:///etc/passwd">x</a>',
        "<script>alert(1)</script>",
        '<div style="background: url(http://x/y.png)">',
        '<link rel="stylesheet" href="style.css">',
        '<img src="thumbs/a.png">',
    ):
        with pytest.raises(AssertionError):
            assert_self_contained(ok + bad)


def test_digit_images_are_deterministic_and_balanced() -> None:
    images, labels = digit_images(per_class=3)
    again, _ = digit_images(per_class=3)
    assert images.shape == (30, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, again)
    assert np.bincount(labels).tolist() == [3] * 10
    assert images.max() > 200  # white strokes on black, like MNIST


def test_demo_end_to_end_reduced(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # The spine's analyses; the others have their own tests.
    result = run_demo(
        out,
        device="cpu",
        per_class=20,
        epochs=3,
        formats=["html"],
        analyses=["filters", "neighbors", "embedding"],
    )
    assert result.exit_code == 0, [(s.name, s.status, s.reason) for s in result.sections]
    for name in ("model.pt", "config.yaml", "report.html", "summary.json", "arrays.npz"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "data").iterdir()) == [str(d) for d in range(10)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["num_images"] == 200 and summary["data"]["num_skipped"] == 0
    assert summary["data"]["root"] == "data"  # recorded relative to the output folder
    assert summary["model"]["arch"] == "reportgen.demo:digits_cnn"
    assert summary["model"]["num_classes"] == 10 and summary["model"]["in_channels"] == 1
    statuses = {s["name"]: s["status"] for s in summary["sections"]}
    assert list(statuses) == ["filters", "neighbors", "embedding"]
    assert set(statuses.values()) == {"ok"}, summary["sections"]
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    arrays = np.load(out / "arrays.npz", allow_pickle=False)
    assert arrays["features"].shape == (200, 64)
    assert arrays["logits"].shape == (200, 10)
    assert arrays["dataset_ids"][0] == "0/0_0000.png"

    # The config the demo wrote reproduces the run through `reportgen run --config`.
    cfg = load_config(
        out / "config.yaml",
        {"output.dir": str(tmp_path / "again"), "run.device": "cpu", "output.formats": ["html"]},
        analyses=["filters"],
    )
    assert cfg.model.weights == str(out / "model.pt")
    again = run_report(cfg)
    assert again.exit_code == 0
    summary2 = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary2["model"]["sha256"] == summary["model"]["sha256"]
    assert summary2["data"]["manifest_sha256"] == summary["data"]["manifest_sha256"]
    assert summary2["metrics"]["accuracy"] == summary["metrics"]["accuracy"]


@pytest.mark.slow
def test_demo_at_full_size_reaches_its_quality_bar(tmp_path: Path) -> None:
    """≥ 95 % held-out accuracy; feature-space neighbours mostly share the query's digit; the
    model gives each of its class images (feature visualisation, CPU defaults) its class with
    probability ≥ 0.9."""
    out = tmp_path / "demo"
    config_path, trained = prepare_demo(out)
    assert trained.test_accuracy >= 0.95, trained.test_accuracy
    # Seeded: the same training gives the same weights.
    state = torch.load(out / "model.pt", weights_only=True)
    assert torch.equal(state["features.0.weight"], trained.model.features[0].weight)
    cfg = load_config(
        config_path,
        {"output.formats": ["html"], "run.device": "cpu"},
        analyses=["neighbors", "feature_viz"],
    )
    result = run_report(cfg)
    assert result.exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["accuracy"] >= 0.95
    assert metrics["knn_agreement_feature"] >= 0.95
    assert metrics["knn_agreement_feature"] >= metrics["knn_agreement_pixel"] - 0.01
    classes = [o for o in summary["feature_viz"]["objectives"] if o["kind"] == "class"]
    assert [o["class"] for o in classes] == list(range(8))  # the 8 queries' digits
    assert all(o["probability"] >= 0.9 for o in classes), classes
    assert metrics["feature_viz_class_images_recognised"] == 1.0


def test_train_digits_small_is_seeded() -> None:
    images, labels = digit_images(per_class=8)
    a = train_digits(images, labels, epochs=1, seed=3)
    b = train_digits(images, labels, epochs=1, seed=3)
    for (ka, va), (_kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka
