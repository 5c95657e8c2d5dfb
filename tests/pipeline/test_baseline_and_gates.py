"""A baseline in the run, `reportgen compare` on archived folders, predictions.csv and gates."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, write_image_folder
from tiny_models import tiny_net

from reportgen.cli import cli

FAST = [
    "--analyses",
    "filters,neighbors,saliency",
    "--format",
    "html",
    "--quiet",
]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An image folder and two differently initialised tiny models (old, new)."""
    images = write_image_folder(tmp_path / "images", {"a": 7, "b": 7, "c": 7})
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(tiny_net(3).state_dict(), old)
    torch.manual_seed(5)
    model = tiny_net(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.save(model.state_dict(), new)
    return images, old, new


def run(tmp_path: Path, images: Path, weights: Path, out: str, *extra: str) -> Any:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "preprocess: {resize: 32, crop: 32, pixel_size: 16}\n"
        "run: {device: cpu, workers: 0, batch_size: 8}\n"
        "data: {queries: 3}\n"
        "output: {save_arrays: true}\n"
        "analyses: {saliency: {methods: [gradient, gradcam], batch_size: 8, image_size: 48}}\n"
    )
    return invoke(
        "run",
        "--config",
        str(cfg),
        "--model",
        TINY_ARCH,
        "--weights",
        str(weights),
        "--data",
        str(images),
        "--out",
        str(tmp_path / out),
        *FAST,
        *extra,
    )


