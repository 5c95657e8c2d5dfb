"""``reportgen compare OLD_DIR NEW_DIR``: compare two archived report folders without a model.

Each folder is what ``reportgen run`` wrote: ``summary.json``, ``predictions.csv`` and, when the
run had ``output.save_arrays: true``, ``arrays.npz``. Images are matched by path *and* SHA-256
(an image that was renamed or whose bytes changed is not matched, and is counted); classes are
matched by name when the two class lists differ; the truth is the new folder's labels. Which
parts can be compared follows from what both folders hold (features and explanation maps need
both ``arrays.npz``), and every part left out is recorded with the reason. Then
:func:`reportgen.compare.metrics.build_compare` does the same work as a baseline inside a run.

Every problem with the inputs is one :class:`ReportgenError` naming the folder or file and what
to do; nothing is loaded with pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.compare.metrics import CompareResult, ExplanationMaps, build_compare
from reportgen.compare.present import Thumbnails
from reportgen.errors import ReportgenError
from reportgen.report.figures import to_uint8
from reportgen.report.predictions import FILE_NAME, PredictionSet, csv_path, read_predictions

SUMMARY = "summary.json"
ARRAYS = "arrays.npz"
FILTERS_KEY = "first_layer_filters"
"""arrays.npz key for F×C×kh×kw first-layer weights, when a run stores them."""
MAP_KEYS = {"gradient": "saliency_gradient", "gradcam": "gradcam"}
"""Explanation method -> arrays.npz key (Q×H×W maps of the query images)."""
_ARRAY_KEYS = ("dataset_ids", "features", "image_ids", FILTERS_KEY, *MAP_KEYS.values())


@dataclass(frozen=True, eq=False)
class ReportFolder:
    """One report folder as read from disk."""

    path: Path
    summary: dict[str, Any]
    predictions: PredictionSet
    """Rows in the run's dataset order; ``class_names`` from summary.json (extended by the CSV)."""
    arrays: dict[str, np.ndarray] | None
    """The arrays of arrays.npz this comparison uses; None when the folder has no arrays.npz."""

    @property
    def version(self) -> str:
        return str(self.summary["reportgen_version"])

    @property
    def arch(self) -> str:
        model = self.summary.get("model")
        return str(model.get("arch", "?")) if isinstance(model, dict) else "?"


def _fail(where: Path | str, message: str) -> ReportgenError:
    return ReportgenError(f"{where}: {message}")


def _read_summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY
    if not path.is_file():
        raise _fail(
            folder,
            f"not a report folder (no {SUMMARY}); pass a folder written by `reportgen run`",
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text; is it a summary.json written by reportgen?") from None
    except json.JSONDecodeError as exc:
        raise _fail(
            path, f"not valid JSON (line {exc.lineno}: {exc.msg}); the file is damaged"
        ) from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("reportgen_version"), str):
        raise _fail(
            path,
            "not written by reportgen (no reportgen_version); pass a folder written by "
            "`reportgen run`",
        )
    data = summary.get("data")
    if not isinstance(data, dict):
        if "compare" in summary:
            raise _fail(
                folder,
                "holds the output of `reportgen compare`, not of `reportgen run`; pass the two "
                "report folders that were compared",
            )
        raise _fail(path, "has no data object; pass a folder written by `reportgen run`")
    for key, kind in (("manifest_sha256", str), ("class_names", list), ("num_images", int)):
        if not isinstance(data.get(key), kind):
            raise _fail(
                path,
                f"data.{key} is missing or not a {kind.__name__}; the file is damaged or from "
                "another tool",
            )
    if not all(isinstance(c, str) for c in data["class_names"]):
        raise _fail(path, "data.class_names must be a list of strings")
    # What compare reads besides data: the shape of each, checked here once (not a traceback
    # deep inside the comparison).
    for key in ("model", "metrics", "run", "provenance"):
        if key in summary and not isinstance(summary[key], dict):
            raise _fail(
                path,
                f"{key} is a {type(summary[key]).__name__}, not an object; the file is damaged "
                "or from another tool",
            )
    model = summary.get("model", {})
    for key in ("arch", "sha256"):
        if key in model and model[key] is not None and not isinstance(model[key], str):
            raise _fail(path, f"model.{key} is not a string; the file is damaged")
    metrics = summary.get("metrics", {})
    bad = [k for k, v in metrics.items() if not (v is None or isinstance(v, int | float | str))]
    if bad:
        raise _fail(path, f"metrics.{bad[0]} is not a number, text or null; the file is damaged")
    return summary


