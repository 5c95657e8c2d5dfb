"""Binary and multi-label models end to end (issue 22): every section speaks the task, the
metrics equal scikit-learn's on the run's own predictions.csv (read here with the csv module),
no number comes from the wrong head, and every impossible task is one line, exit 2, before any
work."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH, write_image_folder
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    recall_score,
    roc_auc_score,
)
from test_hostile_cli import SMALL, assert_one_line_error, reportgen
from tiny_models import tiny_net

from reportgen.api import run_demo
from reportgen.pipeline.execute import RunResult


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "predictions.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("binary")
    return run_demo(out, task="binary", per_class=12, epochs=4, formats=["html"], device="cpu")


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("multilabel")
    return run_demo(out, task="multilabel", per_class=12, epochs=4, formats=["html"], device="cpu")


def _sections_ok(result: RunResult) -> None:
    bad = [(s.name, s.status, s.reason) for s in result.sections if s.status != "ok"]
    assert bad == []


def test_binary_report_speaks_the_one_logit_head(binary_run: RunResult) -> None:
    out = binary_run.out_dir
    _sections_ok(binary_run)
    s = _summary(out)
    assert s["model"]["task"] == "binary" and s["model"]["num_outputs"] == 1
    assert s["model"]["num_classes"] == 2 and s["model"]["threshold"] == 0.5
    rows = _rows(out)
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_positive"]) for r in rows])
    conf = np.array([float(r["confidence"]) for r in rows])
    pred = np.array([int(r["prediction"]) for r in rows])
    # No number from a softmax over one logit: confidences vary, predictions follow p ≥ 0.5.
    assert conf.min() < 0.999 and not np.all(conf == 1.0)
    assert (pred == (p >= 0.5)).all() and set(y.tolist()) == {0, 1}
    np.testing.assert_allclose(conf, np.where(pred == 1, p, 1 - p), atol=1e-12)
    m = s["metrics"]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    table = {row["threshold"]: row for row in s["scores"]["thresholds"]}
    assert table[0.3]["tp"] + table[0.3]["fp"] == int((p >= 0.3).sum())
    with np.load(out / "arrays.npz") as arrays:
        occ = arrays["occlusion_prob"]
        assert (arrays["targets"] == 1).all()  # maps explain the positive logit
    assert all(np.ptp(m_) > 1e-3 for m_ in occ)  # no flat occlusion map
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in ("ROC curve", "Threshold table", "positive class", "AUROC"):
        assert text in html
    # The run summary says which class is which (from data.labels here: no "sorted").
    assert "data.labels: negative (index 0) = other, positive (index 1, the logit" in html
    assert "sets them" not in html  # no hint to set what data.labels already sets
    assert "AUROC" in (out / "summary.md").read_text(encoding="utf-8")
    timings = json.loads((out / "timings.json").read_text())
    assert timings["plan"] == timings["passes"]
    # Feature visualisation: the one logit's two ends, p = sigmoid(±z) of each image
    classes = [o for o in s["feature_viz"]["objectives"] if o["kind"] == "class"]
    assert [o["class_name"] for o in classes] == ["three", "other"]
    for o, sign in zip(classes, (1, -1), strict=True):
        assert o["probability"] == pytest.approx(1 / (1 + np.exp(-o["value"])), rel=1e-5)
        assert o["class"] == (1 if sign == 1 else 0)


def test_multilabel_report_explains_each_label(multilabel_run: RunResult) -> None:
    out = multilabel_run.out_dir
    _sections_ok(multilabel_run)
    s = _summary(out)
    assert s["model"]["task"] == "multilabel" and s["model"]["num_outputs"] == 3
    rows = _rows(out)
    names = [c[2:] for c in rows[0] if c.startswith("p:")]
    assert names == ["even", "greater_than_4", "prime"]
    truth = np.array([[n in r["labels"].split("|") for n in names] for r in rows])
    predicted = np.array([[n in r["predicted"].split("|") for n in names] for r in rows])
    probs = np.array([[float(r[f"p:{n}"]) for n in names] for r in rows])
    assert (predicted == (probs >= 0.5)).all()
    # The digit metadata says which labels each image has: the manifest was read right.
    digits = np.array([int(r["meta:digit"]) for r in rows])
    np.testing.assert_array_equal(truth[:, 0], digits % 2 == 0)
    np.testing.assert_array_equal(truth[:, 2], np.isin(digits, [2, 3, 5, 7]))
    m = s["metrics"]
    assert m["accuracy"] is None  # a label set has no single accuracy
    assert m["exact_match"] == pytest.approx(accuracy_score(truth, predicted))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert m["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(truth, probs, average="macro"))
    assert m["worst_label_auroc"] == pytest.approx(roc_auc_score(truth, probs, average=None).min())
    per_label = {row["label"]: row for row in s["scores"]["labels"]}
    assert per_label["prime"]["support"] == int(truth[:, 2].sum())
    with np.load(out / "arrays.npz") as arrays:
        ids, targets = arrays["image_ids"].tolist(), arrays["targets"].tolist()
        occ = arrays["occlusion_prob"]
        label_sets = arrays["label_sets"]
    # Each query is explained for its labels (true ∪ predicted, at most 3), every row named;
    # data.queries (8) counts the explained rows, so the per-image sections cost what they do
    # for a single-label model.
    by_image: dict[str, list[int]] = {}
    for image, target in zip(ids, targets, strict=True):
        by_image.setdefault(image, []).append(target)
    assert len(ids) == 8 and 3 <= len(by_image) < 8
    assert list(by_image) == s["data"]["queries"][: len(by_image)]
    for image, labels_explained in by_image.items():
        row = next(r for r in rows if r["path"] == image)
        wanted = {names.index(n) for n in (row["labels"] + "|" + row["predicted"]).split("|") if n}
        assert set(labels_explained) <= (wanted or set(range(3)))
    assert all(np.ptp(m_) > 1e-3 for m_ in occ)
    assert label_sets.shape == (len(rows), 3)
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in ("Per label over", "co-occurrence", "Jaccard", "greater_than_4"):
        assert text in html
    # Feature visualisation of the explained labels: p is each label's sigmoid
    classes = [o for o in s["feature_viz"]["objectives"] if o["kind"] == "class"]
    assert {o["class"] for o in classes} == set(targets)
    for o in classes:
        assert o["probability"] == pytest.approx(1 / (1 + np.exp(-o["value"])), rel=1e-5)


def test_multilabel_queries_cover_every_label(multilabel_run: RunResult) -> None:
    s = _summary(multilabel_run.out_dir)
    rows = {r["path"]: r for r in _rows(multilabel_run.out_dir)}
    covered = {n for q in s["data"]["queries"] for n in rows[q]["labels"].split("|") if n}
    assert covered == {"even", "greater_than_4", "prime"}


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    images = write_image_folder(tmp_path / "images", {"neg": 4, "pos": 4}, size=32)
    paths = {"images": images, "root": tmp_path}
    for k in (1, 2, 3):
        paths[f"w{k}"] = tmp_path / f"w{k}.pt"
        torch.save(tiny_net(k).state_dict(), paths[f"w{k}"])
    fast = tmp_path / "fast.yaml"
    fast.write_text("preprocess: {resize: 32, crop: 32, pixel_size: 16}\nrun: {workers: 0}\n")
    paths["cfg"] = fast
    return paths


def _run(models: dict[str, Path], weights: str, *extra: str) -> Any:
    out = models["root"] / "out"
    done = reportgen(
        "run", "--config", str(models["cfg"]), "--model", TINY_ARCH, "--weights",
        str(models[weights]), "--data", str(models["images"]), "--out", str(out), *SMALL, *extra,
    )  # fmt: skip
    assert not out.exists() or done.returncode != 2
    return done


@pytest.mark.parametrize(
    ("weights", "extra", "needles"),
    [
        ("w1", ["--threshold", "1.5"], ["model.threshold", "between 0 and 1"]),
        ("w1", ["--threshold", "0"], ["model.threshold"]),
        ("w3", ["--task", "binary"], ["model.task: binary", "one output", "has 3"]),
        ("w1", ["--task", "multiclass"], ["model.task: multiclass", "one (a sigmoid logit"]),
        ("w3", ["--task", "multilabel"], ["multilabel", "data.manifest", "class folders"]),
        ("w3", ["--fail-on", "auroc>=0.9"], ["'auroc>=0.9'", "binary model's metric"]),
        ("w1", ["--fail-on", "macro_auroc>=0.9"], ["multilabel model's metric", "binary"]),
    ],
)
def test_impossible_tasks_are_one_line_before_any_work(
    models: dict[str, Path], weights: str, extra: list[str], needles: list[str]
) -> None:
    done = _run(models, weights, *extra)
    assert_one_line_error(done, *needles)
    assert not (models["root"] / "out").exists()


def test_data_labels_of_a_binary_model_name_two_classes(models: dict[str, Path]) -> None:
    bad = models["root"] / "labels.yaml"
    bad.write_text(models["cfg"].read_text() + "data: {labels: [only]}\n")
    out = models["root"] / "out"
    done = reportgen(
        "run", "--config", str(bad), "--model", TINY_ARCH, "--weights", str(models["w1"]),
        "--data", str(models["images"]), "--out", str(out), *SMALL,
    )  # fmt: skip
    assert_one_line_error(done, "data.labels", "two classes", "negative class first")


def test_label_sets_need_a_multilabel_task(models: dict[str, Path]) -> None:
    root = models["root"]
    manifest = root / "images" / "m.csv"
    manifest.write_text(
        "path,labels\nneg/neg_000.png,a|b\npos/pos_000.png,b\nneg/neg_001.png,\n",
        encoding="utf-8",
    )
    out = root / "out"
    args = ["run", "--config", str(models["cfg"]), "--model", TINY_ARCH, "--weights"]
    done = reportgen(
        *args, str(models["w3"]), "--manifest", str(manifest), "--task", "multiclass",
        "--out", str(out), *SMALL,
    )  # fmt: skip
    assert_one_line_error(done, "data.manifest", "'labels' holds label sets", "model.task")
    # auto: a manifest with label sets is multi-label; two label names, three outputs
    done = reportgen(
        *args, str(models["w3"]), "--manifest", str(manifest), "--out", str(out), *SMALL,
        "--analyses", "audit,neighbors",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = _summary(out)
    assert s["model"]["task"] == "multilabel"
    assert "label-set column" in s["model"]["task_source"]


# --------------------------------------------------------------------------- model metadata


def test_a_hugging_face_multi_label_model_is_read_as_one(tmp_path: Path) -> None:
    from conftest import make_config
    from hub_models import hf_model, hf_resnet_config, save_hf_folder

    from reportgen.api import run_report

    config = hf_resnet_config(3, {0: "cat", 1: "dog", 2: "fox"})
    config.problem_type = "multi_label_classification"
    folder = save_hf_folder(hf_model(config), tmp_path / "tagger")
    images = write_image_folder(tmp_path / "images", {"cat": 3, "dog": 3}, size=32)
    manifest = images / "tags.csv"
    rows = [
        f"{p.relative_to(images).as_posix()},{p.parent.name}|fox" for p in images.rglob("*.png")
    ]
    manifest.write_text("path,labels\n" + "\n".join(sorted(rows)) + "\n", encoding="utf-8")
    cfg = make_config(
        tmp_path,
        {"model.arch": str(folder), "data.root": None, "data.manifest": str(manifest)},
        analyses=["audit"],
    )
    result = run_report(cfg)
    s = result.summary
    assert s["model"]["task"] == "multilabel"
    assert "problem_type multi_label_classification" in s["model"]["task_source"]
    assert s["data"]["class_names"] == ["cat", "dog", "fox"]
    # fox is on every image: no AUROC, left out of the macro average (and counted)
    assert s["scores"]["macro_auroc_labels"] == 2 and s["metrics"]["macro_auroc"] is not None
    fox = next(row for row in s["scores"]["labels"] if row["label"] == "fox")
    assert fox["support"] == 6 and fox["auroc"] is None


def test_a_one_output_model_named_by_its_metadata_is_binary(tmp_path: Path) -> None:
    """A Hugging Face model with one output names its positive class: "not defect" / "defect"."""
    from conftest import make_config
    from hub_models import hf_model, hf_resnet_config, save_hf_folder

    from reportgen.api import run_report

    folder = save_hf_folder(hf_model(hf_resnet_config(1, {0: "defect"})), tmp_path / "qc")
    write_image_folder(tmp_path / "images", {"a": 3, "b": 3}, size=32, flat=True)
    cfg = make_config(tmp_path, {"model.arch": str(folder)}, analyses=["audit", "occlusion"])
    result = run_report(cfg)
    s = result.summary
    assert s["model"]["task"] == "binary" and "one output" in s["model"]["task_source"]
    assert s["data"]["class_names"] == ["not defect", "defect"]
    assert [x["status"] for x in s["sections"]] == ["ok", "ok"]


# --------------------------------------------------------------------------- comparisons


def test_a_multilabel_baseline_in_the_run_equals_reportgen_compare(
    multilabel_run: RunResult, tmp_path: Path
) -> None:
    """A second multi-label model (the demo's with a nudged last layer) against the demo's:
    the baseline inside a run and ``reportgen compare`` on the two folders give the same
    per-label numbers, and the per-label flips are the hand count from the predictions."""
    from reportgen.compare.folders import read_report_folder
    from reportgen.compare.matching import compare_folders
    from reportgen.compare.metrics import compare_summary

    demo = multilabel_run.out_dir
    state = torch.load(demo / "model.pt", weights_only=True)
    state["classifier.3.bias"] = state["classifier.3.bias"] + torch.tensor([0.0, 2.0, -1.5])
    torch.save(state, tmp_path / "new.pt")
    out = tmp_path / "new"
    done = reportgen(
        "run", "--config", str(demo / "config.yaml"), "--weights", str(tmp_path / "new.pt"),
        "--baseline-weights", str(demo / "model.pt"), "--analyses", "audit", "--out", str(out),
        "--fail-on", "compare.worst_label_auroc_delta>=-0.5", *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    in_run = _summary(out)["compare"]
    assert in_run["task"] == "multilabel"
    folders = compare_summary(compare_folders(demo, out))
    for key in ("labels", "macro_auroc_delta", "negative_flips", "accuracy_delta", "ece"):
        assert folders[key] == in_run[key], key
    old, new = read_report_folder(demo).predictions, read_report_folder(out).predictions
    assert old.label_sets is not None and new.predicted_sets is not None
    truth = new.label_sets > 0  # type: ignore[operator]
    by_label = {row["label"]: row for row in in_run["labels"]}
    for j, name in enumerate(new.class_names):
        right_old = old.predicted_sets[:, j] == truth[:, j]  # type: ignore[index]
        right_new = new.predicted_sets[:, j] == truth[:, j]
        assert by_label[name]["negative_flips"] == int((right_old & ~right_new).sum())
    # The shifted biases move the decisions on labels 1 and 2 only.
    assert by_label["even"]["negative_flips"] == 0 and by_label["even"]["positive_flips"] == 0
    assert by_label["greater_than_4"]["negative_flips"] > 0
    # reportgen history over the two releases trends the task's own headline metrics and
    # shows per-label recall.
    hist = tmp_path / "history"
    done = reportgen("history", str(demo), str(out), "--out", str(hist), "--format", "html")
    assert done.returncode == 0, done.stderr
    h = _summary(hist)["history"]
    trended = [t["key"] for t in h["headlines"]]
    assert trended[:4] == ["macro_auroc", "micro_f1", "exact_match", "hamming_loss"]
    recall = h["per_class_recall"]
    assert recall["classes"] == ["even", "greater_than_4", "prime"]
    for release, ps in enumerate((old, new)):
        for j in range(3):
            has = ps.label_sets[:, j] > 0  # type: ignore[index]
            hits = (ps.predicted_sets[:, j] & has).sum()  # type: ignore[index]
            assert recall["recall"][release][j] == pytest.approx(hits / has.sum())


def test_binary_subgroups_report_auroc_and_f1(binary_run: RunResult, tmp_path: Path) -> None:
    """Per metadata subgroup of a binary model: accuracy at the threshold, AUROC with a seeded
    bootstrap interval and F1, each equal to scikit-learn on that subgroup of predictions.csv."""
    demo = binary_run.out_dir
    rows = _rows(demo)
    sites = ["A", "B", "C"]
    lines = ["path,label,site"]
    for i, r in enumerate(rows):
        name = "three" if r["label"] == "1" else "other"
        lines.append(f"{r['path']},{name},{sites[i % 3]}")
    manifest = demo / "data" / "sites.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sliced"
    done = reportgen(
        "run", "--config", str(demo / "config.yaml"), "--manifest", str(manifest),
        "--data", str(demo / "data"), "--analyses", "slices", "--out", str(out), *SMALL,
        "--fail-on", "slices_worst_auroc>=0.0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = _summary(out)
    declared = {d["value"]: d for d in s["slices"]["declared"] if d["column"] == "site"}
    got = _rows(out)
    y = np.array([int(r["label"]) for r in got])
    p = np.array([float(r["p_positive"]) for r in got])
    pred = np.array([int(r["prediction"]) for r in got])
    site = np.array([r["meta:site"] for r in got])
    for value in sites:
        m = site == value
        d = declared[value]
        assert d["n"] == int(m.sum())
        assert d["accuracy"] == pytest.approx(accuracy_score(y[m], pred[m]))
        assert d["auroc"] == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-12)
        assert d["f1"] == pytest.approx(f1_score(y[m], pred[m]), abs=1e-12)
        lo, hi = d["auroc_ci95"]
        assert lo <= d["auroc"] <= hi
    assert s["metrics"]["slices_worst_auroc"] == pytest.approx(
        min(declared[v]["auroc"] for v in sites)
    )


def test_binary_classes_the_other_way_round_are_said(binary_run: RunResult, tmp_path: Path) -> None:
    """A binary model's class folders in the wrong order (as "defect" sorts before "ok") give an
    AUROC far below 0.5: the run says so and names the data.labels that would fix it."""
    demo = binary_run.out_dir
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(
        (demo / "config.yaml")
        .read_text(encoding="utf-8")
        .replace("- other\n  - three", "- three\n  - other")
        .replace("root: data", f"root: {demo / 'data'}")
        .replace("weights: model.pt", f"weights: {demo / 'model.pt'}"),
        encoding="utf-8",
    )
    done = reportgen(
        "run", "--config", str(swapped), "--analyses", "audit", "--out", str(tmp_path / "o"),
        *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warning = next(w for w in _summary(tmp_path / "o")["warnings"] if "below chance" in w)
    assert "data.labels: [other, three]" in warning
    assert "negative (index 0) = three" in (tmp_path / "o" / "report.html").read_text("utf-8")
    # Without data.labels the two class folders decide, in sorted order, and the summary says so.
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text(
        swapped.read_text(encoding="utf-8").replace("  labels:\n  - three\n  - other\n", ""),
        encoding="utf-8",
    )
    assert "three" not in unnamed.read_text(encoding="utf-8")
    done = reportgen(
        "run", "--config", str(unnamed), "--analyses", "audit", "--out", str(tmp_path / "u"),
        *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "u" / "report.html").read_text("utf-8")
    assert "class folder names (sorted): negative (index 0) = other, positive" in html
    assert "= three; data.labels: [negative, positive] sets them" in html
    assert not any("below chance" in w for w in _summary(demo)["warnings"])
