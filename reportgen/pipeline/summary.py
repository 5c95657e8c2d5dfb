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
from reportgen.pipeline.environment import device_description, library_versions
from reportgen.pipeline.metadata import Resolved
from reportgen.report.render import clean_floats
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


def accuracy_metrics(pass_result: PassResult) -> dict[str, Any]:
    """Top-1 accuracy over the labelled images the model can predict, and their number."""
    labels = pass_result.labels
    known = pass_result.scored()
    accuracy = (
        float((pass_result.predictions.cpu()[known] == labels[known]).float().mean())
        if bool(known.any())
        else None
    )
    return {"accuracy": accuracy, "num_labelled": int(known.sum())}


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
) -> dict[str, Any]:
    """The summary: ``metrics`` holds accuracy and every declared metric (None when not computed)."""
    labels = pass_result.labels
    all_metrics: dict[str, Any] = {"accuracy": None}
    all_metrics.update(dict.fromkeys(declared_metrics))
    all_metrics.update(accuracy_metrics(pass_result))
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
            "num_classes": model.num_classes,
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
            "num_classes": len(set(labels[labels >= 0].tolist())) if folder.labelled else None,
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
    return clean_floats(summary)
