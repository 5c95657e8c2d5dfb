"""summary.json: the stable, machine-readable record of one run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from reportgen.config import Config
from reportgen.contract import PassResult
from reportgen.loading.folders import DataFolder, manifest_sha256
from reportgen.loading.types import LoadedModel
from reportgen.methods.scores import BinaryScores, MultilabelScores
from reportgen.pipeline.environment import device_description, library_versions
from reportgen.pipeline.metadata import Resolved
from reportgen.pipeline.task import TaskChoice
from reportgen.report.render import Headline, clean_floats
from reportgen.report.section import Section
from reportgen.version import __version__


def display_root(root: Path, out_dir: Path) -> str:
    """A path as recorded: relative to the output folder when inside it (the demo)."""
    try:
        return root.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return str(root)


def _relative_paths(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Input paths inside the output folder (the demo's) recorded relative to it, so that the
    report does not change with the output folder's name."""
    for section, key in (
        ("model", "weights"),
        ("model", "checkpoint"),
        ("baseline", "weights"),
        ("baseline", "checkpoint"),
        ("data", "root"),
        ("data", "labels"),
    ):
        value = config.get(section, {}).get(key)
        if isinstance(value, str):
            config[section][key] = display_root(Path(value), out_dir)
    return config


TASK_METRICS = {
    "binary": ("auroc", "average_precision", "f1", "sensitivity", "specificity"),
    "multilabel": ("macro_auroc", "micro_f1", "exact_match", "hamming_loss", "worst_label_auroc"),
}
"""Metrics every run of a task reports (None where not computable), gate-able by name."""
TASK_HEADLINES = {
    "binary": (
        Headline("auroc", "AUROC", "number"),
        Headline("average_precision", "average precision", "number"),
        Headline("sensitivity", "sensitivity at the threshold", "percent"),
        Headline("specificity", "specificity at the threshold", "percent"),
    ),
    "multilabel": (
        Headline("macro_auroc", "macro AUROC", "number"),
        Headline("micro_f1", "micro F1", "number"),
        Headline("exact_match", "exact-match ratio", "percent"),
        Headline("hamming_loss", "Hamming loss", "number"),
    ),
}
"""The task's metrics shown first in the run summary and summary.md (and trended by history)."""


def accuracy_metrics(pass_result: PassResult) -> dict[str, Any]:
    """Top-1 accuracy over the labelled images the model can predict, and their number (a
    multi-label model has no single accuracy: see its exact-match ratio)."""
    labels = pass_result.labels
    known = pass_result.scored()
    if not pass_result.head.single_label:
        return {"accuracy": None, "num_labelled": int(known.sum())}
    accuracy = (
        float((pass_result.predictions.cpu()[known] == labels[known]).float().mean())
        if bool(known.any())
        else None
    )
    return {"accuracy": accuracy, "num_labelled": int(known.sum())}


def task_metrics(pass_result: PassResult) -> dict[str, Any]:
    """The task's own metrics (binary: AUROC, AP, F1, sensitivity, specificity at the threshold;
    multi-label: macro AUROC, micro F1, exact match, Hamming loss, worst label AUROC)."""
    keys = TASK_METRICS.get(pass_result.head.task, ())
    scores = pass_result.task_scores()
    values = scores.metrics() if scores is not None else {}
    return {key: values.get(key) for key in keys}


def task_record(pass_result: PassResult, names: list[str]) -> dict[str, Any] | None:
    """summary.json's ``scores``: the threshold table (binary) or the per-label table
    (multi-label), for readers and ``reportgen history``."""
    scores = pass_result.task_scores()
    if isinstance(scores, BinaryScores):
        return {
            "images": scores.n,
            "positives": scores.positives,
            "threshold": scores.threshold,
            "thresholds": [
                {
                    "threshold": t,
                    "tp": c.tp,
                    "fp": c.fp,
                    "tn": c.tn,
                    "fn": c.fn,
                    "precision": c.precision,
                    "sensitivity": c.sensitivity,
                    "specificity": c.specificity,
                    "f1": c.f1,
                }
                for t, c in scores.table
            ],
        }
    if isinstance(scores, MultilabelScores):
        return {
            "images": scores.n,
            "macro_auroc_labels": scores.macro_auroc_labels,
            "macro_average_precision": scores.macro_average_precision,
            "macro_f1": scores.macro_f1,
            "labels": [
                {
                    "label": names[s.index] if s.index < len(names) else str(s.index),
                    "support": s.support,
                    "predicted": s.predicted,
                    "auroc": s.auroc,
                    "average_precision": s.average_precision,
                    "f1": s.counts.f1,
                    "sensitivity": s.counts.sensitivity,
                    "specificity": s.counts.specificity,
                }
                for s in scores.labels
            ],
        }
    return None


