"""``reportgen compare OLD_DIR NEW_DIR``: compare two archived report folders without a model.

Each folder is what ``reportgen run`` wrote: ``summary.json``, ``predictions.csv`` and, when the
run had ``output.save_arrays: true``, ``arrays.npz``. Images are matched by path *and* SHA-256
(an image that was renamed or whose bytes changed is not matched, and is counted); classes are
matched by name when the two class lists differ; the truth is the new folder's labels. Which
parts can be compared follows from what both folders hold (features and explanation maps need
both ``arrays.npz``), and every part left out is recorded with the reason. Then
:func:`reportgen.compare.metrics.build_compare` does the same work as a baseline inside a run.

Every problem with the inputs is one :class:`ReportgenError` naming the folder or file and what
to do; nothing is loaded with pickle. Matching two folders and comparing them:
:mod:`reportgen.compare.matching`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
_ARRAY_KEYS = (
    "dataset_ids",
    "features",
    "image_ids",
    "slices_clusters",
    FILTERS_KEY,
    *MAP_KEYS.values(),
)


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


def folder_error(where: Path | str, message: str) -> ReportgenError:
    return ReportgenError(f"{where}: {message}")


def _read_summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY
    if not path.is_file():
        raise folder_error(
            folder,
            f"not a report folder (no {SUMMARY}); pass a folder written by `reportgen run`",
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise folder_error(
            path, "not UTF-8 text; is it a summary.json written by reportgen?"
        ) from None
    except json.JSONDecodeError as exc:
        raise folder_error(
            path, f"not valid JSON (line {exc.lineno}: {exc.msg}); the file is damaged"
        ) from None
    except OSError as exc:
        raise folder_error(path, f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("reportgen_version"), str):
        raise folder_error(
            path,
            "not written by reportgen (no reportgen_version); pass a folder written by "
            "`reportgen run`",
        )
    data = summary.get("data")
    if not isinstance(data, dict):
        if "compare" in summary:
            raise folder_error(
                folder,
                "holds the output of `reportgen compare`, not of `reportgen run`; pass the two "
                "report folders that were compared",
            )
        raise folder_error(path, "has no data object; pass a folder written by `reportgen run`")
    for key, kind in (("manifest_sha256", str), ("class_names", list), ("num_images", int)):
        if not isinstance(data.get(key), kind):
            raise folder_error(
                path,
                f"data.{key} is missing or not a {kind.__name__}; the file is damaged or from "
                "another tool",
            )
    if not all(isinstance(c, str) for c in data["class_names"]):
        raise folder_error(path, "data.class_names must be a list of strings")
    # What compare reads besides data: the shape of each, checked here once (not a traceback
    # deep inside the comparison).
    for key in ("model", "metrics", "run", "provenance"):
        if key in summary and not isinstance(summary[key], dict):
            raise folder_error(
                path,
                f"{key} is a {type(summary[key]).__name__}, not an object; the file is damaged "
                "or from another tool",
            )
    model = summary.get("model", {})
    for key in ("arch", "sha256"):
        if key in model and model[key] is not None and not isinstance(model[key], str):
            raise folder_error(path, f"model.{key} is not a string; the file is damaged")
    metrics = summary.get("metrics", {})
    bad = [k for k, v in metrics.items() if not (v is None or isinstance(v, int | float | str))]
    if bad:
        raise folder_error(
            path, f"metrics.{bad[0]} is not a number, text or null; the file is damaged"
        )
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
                raise folder_error(
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
        raise folder_error(
            path,
            f"unreadable ({exc}); delete it to compare predictions only, or re-run "
            "`reportgen run` with output.save_arrays: true",
        ) from None
    ids = out.get("dataset_ids")
    if ids is None:
        raise folder_error(path, "has no dataset_ids; it was not written by `reportgen run`")
    if [csv_path(str(i)) for i in ids.tolist()] != ps.paths:
        raise folder_error(
            path,
            f"its dataset_ids are not the images of the {FILE_NAME} beside it (files from "
            "different runs); re-run `reportgen run` or delete arrays.npz",
        )
    feats = out.get("features")
    if feats is not None and (feats.ndim != 2 or feats.shape[0] != len(ps)):
        raise folder_error(
            path, f"features have shape {feats.shape}, expected {len(ps)} rows (one per image)"
        )
    if feats is not None and feats.size and not bool(np.isfinite(feats).any()):
        raise folder_error(
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
        raise folder_error(folder, "no such folder; pass a folder written by `reportgen run`")
    if not folder.is_dir():
        raise folder_error(folder, "not a folder; pass a folder written by `reportgen run`")
    summary = _read_summary(folder)
    csv_file = folder / FILE_NAME
    if not csv_file.is_file():
        raise folder_error(
            folder,
            f"has no {FILE_NAME} (written by `reportgen run` since predictions.csv was added); "
            "re-run `reportgen run` for this model to write one",
        )
    recorded = (summary.get("output") or {}).get("predictions_sha256")
    if isinstance(recorded, str):
        try:
            actual = hashlib.sha256(csv_file.read_bytes()).hexdigest()
        except OSError as exc:
            raise folder_error(csv_file, f"cannot be read ({exc.strerror or exc})") from None
        if actual != recorded:
            raise folder_error(
                folder,
                f"its {FILE_NAME} is not the one {SUMMARY} was written with: the folder mixes "
                "two runs (a write was interrupted) or a file was edited; re-run `reportgen run`",
            )
    ps = read_predictions(csv_file)
    expected = summary["data"]["num_images"]
    if len(ps) != expected:
        raise folder_error(
            csv_file,
            f"has {len(ps)} rows but {SUMMARY} says {expected} images were read: the files "
            "come from different runs; re-run `reportgen run`",
        )
    vocab = _class_vocabulary(folder, summary["data"]["class_names"], ps)
    ps = dataclasses.replace(ps, class_names=vocab)
    return ReportFolder(folder, summary, ps, _read_arrays(folder, ps) if arrays else None)


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