def _class_vocabulary(folder: Path, summary_names: list[str], ps: PredictionSet) -> list[str]:
    """summary.json's class names, extended by the names predictions.csv gives for higher indices.

    A class the CSV names differently from summary.json means the two files come from different
    runs.
    """
    vocab = list(summary_names)
    for i, name in enumerate(ps.class_names):
        if i < len(vocab):
            # The CSV names a class it never saw by its index; only a real name can disagree.
            if name != vocab[i] and name != str(i):
                raise _fail(
                    folder,
                    f"{FILE_NAME} names class {i} {name!r} but {SUMMARY} names it {vocab[i]!r}: "
                    "the two files come from different runs; re-run `reportgen run`",
                )
        else:
            vocab.append(name)
    return vocab


def _read_arrays(folder: Path, ps: PredictionSet) -> dict[str, np.ndarray] | None:
    path = folder / ARRAYS
    if not path.is_file():
        return None
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in _ARRAY_KEYS:
                if key in npz.files:
                    out[key] = np.asarray(npz[key])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(
            path,
            f"unreadable ({exc}); delete it to compare predictions only, or re-run "
            "`reportgen run` with output.save_arrays: true",
        ) from None
    ids = out.get("dataset_ids")
    if ids is None:
        raise _fail(path, "has no dataset_ids; it was not written by `reportgen run`")
    if [csv_path(str(i)) for i in ids.tolist()] != ps.paths:
        raise _fail(
            path,
            f"its dataset_ids are not the images of the {FILE_NAME} beside it (files from "
            "different runs); re-run `reportgen run` or delete arrays.npz",
        )
    feats = out.get("features")
    if feats is not None and (feats.ndim != 2 or feats.shape[0] != len(ps)):
        raise _fail(
            path, f"features have shape {feats.shape}, expected {len(ps)} rows (one per image)"
        )
    if feats is not None and feats.size and not bool(np.isfinite(feats).any()):
        raise _fail(
            path,
            "features are NaN or infinite everywhere; nothing to compare them by — delete "
            "arrays.npz to compare predictions only, or re-run `reportgen run`",
        )
    return out


def read_report_folder(path: str | Path, *, arrays: bool = True) -> ReportFolder:
    """Read and check one report folder (summary.json, predictions.csv, optional arrays.npz).

    ``arrays=False``: leave arrays.npz unread (``reportgen history`` needs predictions only)."""
    folder = Path(path)
    if not folder.exists():
        raise _fail(folder, "no such folder; pass a folder written by `reportgen run`")
    if not folder.is_dir():
        raise _fail(folder, "not a folder; pass a folder written by `reportgen run`")
    summary = _read_summary(folder)
    csv_file = folder / FILE_NAME
    if not csv_file.is_file():
        raise _fail(
            folder,
            f"has no {FILE_NAME} (written by `reportgen run` since predictions.csv was added); "
            "re-run `reportgen run` for this model to write one",
        )
    recorded = (summary.get("output") or {}).get("predictions_sha256")
    if isinstance(recorded, str):
        try:
            actual = hashlib.sha256(csv_file.read_bytes()).hexdigest()
        except OSError as exc:
            raise _fail(csv_file, f"cannot be read ({exc.strerror or exc})") from None
        if actual != recorded:
            raise _fail(
                folder,
                f"its {FILE_NAME} is not the one {SUMMARY} was written with: the folder mixes "
                "two runs (a write was interrupted) or a file was edited; re-run `reportgen run`",
            )
    ps = read_predictions(csv_file)
    expected = summary["data"]["num_images"]
    if len(ps) != expected:
        raise _fail(
            csv_file,
            f"has {len(ps)} rows but {SUMMARY} says {expected} images were read: the files "
            "come from different runs; re-run `reportgen run`",
        )
    vocab = _class_vocabulary(folder, summary["data"]["class_names"], ps)
    ps = dataclasses.replace(ps, class_names=vocab)
    return ReportFolder(folder, summary, ps, _read_arrays(folder, ps) if arrays else None)


# --------------------------------------------------------------------------- matching


def _subset(ps: PredictionSet, rows: np.ndarray) -> PredictionSet:
    return dataclasses.replace(
        ps,
        paths=[ps.paths[i] for i in rows],
        sha256=[ps.sha256[i] for i in rows],
        labels=ps.labels[rows],
        predictions=ps.predictions[rows],
        confidence=ps.confidence[rows],
        p_label=ps.p_label[rows],
        correct=ps.correct[rows],
        metadata={c: [v[i] for i in rows] for c, v in ps.metadata.items()},
    )


