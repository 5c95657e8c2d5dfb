"""``reportgen history DIR...``: one page over every archived release, no model loaded.

Each folder is what ``reportgen run`` wrote. What the page shows comes from the folders alone:

* **trends**: every headline metric the runs declared (summary.json's ``headlines``; older
  folders, which did not record them, fall back to the metrics the installed analyses declare),
  each value exactly the one in that release's summary.json; accuracy with a Wilson 95 %
  interval computed from the release's predictions.csv;
* **per-class recall** from each predictions.csv, classes sorted by their worst drop between two
  consecutive releases on the same data;
* **consecutive changes**: each pair of neighbouring releases matched and counted by the same
  code as ``reportgen compare`` (:func:`reportgen.compare.folders.align_folders`,
  :func:`reportgen.compare.metrics.build_compare`), so the flip counts are compare's;
* **attribution-check verdicts** per method and release (randomisation; better than a random map);
* **data changes**: where the data manifest's SHA-256 changes, trends break (a trend across
  different data is not a trend), and ``*_drop_from_best`` looks only at the releases on the
  last release's data.

A folder that is not a report, or lacks predictions.csv, is described and left out of what it
cannot give; a path that does not exist is an input error.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reportgen.compare.folders import (
    ReportFolder,
    _read_summary,
    read_report_folder,
)
from reportgen.compare.matching import align_folders
from reportgen.compare.metrics import build_compare, compare_summary
from reportgen.errors import ReportgenError
from reportgen.methods.slicing import wilson
from reportgen.report.predictions import FILE_NAME

HISTORY_PREFIX = "history."
STEP_KEYS = (
    "matched_images",
    "negative_flips",
    "positive_flips",
    "negative_flip_rate",
    "positive_flip_rate",
    "mcnemar_p",
    "changed_predictions",
    "accuracy_delta",
)
"""The numbers of ``reportgen compare`` shown for each pair of consecutive releases."""
Sort = Literal["given", "name", "release"]


@dataclass(eq=False)
class Release:
    path: Path
    label: str
    summary: dict[str, Any]
    folder: ReportFolder | None
    """Its predictions (None when predictions.csv is missing or cannot be used)."""
    missing: list[str] = field(default_factory=list)
    """What the folder does not give, in words (older reportgen, no predictions.csv ...)."""

    @property
    def manifest(self) -> str | None:
        value = (self.summary.get("data") or {}).get("manifest_sha256")
        return value if isinstance(value, str) else None

    @property
    def metrics(self) -> dict[str, Any]:
        m = self.summary.get("metrics")
        return m if isinstance(m, dict) else {}


@dataclass(eq=False)
class Step:
    """The change from release ``old`` to release ``new`` (positions in the history)."""

    old: int
    new: int
    numbers: dict[str, Any]
    """:data:`STEP_KEYS` from compare's summary (empty when the pair could not be compared)."""
    reason: str | None
    data_changed: bool
    notes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class History:
    releases: list[Release]
    not_reports: list[tuple[str, str]]
    """(folder, why) for each folder given that is not a report."""
    headlines: list[tuple[str, str, str]]
    """(key, label, kind) of the metrics trended, in page order."""
    trends: dict[str, list[float | None]]
    accuracy_ci: list[tuple[float, float] | None]
    class_names: list[str]
    recall: np.ndarray
    """releases × classes recall (NaN: the class has no labelled image in that release)."""
    worst_drop: np.ndarray
    """Per class, the largest recall decrease between consecutive releases on the same data."""
    steps: list[Step]
    slice_names: list[str]
    """``column = value`` of every subgroup a release's slices section reported."""
    slice_accuracy: np.ndarray
    """releases × subgroups accuracy (NaN: not reported in that release)."""
    slice_worst_drop: np.ndarray
    verdicts: dict[str, list[str | None]]
    """Attribution method -> per release: ok, fails randomisation, not better than random ..."""
    segments: list[int]
    """Index of the first release of each run of releases on the same data."""
    metrics: dict[str, float | None]
    """``history.*`` values for gates."""


