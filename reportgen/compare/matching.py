"""Matching two archived report folders' images and classes, and comparing them
(``reportgen compare`` and ``reportgen history`` share :func:`align_folders`, so their flip counts
agree).

Images are matched by path *and* SHA-256; classes by name when the two class lists differ (a
multi-label comparison keeps the labels both models have); the truth is the new folder's labels.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.compare.folders import (
    ARRAYS,
    FILTERS_KEY,
    MAP_KEYS,
    ReportFolder,
    folder_error,
    read_report_folder,
)
from reportgen.compare.metrics import CompareResult, ExplanationMaps, build_compare
from reportgen.errors import ReportgenError
from reportgen.report.predictions import PredictionSet, csv_path

# --------------------------------------------------------------------------- matching


def _subset(ps: PredictionSet, rows: np.ndarray) -> PredictionSet:
    def part(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

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
        p_positive=part(ps.p_positive),
        probabilities=part(ps.probabilities),
        label_sets=part(ps.label_sets),
        predicted_sets=part(ps.predicted_sets),
    )


def _label_columns(
    old: PredictionSet, new: PredictionSet, notes: list[str]
) -> tuple[PredictionSet, PredictionSet]:
    """Two multi-label sets on the labels both name, in the new report's order (a label only
    one model has cannot be compared, and the reader is told)."""
    if old.class_names == new.class_names:
        return old, new
    shared = [name for name in new.class_names if name in set(old.class_names)]
    if not shared:
        raise ReportgenError(
            f"{old.source} and {new.source}: the two multi-label models share no label name "
            f"({_names(old.class_names)} vs {_names(new.class_names)}); compare reports of "
            "models with the same labels"
        )
    only_old = [n for n in old.class_names if n not in set(shared)]
    only_new = [n for n in new.class_names if n not in set(shared)]
    notes.append(
        f"The label lists differ: the {len(shared)} labels both models have are compared"
        + (f"; only in the baseline: {_names(only_old)}" if only_old else "")
        + (f"; only in the new report: {_names(only_new)}" if only_new else "")
        + "."
    )

    def columns(ps: PredictionSet) -> PredictionSet:
        index = [ps.class_names.index(name) for name in shared]
        assert ps.probabilities is not None and ps.predicted_sets is not None
        assert ps.label_sets is not None
        sets = ps.label_sets[:, index]
        known = (ps.label_sets >= 0).all(axis=1)
        correct = np.where(known, (ps.predicted_sets[:, index] == (sets > 0)).all(axis=1), -1)
        return dataclasses.replace(
            ps,
            class_names=list(shared),
            probabilities=ps.probabilities[:, index],
            predicted_sets=ps.predicted_sets[:, index],
            label_sets=sets,
            correct=correct.astype(np.int8),
        )

    return columns(old), columns(new)


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
            raise folder_error(
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

    if old.predictions.single_label != new.predictions.single_label:
        kinds = [
            "multi-label" if not f.predictions.single_label else "single-label" for f in (old, new)
        ]
        raise ReportgenError(
            f"{old.path} and {new.path}: the baseline's model is {kinds[0]} and the new one is "
            f"{kinds[1]}; their predictions (label sets and classes) cannot be compared"
        )
    if not new.predictions.single_label:
        old_ps, new_ps = _label_columns(
            _subset(old.predictions, m.old_rows), _subset(new.predictions, m.new_rows), notes
        )
        differ = old.predictions.class_names != new.predictions.class_names
        return _aligned(old, new, old_ps, new_ps, notes, m, differ)
    mapping, vocab = _class_map(old, new, notes)
    old_ps = _subset(_remap(old.predictions, mapping, vocab), m.old_rows)
    new_ps = _subset(_remap(new.predictions, None, vocab), m.new_rows)
    return _aligned(old, new, old_ps, new_ps, notes, m, mapping is not None)


def _aligned(
    old: ReportFolder,
    new: ReportFolder,
    old_ps: PredictionSet,
    new_ps: PredictionSet,
    notes: list[str],
    m: _Match,
    classes_differ: bool,
) -> tuple[PredictionSet, PredictionSet, dict[str, Any], _Match]:
    """Notes on the labels, and how the images were matched."""
    manifests_differ = (
        old.summary["data"]["manifest_sha256"] != new.summary["data"]["manifest_sha256"]
    )
    if old_ps.label_sets is not None and new_ps.label_sets is not None:
        both = (old_ps.label_sets >= 0).all(axis=1) & (new_ps.label_sets >= 0).all(axis=1)
        disagree = int((both & (old_ps.label_sets != new_ps.label_sets).any(axis=1)).sum())
    else:
        disagree = int(
            ((old_ps.labels >= 0) & (new_ps.labels >= 0) & (old_ps.labels != new_ps.labels)).sum()
        )
    if disagree:
        notes.append(
            f"{disagree} matched images carry different labels in the two folders; the new "
            "report's labels are used as the truth for both models."
        )
    if not new_ps.scored.any() and old_ps.scored.any():
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
        "class_lists_differ": classes_differ,
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


def _discovered(new: ReportFolder, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The new report's flagged discovered clusters (its slices section's D1 …) as masks over
    the matched images: their cluster numbers from summary.json, each image's from arrays.npz."""
    record = new.summary.get("slices")
    found = record.get("discovered") if isinstance(record, dict) else None
    clusters = None if new.arrays is None else new.arrays.get("slices_clusters")
    if not isinstance(found, list) or clusters is None or len(clusters) != len(new.predictions):
        return {}
    out = {}
    for entry in found:
        if isinstance(entry, dict) and entry.get("flagged") and isinstance(entry.get("id"), str):
            numbers = [c for c in entry.get("clusters", []) if isinstance(c, int) and c > 0]
            out[entry["id"]] = np.isin(clusters[rows], numbers)
    return out


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
        discovered=_discovered(new, m.new_rows),
    )


# --------------------------------------------------------------------------- thumbnails
