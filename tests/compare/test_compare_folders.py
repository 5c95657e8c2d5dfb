"""Comparing two report folders: matching, class lists by name, parts left out, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reportgen.compare.folders import read_report_folder
from reportgen.compare.matching import compare_folders
from reportgen.compare.metrics import ExplanationMaps, build_compare, compare_summary
from reportgen.errors import ReportgenError
from reportgen.report.gates import COMPARE_KEYS
from reportgen.report.predictions import prediction_set, predictions_csv


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def write_report(
    folder: Path,
    paths: Sequence[str],
    shas: Sequence[str],
    labels: Sequence[int],
    class_names: list[str],
    logits: np.ndarray,
    *,
    arrays: dict[str, np.ndarray] | None = None,
    version: str = "0.1.0",
    manifest: str | None = None,
) -> Path:
    """A report folder as `reportgen run` writes it (the parts compare reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "reportgen_version": version,
        "model": {"arch": "tiny"},
        "data": {
            "manifest_sha256": manifest
            or sha("".join(p + s for p, s in zip(paths, shas, strict=True))),
            "class_names": class_names,
            "num_images": len(paths),
            "labelled": any(y >= 0 for y in labels),
        },
        "metrics": {"accuracy": None},
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    text = predictions_csv(list(paths), list(shas), list(labels), class_names, logits)
    (folder / "predictions.csv").write_bytes(text.encode("utf-8"))
    if arrays is not None:
        full = {"dataset_ids": np.array(list(paths), dtype=np.str_), **arrays}
        np.savez(folder / "arrays.npz", **full)  # type: ignore[arg-type]
    return folder


def onehot(preds: Sequence[int], k: int, conf: float = 4.0) -> np.ndarray:
    return np.eye(k)[list(preds)] * conf


def test_matching_by_path_and_sha_counts_renamed_changed_missing(tmp_path: Path) -> None:
    weird = "caf\udce9.png"  # a file name that is not valid UTF-8
    old_paths = ["a.png", "b.png", "c.png", "d.png", "e.png", weird]
    old_shas = [sha("a"), sha("b"), sha("c"), sha("d"), sha("e"), sha("g")]
    new_paths = ["a.png", "b2.png", "c.png", "e.png", "f.png", weird]
    new_shas = [sha("a"), sha("b"), sha("c-edited"), sha("e"), sha("f"), sha("g")]
    old_labels = [0, 1, 0, 1, 1, 0]
    new_labels = [0, 1, 0, 1, 0, 0]
    write_report(
        tmp_path / "old", old_paths, old_shas, old_labels, ["x", "y"], onehot([0, 0, 0, 1, 0, 0], 2)
    )
    write_report(
        tmp_path / "new", new_paths, new_shas, new_labels, ["x", "y"], onehot([0, 1, 1, 1, 0, 1], 2)
    )
    r = compare_folders(tmp_path / "old", tmp_path / "new")
    assert r.new.paths == ["a.png", "e.png", "caf\\xe9.png"]  # matched, in the new report's order
    assert r.matched_images == 3
    assert r.matching == {
        "baseline_images": 6,
        "new_images": 6,
        "matched": 3,
        "only_baseline": 3,
        "only_new": 3,
        "changed_content": 1,
        "renamed": 1,
        "manifests_differ": True,
        "class_lists_differ": False,
        "label_disagreements": 0,
        "baseline_version": "0.1.0",
        "new_version": "0.1.0",
    }
    assert any("The data manifests differ: only the 3 images" in n for n in r.notes)
    # a: both right; e: old wrong (0 vs 1) -> new right (1); weird: old right, new wrong.
    assert (r.accuracy_old, r.accuracy_new) == (2 / 3, 2 / 3)
    assert (r.negative_flips, r.positive_flips) == (1, 1)
    s = compare_summary(r)
    assert s["matching"]["matched"] == 3 and s["matched_images"] == 3


def test_class_lists_that_differ_are_matched_by_name(tmp_path: Path) -> None:
    paths = [f"{i}.png" for i in range(6)]
    shas = [sha(p) for p in paths]
    old_names = ["cat", "dog", "bird", "zebra"]
    new_names = ["dog", "cat", "bird", "fish"]
    truth = ["cat", "dog", "bird", "cat", "fish", "dog"]
    old_pred = ["cat", "dog", "dog", "zebra", "cat", "cat"]  # right: 0, 1 -> 2 of 5 scored
    new_pred = ["cat", "cat", "bird", "cat", "fish", "dog"]  # right: 0, 2, 3, 4, 5 -> 5 of 6
    # The old folder had no fish: image 4 is unlabelled there.
    old_labels = [old_names.index(t) if t in old_names else -1 for t in truth]
    write_report(
        tmp_path / "old",
        paths,
        shas,
        old_labels,
        old_names,
        onehot([old_names.index(p) for p in old_pred], 4),
    )
    write_report(
        tmp_path / "new",
        paths,
        shas,
        [new_names.index(t) for t in truth],
        new_names,
        onehot([new_names.index(p) for p in new_pred], 4),
    )
    r = compare_folders(tmp_path / "old", tmp_path / "new")
    assert r.class_names == ["dog", "cat", "bird", "fish", "zebra"]
    assert [r.class_names[i] for i in r.old.predictions] == old_pred
    assert [r.class_names[i] for i in r.new.predictions] == new_pred
    # Truth: the new report's labels, all 6 scored; the baseline has no fish output -> wrong.
    assert r.labelled_images == 6
    assert r.accuracy_old == 2 / 6 and r.accuracy_new == 5 / 6
    assert (r.negative_flips, r.positive_flips) == (1, 4)  # image 1 broke; 2, 3, 4, 5 fixed
    note = next(n for n in r.notes if "class lists differ" in n)
    assert (
        "matched by name (3 shared; only in the baseline: zebra; only in the new report: fish)"
        in note
    )
    assert r.matching["class_lists_differ"] is True
    fish = next(c for c in r.per_class if c.name == "fish")
    assert (fish.recall_old, fish.recall_new) == (0.0, 1.0)


def test_classes_without_names_match_by_index(tmp_path: Path) -> None:
    paths = ["a", "b", "c"]
    shas = [sha(p) for p in paths]
    # The baseline ran without data.labels on a flat folder: classes named by their index.
    write_report(tmp_path / "old", paths, shas, [-1] * 3, [], onehot([0, 1, 2], 3))
    write_report(
        tmp_path / "new", paths, shas, [-1] * 3, ["cat", "dog", "bird"], onehot([0, 1, 1], 3)
    )
    r = compare_folders(tmp_path / "old", tmp_path / "new")
    assert r.class_names == ["cat", "dog", "bird"] and r.changed_predictions == 1
    assert r.matching["class_lists_differ"] is False
    assert any("The baseline report has no names for 3 classes" in n for n in r.notes)
    # A 1000-class model's predictions beyond the named classes are named by index: no note.
    write_report(tmp_path / "old2", paths, shas, [0, 1, 1], ["p", "q"], onehot([0, 1, 7], 9))
    write_report(tmp_path / "new2", paths, shas, [0, 1, 1], ["p", "q"], onehot([0, 5, 1], 9))
    r2 = compare_folders(tmp_path / "old2", tmp_path / "new2")
    assert r2.notes == [] and r2.class_names[:2] == ["p", "q"]
    assert (r2.negative_flips, r2.positive_flips) == (1, 1)  # image b broke, c got fixed


def test_label_disagreements_are_said(tmp_path: Path) -> None:
    paths = ["a", "b", "c"]
    shas = [sha(p) for p in paths]
    write_report(tmp_path / "old", paths, shas, [0, 0, 1], ["p", "q"], onehot([0, 0, 1], 2))
    write_report(tmp_path / "new", paths, shas, [0, 1, 1], ["p", "q"], onehot([0, 0, 1], 2))
    r = compare_folders(tmp_path / "old", tmp_path / "new")
    assert r.matching["label_disagreements"] == 1
    assert any("1 matched images carry different labels" in n for n in r.notes)
    assert r.accuracy_old == r.accuracy_new == 2 / 3  # both judged against the new labels


def _run_pair(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same two models' outputs compared inside a run and from two folders."""
    rng = np.random.default_rng(0)
    n, k, q = 30, 3, 4
    paths = [f"c{i % k}/img{i}.png" for i in range(n)]
    paths[7] = "c1/caf\udce9.png"  # not valid UTF-8: arrays.npz ids must still line up
    shas = [sha(p) for p in paths]
    labels = np.arange(n) % k
    names = ["c0", "c1", "c2"]
    logits_old = (rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]).astype(np.float32)
    logits_new = (rng.normal(size=(n, k)) + 2.5 * np.eye(k)[labels]).astype(np.float32)
    feats_old = rng.normal(size=(n, 8)).astype(np.float32)
    feats_new = (feats_old @ rng.normal(size=(8, 5))).astype(np.float32)
    qpos = [0, 7, 11, 20]
    gc_old, gc_new = (
        rng.random((q, 6, 6)).astype(np.float32),
        rng.random((q, 6, 6)).astype(np.float32),
    )
    sg_old, sg_new = (
        rng.random((q, 6, 6)).astype(np.float32),
        rng.random((q, 6, 6)).astype(np.float32),
    )
    in_run = build_compare(
        prediction_set(paths, shas, labels, names, logits_old),
        prediction_set(paths, shas, labels, names, logits_new),
        features_old=feats_old,
        features_new=feats_new,
        maps=ExplanationMaps(
            qpos, {"gradcam": gc_old, "gradient": sg_old}, {"gradcam": gc_new, "gradient": sg_new}
        ),
        k=5,
        seed=3,
    )
    ids = np.array([paths[p] for p in qpos], dtype=np.str_)
    write_report(
        tmp_path / "old",
        paths,
        shas,
        list(labels),
        names,
        logits_old,
        arrays={
            "features": feats_old,
            "image_ids": ids,
            "gradcam": gc_old,
            "saliency_gradient": sg_old,
        },
    )
    write_report(
        tmp_path / "new",
        paths,
        shas,
        list(labels),
        names,
        logits_new,
        arrays={
            "features": feats_new,
            "image_ids": ids,
            "gradcam": gc_new,
            "saliency_gradient": sg_new,
        },
    )
    from_folders = compare_folders(tmp_path / "old", tmp_path / "new", k=5, seed=3)
    return compare_summary(in_run), compare_summary(from_folders)


def test_folders_give_the_same_numbers_as_a_baseline_in_the_run(tmp_path: Path) -> None:
    in_run, folders = _run_pair(tmp_path)
    for key in (*COMPARE_KEYS, "accuracy_delta_ci95", "explanation_rank_corr_by_method"):
        assert folders[key] == in_run[key], key
    assert in_run["linear_cka"] is not None and in_run["knn_overlap"] is not None
    assert in_run["explanation_rank_corr"] is not None
    assert folders["notes"] == [] and folders["matching"]["manifests_differ"] is False
    assert "first-layer filters" in folders["left_out"]["filters"]


def test_parts_left_out_name_the_folder_and_the_reason(tmp_path: Path) -> None:
    paths = ["a", "b", "c", "d"]
    shas = [sha(p) for p in paths]
    feats = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    write_report(tmp_path / "old", paths, shas, [0, 1, 0, 1], ["p", "q"], onehot([0, 1, 1, 1], 2))
    write_report(
        tmp_path / "new",
        paths,
        shas,
        [0, 1, 0, 1],
        ["p", "q"],
        onehot([0, 1, 0, 0], 2),
        arrays={"features": feats, "image_ids": np.array(["a"]), "gradcam": np.ones((1, 4, 4))},
    )
    r = compare_folders(tmp_path / "old", tmp_path / "new")
    assert (
        r.left_out["features"]
        == "the baseline folder has no arrays.npz (written with output.save_arrays: true)"
    )
    assert "baseline folder has no arrays.npz" in r.left_out["explanations"]
    # Both with arrays, but different query images and no features in one of them.
    write_report(
        tmp_path / "old2",
        paths,
        shas,
        [0, 1, 0, 1],
        ["p", "q"],
        onehot([0, 1, 1, 1], 2),
        arrays={"image_ids": np.array(["b"]), "gradcam": np.ones((1, 4, 4))},
    )
    r = compare_folders(tmp_path / "old2", tmp_path / "new")
    assert (
        r.left_out["features"] == "the baseline folder's arrays.npz holds no penultimate features"
    )
    assert "explained different query images" in r.left_out["explanations"]
    write_report(
        tmp_path / "old3",
        paths,
        shas,
        [0, 1, 0, 1],
        ["p", "q"],
        onehot([0, 1, 1, 1], 2),
        arrays={"image_ids": np.array(["a"]), "saliency_gradient": np.ones((1, 4, 4))},
    )
    r = compare_folders(tmp_path / "old3", tmp_path / "new")
    assert "share no gradient or Grad-CAM maps" in r.left_out["explanations"]


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    paths = ["a.png", "b.png", "c.png"]
    shas = [sha(p) for p in paths]
    old = write_report(tmp_path / "old", paths, shas, [0, 1, 1], ["p", "q"], onehot([0, 1, 0], 2))
    new = write_report(tmp_path / "new", paths, shas, [0, 1, 1], ["p", "q"], onehot([0, 1, 1], 2))
    return old, new


def _error(old: Path, new: Path, **kw: Any) -> str:
    with pytest.raises(ReportgenError) as info:
        compare_folders(old, new, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_not_a_report_folder(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    assert _error(tmp_path / "missing", new) == (
        f"{tmp_path / 'missing'}: no such folder; pass a folder written by `reportgen run`"
    )
    assert "not a folder" in _error(old / "summary.json", new)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(old, empty) == (
        f"{empty}: not a report folder (no summary.json); pass a folder written by `reportgen run`"
    )


def test_damaged_or_foreign_summary(pair: tuple[Path, Path]) -> None:
    old, new = pair
    (new / "summary.json").write_text("{not json", encoding="utf-8")
    assert "summary.json: not valid JSON (line 1" in _error(old, new)
    (new / "summary.json").write_text(json.dumps({"tool": "deepchecks"}), encoding="utf-8")
    assert "summary.json: not written by reportgen (no reportgen_version)" in _error(old, new)
    (new / "summary.json").write_text(
        json.dumps({"reportgen_version": "0.1.0", "compare": {}}), encoding="utf-8"
    )
    assert "holds the output of `reportgen compare`, not of `reportgen run`" in _error(old, new)
    (new / "summary.json").write_text(
        json.dumps({"reportgen_version": "0.1.0", "data": {"class_names": []}}), encoding="utf-8"
    )
    assert "data.manifest_sha256 is missing or not a str" in _error(old, new)


def test_missing_or_corrupt_predictions(pair: tuple[Path, Path]) -> None:
    old, new = pair
    text = (old / "predictions.csv").read_text(encoding="utf-8")
    (old / "predictions.csv").unlink()
    msg = _error(old, new)
    assert msg.startswith(f"{old}: has no predictions.csv") and "re-run `reportgen run`" in msg
    (old / "predictions.csv").write_text(text.replace(",0,p,", ",zero,p,", 1), encoding="utf-8")
    assert f"{old / 'predictions.csv'}, line 2: label 'zero' is not a whole number" in _error(
        old, new
    )
    (old / "predictions.csv").write_text(text.rsplit("\n", 2)[0] + "\n", encoding="utf-8")
    assert "has 2 rows but summary.json says 3 images were read" in _error(old, new)
    renamed = re.sub(r"(?<=,)q(?=,)", "queue", text)
    (old / "predictions.csv").write_text(renamed, encoding="utf-8")
    assert "predictions.csv names class 1 'queue' but summary.json names it 'q'" in _error(old, new)


def test_versions_differ(pair: tuple[Path, Path]) -> None:
    old, new = pair
    summary = json.loads((old / "summary.json").read_text(encoding="utf-8"))
    summary["reportgen_version"] = "0.0.9"
    (old / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    msg = _error(old, new)
    assert f"written by reportgen 0.0.9 ({old}) and 0.1.0 ({new})" in msg
    assert "same reportgen version" in msg
    r = compare_folders(old, new, allow_version_mismatch=True)
    assert any("0.0.9" in n and "may not be comparable" in n for n in r.notes)


def test_zero_matched_images(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, _ = pair
    other = write_report(
        tmp_path / "other",
        ["a.png", "z.png"],
        [sha("A"), sha("z")],
        [0, 1],
        ["p", "q"],
        onehot([0, 1], 2),
    )
    msg = _error(old, other)
    assert "no image matches by path and SHA-256 (3 vs 2 images)" in msg
    assert "compare reports of the same data" in msg


def test_bad_arrays(pair: tuple[Path, Path]) -> None:
    old, new = pair
    (new / "arrays.npz").write_bytes(b"PK\x03\x04 not really a zip")
    msg = _error(old, new)
    assert msg.startswith(f"{new / 'arrays.npz'}: unreadable") and "save_arrays" in msg
    buf = io.BytesIO()
    np.savez(
        buf,
        dataset_ids=np.array(["a.png", "b.png", "c.png"]),
        features=np.array([{"x": 1}] * 3, dtype=object),
    )
    (new / "arrays.npz").write_bytes(buf.getvalue())
    assert "unreadable" in _error(old, new)  # object arrays need pickle: refused
    np.savez(new / "arrays.npz", dataset_ids=np.array(["a.png", "c.png", "b.png"]))
    assert "dataset_ids are not the images of the predictions.csv beside it" in _error(old, new)
    np.savez(new / "arrays.npz", features=np.zeros((3, 2)))
    assert "has no dataset_ids" in _error(old, new)
    np.savez(
        new / "arrays.npz",
        dataset_ids=np.array(["a.png", "b.png", "c.png"]),
        features=np.zeros((2, 2)),
    )
    assert "features have shape (2, 2), expected 3 rows" in _error(old, new)
    with zipfile.ZipFile(new / "arrays.npz", "w") as z:
        z.writestr("dataset_ids.npy", b"\x93NUMPY garbage")
    assert "unreadable" in _error(old, new)


def test_duplicate_class_names_cannot_be_matched(pair: tuple[Path, Path]) -> None:
    old, new = pair
    summary = json.loads((old / "summary.json").read_text(encoding="utf-8"))
    summary["data"]["class_names"] = ["p", "q", "p"]
    (old / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    compare_folders(old, new)  # the same indices: names need not be unique
    summary = json.loads((new / "summary.json").read_text(encoding="utf-8"))
    summary["data"]["class_names"] = ["q", "p"]
    (new / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    text = (new / "predictions.csv").read_text(encoding="utf-8")
    swapped = re.sub(r"(?<=,)([pq])(?=,)", lambda m: "q" if m[1] == "p" else "p", text)
    (new / "predictions.csv").write_text(swapped, encoding="utf-8")
    assert "class name(s) 'p' name several classes" in _error(old, new)


def test_read_report_folder_keeps_class_names_from_the_summary(pair: tuple[Path, Path]) -> None:
    old, _ = pair
    summary = json.loads((old / "summary.json").read_text(encoding="utf-8"))
    summary["data"]["class_names"] = ["p", "q", "r"]  # a class no row mentions
    (old / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    f = read_report_folder(old)
    assert f.predictions.class_names == ["p", "q", "r"] and f.arrays is None


@pytest.mark.parametrize("where", ["old", "new", "old/sub", "parent"])
def test_compare_never_writes_into_its_inputs(pair: tuple[Path, Path], where: str) -> None:
    """--out that is, lies inside or contains an input report folder: exit 2 before any work,
    the archived report left as it was (before, --out OLD replaced OLD's report)."""
    from click.testing import CliRunner

    from reportgen.cli import cli

    old, new = pair
    out = {"old": old, "new": new, "old/sub": old / "sub", "parent": old.parent}[where]
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, ["compare", str(old), str(new), "--out", str(out)])
    assert result.exit_code == 2, result.output
    relation = {"old": "is", "new": "is", "old/sub": "lies inside", "parent": "contains"}[where]
    assert f" {relation} the " in result.output and "choose an output folder outside it" in (
        result.output
    )
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()} == before


def test_compare_locks_its_folder_and_leaves_no_stale_file(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A second comparison with fewer formats kept the first one's report.pdf; two at once
    wrote over each other. compare now uses the run's output-folder rules."""
    from reportgen.compare.report import compare_reports
    from reportgen.runtime.outdir import OutputBusy, prepare_output_dir

    old, new = pair
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"%PDF- an earlier comparison")
    (out / "notes.txt").write_text("mine")
    compare_reports(old, new, out, formats=["html"])
    assert not (out / "report.pdf").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only reportgen's own files go
    assert {"report.html", "summary.json", "summary.md"} <= {p.name for p in out.iterdir()}
    with prepare_output_dir(out), pytest.raises(OutputBusy, match="in use by another"):
        compare_reports(old, new, out, formats=["html"])


def test_thumbnails_read_only_regular_files_inside_the_data_root(tmp_path: Path) -> None:
    """predictions.csv is archived input: '../x', '/dev/zero' and a FIFO were read (until
    MemoryError, or forever). Only regular files inside the root with the matched SHA-256."""
    import hashlib
    import os

    import numpy as np
    from PIL import Image

    from reportgen.compare.folders import folder_thumbnails

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(root / "a" / "ok.png")
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / "outside.png")
    os.mkfifo(root / "a" / "pipe.png")
    (root / "a" / "escape.png").symlink_to(tmp_path / "outside.png")

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    shas = {
        "a/ok.png": digest(root / "a" / "ok.png"),
        "../outside.png": digest(tmp_path / "outside.png"),
        "a/escape.png": digest(tmp_path / "outside.png"),
        "/dev/zero": "0" * 64,
        "a/pipe.png": "0" * 64,
    }
    thumbs = folder_thumbnails(root, shas)(list(shas))
    assert thumbs[0] is not None and thumbs[0].shape[:2] == (8, 8)
    assert thumbs[1:] == [None, None, None, None]


def test_damaged_archives_are_one_line_before_any_work(pair: tuple[Path, Path]) -> None:
    """A class index of 10^10 built a 10^10-entry list; "model": "resnet" or "metrics": 5 in
    summary.json ended in a traceback; all-NaN features were compared as numbers."""
    old, new = pair
    good = (new / "summary.json").read_text(encoding="utf-8")
    for key, value, message in [
        ("model", "resnet", "model is a str, not an object"),
        ("metrics", 5, "metrics is a int, not an object"),
    ]:
        damaged = json.loads(good)
        damaged[key] = value
        (new / "summary.json").write_text(json.dumps(damaged), encoding="utf-8")
        assert message in _error(old, new)
    damaged = json.loads(good)
    damaged["metrics"] = {"accuracy": [1, 2]}
    (new / "summary.json").write_text(json.dumps(damaged), encoding="utf-8")
    assert "metrics.accuracy is not a number, text or null" in _error(old, new)
    (new / "summary.json").write_text(good, encoding="utf-8")

    csv_text = (new / "predictions.csv").read_text(encoding="utf-8")
    lines = csv_text.splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("prediction")] = "10000000000"
    (new / "predictions.csv").write_text(
        "\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n", encoding="utf-8"
    )
    assert "prediction 10000000000 is not a class index" in _error(old, new)


def test_all_nan_features_are_refused(tmp_path: Path) -> None:
    paths = ["a.png", "b.png"]
    shas = [sha(p) for p in paths]
    ids = np.array(paths, dtype=np.str_)
    old = write_report(
        tmp_path / "old", paths, shas, [0, 1], ["p", "q"], onehot([0, 1], 2),
        arrays={"dataset_ids": ids, "features": np.full((2, 4), np.nan, np.float32)},
    )  # fmt: skip
    new = write_report(tmp_path / "new", paths, shas, [0, 1], ["p", "q"], onehot([0, 1], 2))
    assert "features are NaN or infinite everywhere" in _error(old, new)