def build_summary(
    cfg: Config,
    model: LoadedModel,
    folder: DataFolder,
    pass_result: PassResult,
    sections: list[Section],
    metrics: Mapping[str, Any],
    declared_metrics: Iterable[str],
    device: torch.device,
    out_dir: Path,
    queries: list[int],
    world_size: int = 1,
    resolved: Resolved | None = None,
    warnings: list[str] | None = None,
    task: TaskChoice | None = None,
) -> dict[str, Any]:
    """The summary: ``metrics`` holds accuracy, the task's metrics and every declared metric
    (None when not computed)."""
    head = pass_result.head
    all_metrics: dict[str, Any] = {"accuracy": None}
    all_metrics.update(dict.fromkeys(declared_metrics))
    all_metrics.update(accuracy_metrics(pass_result))
    all_metrics.update(task_metrics(pass_result))
    all_metrics.update(metrics)
    manifest = manifest_sha256(pass_result.manifest)
    config = cfg.to_dict(for_provenance=True)
    preprocessing: dict[str, Any] = {}
    if resolved is not None:
        # The preprocessing actually used (the model's metadata fills what the config leaves).
        config["preprocess"] = resolved.config.to_dict(for_provenance=True)["preprocess"]
        preprocessing = {
            key: {"value": config["preprocess"][key], "source": source}
            for key, source in resolved.preprocess_sources.items()
        }
    summary = {
        "reportgen_version": __version__,
        "model": {
            "arch": model.arch,
            "sha256": model.sha256,
            "checkpoint_file": model.source,
            "checkpoint_kind": model.kind,
            "num_classes": pass_result.num_classes,
            "num_outputs": model.num_classes,
            "task": head.task,
            "task_source": task.source if task is not None else "model.task",
            "threshold": None if head.task == "multiclass" else head.threshold,
            "in_channels": model.in_channels,
            "feature_layer": pass_result.feature_layer,
            "feature_dim": None
            if pass_result.features is None
            else int(pass_result.features.shape[1]),
        },
        "data": {
            "root": display_root(folder.root, out_dir),
            "source": folder.source,
            "source_file": folder.source_file,
            "labels_read_as": folder.label_note,
            "metadata_columns": folder.metadata_columns,
            "labelled": folder.labelled,
            "num_images": len(pass_result),
            "num_classes": _classes_present(pass_result) if folder.labelled else None,
            "class_names": folder.class_names,
            "class_names_source": resolved.class_names_source if resolved else None,
            "num_skipped": len(pass_result.skipped),
            "num_nonfinite_outputs": int((~pass_result.finite).sum()),
            "skipped": [{"path": p, "reason": r} for p, r in pass_result.skipped],
            "ignored": [{"path": p, "reason": r} for p, r in folder.ignored],
            "manifest_sha256": manifest,
            "queries": [folder.items[pass_result.item_index[q]].relpath for q in queries],
        },
        "metrics": all_metrics,
        "warnings": list(warnings or []),
        "preprocessing": preprocessing,
        "sections": [
            {"name": s.name, "title": s.title, "status": s.status, "reason": s.reason}
            for s in sections
        ],
        "run": {
            "device": device_description(device),
            "world_size": world_size,
            "seed": cfg.run.seed,
            "precision": cfg.run.precision,
            "release": cfg.run.release,
        },
        "provenance": {
            "config": _relative_paths(config, out_dir),
            "seed": cfg.run.seed,
            "device": device_description(device),
            "versions": library_versions(),
            "checkpoint_sha256": model.sha256,
            "manifest_sha256": manifest,
        },
    }
    scores = task_record(pass_result, folder.class_names)
    if scores is not None:
        summary["scores"] = scores
    return clean_floats(summary)


def _classes_present(pass_result: PassResult) -> int:
    """Classes with at least one labelled image (labels present, for a multi-label model)."""
    if pass_result.label_sets is not None:
        return int((pass_result.label_sets > 0).any(dim=0).sum())
    labels = pass_result.labels
    return len(set(labels[labels >= 0].tolist()))