def _class_map(
    old: ReportFolder, new: ReportFolder, notes: list[str]
) -> tuple[np.ndarray | None, list[str]]:
    """Old class index -> index in the shared vocabulary (None: the same indices).

    A name that is just its index (``"7"`` at position 7) is a class without a known name (the
    report's convention), so such a name does not make two lists differ: a 1000-class model's
    unnamed predictions, or a run without ``data.labels``, still match by index.
    """
    old_names, new_names = old.predictions.class_names, new.predictions.class_names
    if old_names == new_names:
        return None, list(new_names)
    pairs = list(enumerate(zip(old_names, new_names, strict=False)))
    if all(a == b or a == str(i) or b == str(i) for i, (a, b) in pairs):
        longer = old_names if len(old_names) > len(new_names) else new_names
        vocab = [b if b != str(i) else a for i, (a, b) in pairs] + longer[len(pairs) :]
        unnamed = [i for i, (a, b) in pairs if a != b]
        if unnamed:
            side = "baseline" if old_names[unnamed[0]] == str(unnamed[0]) else "new"
            notes.append(
                f"The {side} report has no names for {len(unnamed)} classes the other one names "
                f"(e.g. class {unnamed[0]}: {vocab[unnamed[0]]!r}); classes are matched by index."
            )
        return None, vocab
    for folder, names in ((old, old_names), (new, new_names)):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        if dup:
            raise _fail(
                folder.path,
                f"class name(s) {', '.join(repr(d) for d in dup[:5])} name several classes, so "
                "the two class lists (which differ) cannot be matched by name",
            )
    vocab = list(new_names)
    index = {n: i for i, n in enumerate(vocab)}
    only_old = [n for n in old_names if n not in index]
    for n in only_old:
        index[n] = len(vocab)
        vocab.append(n)
    only_new = [n for n in new_names if n not in set(old_names)]
    shared = len(old_names) - len(only_old)
    msg = (
        f"The class lists differ ({len(old_names)} classes in the baseline, {len(new_names)} in "
        f"the new report): classes are matched by name ({shared} shared"
    )
    if only_old:
        msg += f"; only in the baseline: {_names(only_old)}"
    if only_new:
        msg += f"; only in the new report: {_names(only_new)}"
    notes.append(msg + ").")
    return np.array([index[n] for n in old_names], dtype=np.int64), vocab


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remap(ps: PredictionSet, mapping: np.ndarray | None, vocab: list[str]) -> PredictionSet:
    if mapping is None:
        return dataclasses.replace(ps, class_names=vocab)
    size = len(mapping)
    if ps.labels.size and max(int(ps.labels.max()), int(ps.predictions.max())) >= size:
        # Only possible for a damaged folder: every index in the CSV is in its vocabulary.
        raise ReportgenError(f"{ps.source}: class index beyond the class list")
    labels = np.where(ps.labels >= 0, mapping[np.maximum(ps.labels, 0)], -1)
    preds = mapping[ps.predictions]
    correct = np.where(ps.correct >= 0, (preds == labels).astype(np.int8), -1).astype(np.int8)
    return dataclasses.replace(
        ps, labels=labels, predictions=preds, correct=correct, class_names=vocab
    )


@dataclass(frozen=True, eq=False)
class _Match:
    old_rows: np.ndarray
    new_rows: np.ndarray
    only_old: int
    only_new: int
    changed: int
    renamed: int


def _match(old: PredictionSet, new: PredictionSet) -> _Match:
    old_index = {(p, s): i for i, (p, s) in enumerate(zip(old.paths, old.sha256, strict=True))}
    new_keys = list(zip(new.paths, new.sha256, strict=True))
    pairs = [(old_index[key], j) for j, key in enumerate(new_keys) if key in old_index]
    matched = {key for key in new_keys if key in old_index}
    un_old = [key for key in old_index if key not in matched]
    un_new = [key for key in new_keys if key not in matched]
    new_paths = {p for p, _ in un_new}
    changed = sum(1 for p, _ in un_old if p in new_paths)
    # Renamed: an unmatched new image whose bytes an unmatched old image had under another path.
    old_paths_by_sha: dict[str, set[str]] = {}
    for p, s in un_old:
        old_paths_by_sha.setdefault(s, set()).add(p)
    renamed = sum(1 for p, s in un_new if p not in old_paths_by_sha.get(s, {p}))
    return _Match(
        old_rows=np.array([i for i, _ in pairs], dtype=np.int64),
        new_rows=np.array([j for _, j in pairs], dtype=np.int64),
        only_old=len(un_old),
        only_new=len(un_new),
        changed=changed,
        renamed=renamed,
    )