def test_predictions_csv_matches_the_logits(
    tmp_path: Path, two_models: tuple[Path, Path, Path]
) -> None:
    images, _, new = two_models
    assert run(tmp_path, images, new, "r").exit_code == 0
    out = tmp_path / "r"
    arrays = np.load(out / "arrays.npz", allow_pickle=False)
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "path",
        "sha256",
        "label",
        "label_name",
        "prediction",
        "prediction_name",
        "confidence",
        "p_label",
        "correct",
    ]
    logits = arrays["logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [r["path"] for r in rows] == arrays["dataset_ids"].tolist()
    import hashlib

    for i, r in enumerate(rows):
        assert r["sha256"] == hashlib.sha256((images / r["path"]).read_bytes()).hexdigest()
        assert int(r["prediction"]) == int(logits[i].argmax())
        assert float(r["confidence"]) == pytest.approx(probs[i].max(), rel=1e-6)
        label = int(r["label"])
        assert r["label_name"] == ["a", "b", "c"][label]
        assert float(r["p_label"]) == pytest.approx(probs[i, label], rel=1e-6)
        assert r["correct"] == str(int(label == logits[i].argmax()))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["accuracy"] == pytest.approx(
        np.mean([r["correct"] == "1" for r in rows])
    )


def test_baseline_in_run_equals_compare_of_archived_folders(
    tmp_path: Path, two_models: tuple[Path, Path, Path]
) -> None:
    images, old, new = two_models
    assert run(tmp_path, images, old, "old").exit_code == 0
    assert run(tmp_path, images, new, "new").exit_code == 0
    both = run(tmp_path, images, new, "both", "--baseline-weights", str(old))
    assert both.exit_code == 0, both.output
    folders = invoke(
        "compare",
        str(tmp_path / "old"),
        str(tmp_path / "new"),
        "--out",
        str(tmp_path / "cmp"),
        "--format",
        "html",
        "--quiet",
    )
    assert folders.exit_code == 0, folders.output

    in_run = json.loads((tmp_path / "both" / "summary.json").read_text())
    from_folders = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    a, b = in_run["compare"], from_folders["compare"]
    for key in (
        "accuracy_baseline",
        "accuracy",
        "accuracy_delta",
        "accuracy_delta_ci95",
        "mcnemar_p",
        "negative_flips",
        "positive_flips",
        "negative_flip_rate",
        "positive_flip_rate",
        "ece_delta",
        "matched_images",
        "linear_cka",
        "knn_overlap",
        "explanation_rank_corr",
        "filter_cosine_mean",
    ):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key

    # Against the two runs' own predictions: flips counted by hand.
    def correct(folder: str) -> np.ndarray:
        with (tmp_path / folder / "predictions.csv").open(encoding="utf-8") as fh:
            return np.array([r["correct"] == "1" for r in csv.DictReader(fh)])

    was, now = correct("old"), correct("new")
    assert a["negative_flips"] == int((was & ~now).sum())
    assert a["positive_flips"] == int((~was & now).sum())
    assert a["matched_images"] == 21
    assert a["accuracy_delta"] == pytest.approx(now.mean() - was.mean())
    # The chapter sits right after the run summary, and summary.md leads with the deltas.
    html = (tmp_path / "both" / "report.html").read_text()
    assert html.index('id="section-compare"') < html.index('id="section-filters"')
    assert "Changes against the baseline" in (tmp_path / "both" / "summary.md").read_text()
    assert in_run["sections"][0]["name"] == "compare"
    assert in_run["compare"]["baseline"]["sha256"] != in_run["model"]["sha256"]


def test_gates_pass_fail_and_bad_names(tmp_path: Path, two_models: tuple[Path, Path, Path]) -> None:
    images, old, new = two_models
    ok = run(tmp_path, images, new, "g1", "--fail-on", "accuracy>=0", "--fail-on", "knn_k == 5")
    assert ok.exit_code == 0, ok.output
    gates = json.loads((tmp_path / "g1" / "summary.json").read_text())["gates"]
    assert [g["passed"] for g in gates] == [True, True]
    assert "Gates: all 2 passed" in (tmp_path / "g1" / "report.html").read_text()

    bad = run(tmp_path, images, new, "g2", "--fail-on", "accuracy>1.5")
    assert bad.exit_code == 3
    assert "gate failed: accuracy>1.5" in bad.output
    assert (tmp_path / "g2" / "report.html").is_file()  # the report is still written
    assert "**FAIL**" in (tmp_path / "g2" / "summary.md").read_text()

    typo = run(tmp_path, images, new, "g3", "--fail-on", "acuracy>=0.5")
    assert typo.exit_code == 2
    assert "did you mean 'accuracy'" in typo.output and not (tmp_path / "g3").exists()

    no_baseline = run(tmp_path, images, new, "g4", "--fail-on", "compare.negative_flip_rate<=0.1")
    assert no_baseline.exit_code == 2 and "baseline" in no_baseline.output

    flips = run(
        tmp_path,
        images,
        new,
        "g5",
        "--baseline-weights",
        str(old),
        "--fail-on",
        "compare.negative_flip_rate<=1",
    )
    assert flips.exit_code == 0, flips.output


def test_compare_bad_folders_are_one_line_errors(
    tmp_path: Path, two_models: tuple[Path, Path, Path]
) -> None:
    images, _, new = two_models
    assert run(tmp_path, images, new, "new").exit_code == 0
    (tmp_path / "empty").mkdir()
    result = invoke(
        "compare", str(tmp_path / "empty"), str(tmp_path / "new"), "--out", str(tmp_path / "c")
    )
    assert result.exit_code == 2
    assert "not a report folder" in result.output and "Traceback" not in result.output
    (tmp_path / "new" / "predictions.csv").unlink()
    result = invoke(
        "compare", str(tmp_path / "new"), str(tmp_path / "new"), "--out", str(tmp_path / "c")
    )
    assert result.exit_code == 2 and "predictions.csv" in result.output
    assert not (tmp_path / "c").exists()


def test_the_baseline_gets_the_models_checks(
    tmp_path: Path, two_models: tuple[Path, Path, Path]
) -> None:
    """A (features, logits) baseline had its features scored as logits (accuracy 0, McNemar
    p 4e-9 for identical weights); NaN weights, a head of another size and a baseline that
    cannot take the model's inputs passed without a word or ended in a traceback."""
    from conftest import TESTS

    images, _old, new = two_models
    (tmp_path / "tuple_models.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from tiny_models import TinyNet\n"
        "import torch\n"
        "class Pair(TinyNet):\n"
        "    def forward(self, x):\n"
        "        out = super().forward(x)\n"
        "        return torch.zeros(len(x), 7), out\n"
        "def pair(num_classes=3):\n"
        "    return Pair(num_classes)\n"
    )
    arch = f"{tmp_path / 'tuple_models.py'}:pair"
    same = run(
        tmp_path, images, new, "same", "--baseline-model", arch, "--baseline-weights", str(new)
    )
    assert same.exit_code == 0, same.output
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    # Identical weights: the logits element was taken, so the baseline scores as the model.
    assert summary["compare"]["accuracy_baseline"] == pytest.approx(summary["metrics"]["accuracy"])
    assert any(w.startswith("baseline: ") for w in summary["warnings"])  # which element

    broken = tiny_net(3)
    with torch.no_grad():
        broken.fc2.bias[1] = float("nan")
    torch.save(broken.state_dict(), tmp_path / "nan.pt")
    result = run(tmp_path, images, new, "nan", "--baseline-weights", str(tmp_path / "nan.pt"))
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert any("baseline: the baseline's weights are not finite" in w for w in summary["warnings"])

    torch.save(tiny_net(5).state_dict(), tmp_path / "five.pt")
    result = run(tmp_path, images, new, "five", "--baseline-weights", str(tmp_path / "five.pt"))
    summary = json.loads((tmp_path / "five" / "summary.json").read_text())
    assert any("baseline: it has 5 outputs but the model has 3" in w for w in summary["warnings"])

    gray = f"{TESTS / 'tiny_models.py'}:tiny_gray_net"
    torch.save(tiny_net(3).state_dict(), tmp_path / "rgb.pt")
    cfg_gray = [
        "--baseline-model", TINY_ARCH, "--baseline-weights", str(tmp_path / "rgb.pt"),
    ]  # fmt: skip
    from tiny_models import tiny_gray_net

    torch.save(tiny_gray_net(3).state_dict(), tmp_path / "gray.pt")
    result = invoke(
        "run", "--model", gray, "--weights", str(tmp_path / "gray.pt"), "--data", str(images),
        "--out", str(tmp_path / "gray"), "--device", "cpu", *FAST, *cfg_gray,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("reportgen: error: baseline: the model cannot run")


def test_a_folder_mixing_two_runs_is_refused(
    tmp_path: Path, two_models: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the commit renames could leave the new predictions.csv beside the old
    summary.json. summary.json is renamed last and names the predictions.csv written with it,
    so such a folder is one line, exit 2, for any reader (compare, history)."""
    import os

    from reportgen.runtime import writes
    from reportgen.runtime.outdir import REPORT_FILES

    images, old, new = two_models
    renamed: list[str] = []
    real_replace = os.replace

    def recording(src: str, dst: Path) -> None:
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(writes.os, "replace", recording)
    assert run(tmp_path, images, old, "old").exit_code == 0
    # timings.json follows once the write is timed; compare and history never read it.
    outputs = [n for n in renamed if n in REPORT_FILES and n != "timings.json"]
    assert outputs[-1] == "summary.json" and "predictions.csv" in outputs
    assert run(tmp_path, images, new, "new").exit_code == 0
    summary = json.loads((tmp_path / "old" / "summary.json").read_text())
    assert len(summary["output"]["predictions_sha256"]) == 64
    # The state a kill between the renames leaves: the new predictions, the old summary.
    (tmp_path / "old" / "predictions.csv").write_bytes(
        (tmp_path / "new" / "predictions.csv").read_bytes()
    )
    result = invoke(
        "compare", str(tmp_path / "old"), str(tmp_path / "new"), "--out", str(tmp_path / "cmp")
    )
    assert result.exit_code == 2
    assert "is not the one summary.json was written with: the folder mixes two runs" in (
        result.output
    )