# --------------------------------------------------------------------------- reading


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


def read_release(path: Path) -> Release:
    """One archived report. Raises ReportgenError when it is not a report folder."""
    summary = _read_summary(path)
    label = (summary.get("run") or {}).get("release") or path.resolve().name
    missing: list[str] = []
    folder: ReportFolder | None = None
    if not (path / FILE_NAME).is_file():
        missing.append(f"no {FILE_NAME}: per-class recall and flips are not available")
    else:
        try:
            folder = read_report_folder(path, arrays=False)
        except ReportgenError as exc:
            missing.append(f"{FILE_NAME} not used: {exc}")
    if "headlines" not in summary:
        missing.append(
            f"written by reportgen {summary.get('reportgen_version', '?')}, which did not record "
            "its headline metrics: the metrics of the installed analyses are trended"
        )
    return Release(path, str(label), summary, folder, missing)


def _read_or_reason(path: Path) -> Release | str:
    try:
        return read_release(path)
    except ReportgenError as exc:
        return str(exc)


def _read_all(folders: Sequence[Path]) -> list[Release | str]:
    """Every folder read (a Release, or why it is not a report), on up to 4 processes: parsing a
    50,000-row predictions.csv is Python work, and an archive holds dozens."""
    workers = min(4, os.cpu_count() or 1, len(folders) // 4)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [_read_or_reason(p) for p in folders]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_read_or_reason, folders, chunksize=2))


def read_releases(
    paths: Sequence[str | Path], sort: Sort = "given"
) -> tuple[list[Release], list[tuple[str, str]]]:
    releases: list[Release] = []
    not_reports: list[tuple[str, str]] = []
    folders = [Path(p) for p in paths]
    for path in folders:
        if not path.is_dir():
            raise ReportgenError(
                f"{path}: {'not a folder' if path.exists() else 'no such folder'}; pass report "
                "folders written by `reportgen run`"
            )
    for path, got in zip(folders, _read_all(folders), strict=True):
        if isinstance(got, Release):
            releases.append(got)
        else:
            not_reports.append((str(path), got))
    if not releases:
        shown = f" ({not_reports[0][1]})" if not_reports else ""
        raise ReportgenError(f"no report folder among the {len(paths)} given{shown}")
    if sort == "name":
        releases.sort(key=lambda r: _natural(r.path.resolve().name))
    elif sort == "release":
        releases.sort(key=lambda r: _natural(r.label))
    seen: dict[str, int] = {}
    for r in releases:
        seen[r.label] = seen.get(r.label, 0) + 1
    if any(n > 1 for n in seen.values()):
        for r in releases:
            if seen[r.label] > 1:
                r.label = f"{r.label} ({r.path})"
    return releases, not_reports


# --------------------------------------------------------------------------- numbers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def headline_list(
    releases: Sequence[Release], fallback: Sequence[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """The metrics to trend: accuracy, then every headline the runs declared (in first-seen
    order), then, for releases that did not record theirs, the installed analyses' ones."""
    out: dict[str, tuple[str, str, str]] = {"accuracy": ("accuracy", "top-1 accuracy", "percent")}
    recorded = [r for r in releases if isinstance(r.summary.get("headlines"), list)]
    for r in recorded:
        for h in r.summary["headlines"]:
            if isinstance(h, dict) and isinstance(h.get("key"), str):
                key = h["key"]
                out.setdefault(key, (key, str(h.get("label", key)), str(h.get("kind", "number"))))
    if len(recorded) < len(releases):
        for key, label, kind in fallback:
            out.setdefault(key, (key, label, kind))
    return [
        h for h in out.values() if any(_number(r.metrics.get(h[0])) is not None for r in releases)
    ]


def _segments(releases: Sequence[Release]) -> list[int]:
    starts = [0]
    for i in range(1, len(releases)):
        if releases[i].manifest != releases[i - 1].manifest:
            starts.append(i)
    return starts


def _matrix(per: Sequence[Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """Row names in first-seen order and the releases × names matrix (NaN where missing)."""
    order = list(dict.fromkeys(name for got in per for name in got))
    matrix = np.full((len(per), len(order)), np.nan)
    for i, got in enumerate(per):
        for j, name in enumerate(order):
            matrix[i, j] = got.get(name, np.nan)
    return order, matrix


def _recall(releases: Sequence[Release]) -> tuple[list[str], np.ndarray]:
    """Per release and class name, the share of the class's labelled images predicted right
    (multi-label: per label, the share of the images with it that are predicted to have it)."""
    per: list[dict[str, float]] = []
    for r in releases:
        got: dict[str, float] = {}
        if r.folder is not None and r.folder.predictions.label_sets is not None:
            ps = r.folder.predictions
            assert ps.predicted_sets is not None and ps.label_sets is not None
            truth = ps.label_sets[ps.scored] > 0
            hits = (truth & ps.predicted_sets[ps.scored]).sum(axis=0)
            for j in np.nonzero(truth.sum(axis=0))[0]:
                got[ps.class_name(int(j))] = float(hits[j] / truth[:, j].sum())
        elif r.folder is not None:
            ps = r.folder.predictions
            scored = ps.scored
            labels = ps.labels[scored]
            correct = ps.correct[scored]
            if labels.size:
                counts = np.bincount(labels)
                hits = np.bincount(labels, weights=correct.astype(np.float64))
                for c in np.nonzero(counts)[0]:
                    name = ps.class_name(int(c))
                    got[name] = float(hits[c] / counts[c])
        per.append(got)
    return _matrix(per)


def _slices(releases: Sequence[Release]) -> tuple[list[str], np.ndarray]:
    """Per release and subgroup (``column = value``), the accuracy its slices section reported."""
    per: list[dict[str, float]] = []
    for r in releases:
        got: dict[str, float] = {}
        record = r.summary.get("slices")
        for s in (record or {}).get("declared") or [] if isinstance(record, dict) else []:
            if isinstance(s, dict) and _number(s.get("accuracy")) is not None:
                key = f"{s.get('column')} = {s.get('value') or '(empty)'}"
                got[key] = float(s["accuracy"])
        per.append(got)
    return _matrix(per)


def _worst_drop(recall: np.ndarray, segments: Sequence[int]) -> np.ndarray:
    drops = np.zeros(recall.shape[1])
    starts = set(segments)
    for i in range(1, recall.shape[0]):
        if i in starts:
            continue  # other data: not a drop
        d = recall[i - 1] - recall[i]
        drops = np.fmax(drops, np.where(np.isnan(d), 0.0, d))
    return drops


def _step(old: Release, new: Release, i: int, seed: int) -> Step:
    changed = old.manifest != new.manifest
    if old.folder is None or new.folder is None:
        which = old if old.folder is None else new
        return Step(i - 1, i, {}, f"{which.label} has no usable {FILE_NAME}", changed)
    notes: list[str] = []
    try:
        old_ps, new_ps, matching, _ = align_folders(old.folder, new.folder, notes)
    except ReportgenError as exc:
        return Step(i - 1, i, {}, str(exc), changed)
    result = build_compare(
        old_ps, new_ps, seed=seed, bootstrap_samples=1, notes=notes, matching=matching
    )
    summary = compare_summary(result)
    return Step(i - 1, i, {k: summary.get(k) for k in STEP_KEYS}, None, changed, notes)


def _verdict(summary: Mapping[str, Any], method: str) -> str | None:
    checks = summary.get("attribution_checks")
    if not isinstance(checks, dict):
        return None
    m = (checks.get("methods") or {}).get(method)
    if not isinstance(m, dict):
        return None
    rnd = checks.get("random") or {}
    problems = []
    if m.get("passes_randomization") is False:
        problems.append("fails randomisation")
    d, i = _number(m.get("deletion_auc")), _number(m.get("insertion_auc"))
    rd, ri = _number(rnd.get("deletion_auc")), _number(rnd.get("insertion_auc"))
    if None not in (d, i, rd, ri) and not (d < rd and i > ri):  # type: ignore[operator]
        problems.append("not better than random")
    if m.get("passes_randomization") is None and d is None:
        return "not run"
    return "; ".join(problems) if problems else "ok"


def build_history(
    paths: Sequence[str | Path],
    *,
    sort: Sort = "given",
    fallback_headlines: Sequence[tuple[str, str, str]] = (),
    seed: int = 0,
) -> History:
    # Every release's rows stay alive (millions of small objects, no cycles): the cyclic
    # collector would otherwise scan them all again and again (benchmarks/bench_history.py).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _build(paths, sort, fallback_headlines, seed)
    finally:
        if collecting:
            gc.enable()


def _build(
    paths: Sequence[str | Path],
    sort: Sort,
    fallback_headlines: Sequence[tuple[str, str, str]],
    seed: int,
) -> History:
    releases, not_reports = read_releases(paths, sort)
    headlines = headline_list(releases, fallback_headlines)
    trends = {k: [_number(r.metrics.get(k)) for r in releases] for k, _, _ in headlines}
    ci: list[tuple[float, float] | None] = []
    for r in releases:
        if r.folder is None or not r.folder.predictions.labelled:
            ci.append(None)
            continue
        ps = r.folder.predictions
        ok = ps.correct[ps.scored]
        ci.append(wilson(int(ok.sum()), int(ok.size)))
    segments = _segments(releases)
    names, recall = _recall(releases)
    steps = [_step(releases[i - 1], releases[i], i, seed) for i in range(1, len(releases))]
    methods: dict[str, None] = {}
    for r in releases:
        checks = r.summary.get("attribution_checks")
        if isinstance(checks, dict) and isinstance(checks.get("methods"), dict):
            methods.update(dict.fromkeys(checks["methods"]))
    verdicts = {m: [_verdict(r.summary, m) for r in releases] for m in methods}
    slice_names, slice_accuracy = _slices(releases)
    return History(
        releases=releases,
        not_reports=not_reports,
        headlines=headlines,
        trends=trends,
        accuracy_ci=ci,
        class_names=names,
        recall=recall,
        worst_drop=_worst_drop(recall, segments),
        steps=steps,
        slice_names=slice_names,
        slice_accuracy=slice_accuracy,
        slice_worst_drop=_worst_drop(slice_accuracy, segments),
        verdicts=verdicts,
        segments=segments,
        metrics=history_metrics(releases, segments, steps),
    )


def history_metrics(
    releases: Sequence[Release], segments: Sequence[int], steps: Sequence[Step]
) -> dict[str, float | None]:
    """``history.<metric>_drop_from_best`` (the highest value on the last release's data minus
    the last value), ``history.<metric>_delta_last`` (last minus previous, None when the data
    changed at the last release), ``history.negative_flip_rate_last`` and friends."""
    out: dict[str, float | None] = {}
    start = segments[-1]
    keys: dict[str, None] = {}
    for r in releases:
        keys.update(dict.fromkeys(k for k, v in r.metrics.items() if _number(v) is not None))
    last, prev = releases[-1], releases[-2] if len(releases) > 1 else None
    same_data = prev is not None and prev.manifest == last.manifest
    for k in keys:
        values = [_number(r.metrics.get(k)) for r in releases[start:]]
        known = [v for v in values if v is not None]
        now = _number(last.metrics.get(k))
        out[f"{HISTORY_PREFIX}{k}_drop_from_best"] = (
            max(known) - now if known and now is not None else None
        )
        before = _number(prev.metrics.get(k)) if prev is not None and same_data else None
        out[f"{HISTORY_PREFIX}{k}_delta_last"] = (
            now - before if now is not None and before is not None else None
        )
    step = steps[-1] if steps else None
    for key in ("negative_flip_rate", "positive_flip_rate", "negative_flips", "mcnemar_p"):
        value = _number(step.numbers.get(key)) if step is not None else None
        out[f"{HISTORY_PREFIX}{key}_last"] = value
    return out


def history_metric_names(history: History) -> list[str]:
    return list(history.metrics)