def _why_no_arrays(old: ReportFolder, new: ReportFolder, key: str, what: str) -> str | None:
    """None when both folders hold ``key`` in arrays.npz, else why not."""
    missing = []
    for role, f in (("baseline", old), ("new", new)):
        if f.arrays is None:
            missing.append(
                f"the {role} folder has no {ARRAYS} (written with output.save_arrays: true)"
            )
        elif key not in f.arrays:
            missing.append(f"the {role} folder's {ARRAYS} holds no {what}")
    return "; ".join(missing) if missing else None


def _explanation_maps(
    old: ReportFolder, new: ReportFolder, new_rows: np.ndarray, reasons: dict[str, str]
) -> ExplanationMaps | None:
    why = _why_no_arrays(old, new, "image_ids", "query images (saliency did not run)")
    if why is not None:
        reasons["explanations"] = why
        return None
    assert old.arrays is not None and new.arrays is not None
    methods = {m: k for m, k in MAP_KEYS.items() if k in old.arrays and k in new.arrays}
    if not methods:
        reasons["explanations"] = (
            f"the two {ARRAYS} share no gradient or Grad-CAM maps ({', '.join(MAP_KEYS.values())})"
        )
        return None
    # Row in the aligned (matched) sets of each matched path.
    aligned = {new.predictions.paths[j]: pos for pos, j in enumerate(new_rows.tolist())}
    old_q = {csv_path(str(q)): i for i, q in enumerate(old.arrays["image_ids"].tolist())}
    picks = [
        (aligned[p], old_q[p], i)
        for i, p in enumerate(csv_path(str(q)) for q in new.arrays["image_ids"].tolist())
        if p in aligned and p in old_q
    ]
    if not picks:
        reasons["explanations"] = (
            "the two runs explained different query images (data.queries) or the query images "
            "did not match"
        )
        return None
    oi = [o for _, o, _ in picks]
    ni = [n for _, _, n in picks]
    return ExplanationMaps(
        positions=[pos for pos, _, _ in picks],
        old={m: old.arrays[k][oi] for m, k in methods.items()},
        new={m: new.arrays[k][ni] for m, k in methods.items()},
    )


def align_folders(
    old: ReportFolder, new: ReportFolder, notes: list[str]
) -> tuple[PredictionSet, PredictionSet, dict[str, Any], _Match]:
    """The two folders' predictions on the images they share (matched by path and SHA-256),
    in one class vocabulary, and how they were matched; notes for the reader are appended.

    ``reportgen compare`` and ``reportgen history`` both use it, so their flip counts agree.
    """
    m = _match(old.predictions, new.predictions)
    if m.new_rows.size == 0:
        raise ReportgenError(
            f"{old.path} and {new.path}: no image matches by path and SHA-256 "
            f"({len(old.predictions)} vs {len(new.predictions)} images); compare reports of "
            "the same data"
        )
    manifests_differ = (
        old.summary["data"]["manifest_sha256"] != new.summary["data"]["manifest_sha256"]
    )
    if manifests_differ or m.only_old or m.only_new:
        notes.append(
            ("The data manifests differ" if manifests_differ else "Not every image matched")
            + f": only the {m.new_rows.size} images with the same path and SHA-256 are compared "
            f"({m.only_old} only in the baseline, {m.only_new} only in the new report; "
            f"{m.changed} with the same path but different content, {m.renamed} renamed)."
        )

    mapping, vocab = _class_map(old, new, notes)
    old_ps = _subset(_remap(old.predictions, mapping, vocab), m.old_rows)
    new_ps = _subset(_remap(new.predictions, None, vocab), m.new_rows)
    disagree = int(
        ((old_ps.labels >= 0) & (new_ps.labels >= 0) & (old_ps.labels != new_ps.labels)).sum()
    )
    if disagree:
        notes.append(
            f"{disagree} matched images carry different labels in the two folders; the new "
            "report's labels are used as the truth for both models."
        )
    if not (new_ps.labels >= 0).any() and (old_ps.labels >= 0).any():
        notes.append(
            "The new report is unlabelled but the baseline's is labelled: without the new "
            "report's labels, flips compare the predictions only."
        )

    matching = {
        "baseline_images": len(old.predictions),
        "new_images": len(new.predictions),
        "matched": int(m.new_rows.size),
        "only_baseline": m.only_old,
        "only_new": m.only_new,
        "changed_content": m.changed,
        "renamed": m.renamed,
        "manifests_differ": manifests_differ,
        "class_lists_differ": mapping is not None,
        "label_disagreements": disagree,
        "baseline_version": old.version,
        "new_version": new.version,
    }
    return (
        dataclasses.replace(old_ps, source=str(old.path)),
        dataclasses.replace(new_ps, source=str(new.path)),
        matching,
        m,
    )


def compare_folders(
    old_dir: str | Path,
    new_dir: str | Path,
    *,
    seed: int = 0,
    k: int = 10,
    bins: int = 15,
    allow_version_mismatch: bool = False,
) -> CompareResult:
    """Compare the report folder ``new_dir`` against the baseline ``old_dir`` (no model loaded).

    ``allow_version_mismatch``: compare folders written by different reportgen versions (a note
    says so) instead of refusing.
    """
    old = read_report_folder(old_dir)
    new = read_report_folder(new_dir)
    notes: list[str] = []
    reasons: dict[str, str] = {}
    if old.version != new.version:
        msg = f"written by reportgen {old.version} ({old.path}) and {new.version} ({new.path})"
        if not allow_version_mismatch:
            raise ReportgenError(
                f"{old.path} and {new.path}: {msg}; write both with the same reportgen version "
                "(re-run `reportgen run`) or allow the mismatch explicitly"
            )
        notes.append(f"The two folders were {msg}; their numbers may not be comparable.")

    old_ps, new_ps, matching, m = align_folders(old, new, notes)
    feats_old = feats_new = None
    why = _why_no_arrays(old, new, "features", "penultimate features")
    if why is None:
        assert old.arrays is not None and new.arrays is not None
        feats_old = old.arrays["features"][m.old_rows]
        feats_new = new.arrays["features"][m.new_rows]
    else:
        reasons["features"] = why

    maps = _explanation_maps(old, new, m.new_rows, reasons)

    filters = None
    why = _why_no_arrays(old, new, FILTERS_KEY, "first-layer filters")
    if why is None:
        assert old.arrays is not None and new.arrays is not None
        filters = (old.arrays[FILTERS_KEY], new.arrays[FILTERS_KEY])
        if filters[0].shape != filters[1].shape:
            reasons["filters"] = (
                f"first-layer filters differ in shape ({old.arch}: "
                f"{'×'.join(map(str, filters[0].shape))}, {new.arch}: "
                f"{'×'.join(map(str, filters[1].shape))}); they are compared only between the "
                "same architecture"
            )
            filters = None
    else:
        reasons["filters"] = why

    return build_compare(
        old_ps,
        new_ps,
        features_old=feats_old,
        features_new=feats_new,
        maps=maps,
        filters=filters,
        seed=seed,
        k=k,
        bins=bins,
        left_out=reasons,
        notes=notes,
        matching=matching,
    )


# --------------------------------------------------------------------------- thumbnails


THUMBNAIL_SOURCE_BYTES = 256 * 1024 * 1024
"""The largest image file compare reads for a thumbnail."""


def folder_thumbnails(root: str | Path, sha256: Mapping[str, str], size: int = 72) -> Thumbnails:
    """Thumbnails read from a data folder (for ``reportgen compare``, which loads no model).

    ``sha256``: path -> the SHA-256 the comparison matched; a file that is missing, unreadable
    or whose bytes changed since gives None (so a gallery never shows a different image).
    Decoding follows the run's rules (Pillow limits, EXIF orientation, first frame).
    """
    from reportgen.loading.folders import DecodeFailure, read_file
    from reportgen.loading.images import decode_image

    try:
        base = Path(root).resolve()
    except OSError:
        return lambda paths: [None] * len(paths)

    def read(path: str) -> np.ndarray | None:
        # The paths come from an archived predictions.csv: only regular files inside the data
        # root, opened without blocking (a FIFO), at most THUMBNAIL_SOURCE_BYTES (/dev/zero).
        try:
            target = (base / path).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if base not in target.parents:
            return None
        try:
            data = read_file(target, max_bytes=THUMBNAIL_SOURCE_BYTES)
        except DecodeFailure:
            return None
        if hashlib.sha256(data).hexdigest() != sha256.get(path):
            return None
        try:
            arr = decode_image(data, 3, path)
        except DecodeFailure:
            return None
        h, w = arr.shape[:2]
        step = max(1, int(np.ceil(max(h, w) / size)))
        small = arr[::step, ::step] if step > 1 else arr
        return to_uint8(small)

    def thumbs(paths: Sequence[str]) -> list[np.ndarray | None]:
        return [read(p) for p in paths]

    return thumbs
