"""Class names and preprocessing from the model's own metadata, where the config is silent.

A timm or Hugging Face checkpoint carries its class names (``label_names``, ``id2label``) and its
preprocessing (``pretrained_cfg``, ``preprocessor_config.json``); a torchvision architecture
with 1000 outputs predicts ImageNet classes. What the user set explicitly always wins; every
value records where it came from, for the run summary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.config import Config
from reportgen.heads import MULTICLASS, Head
from reportgen.loading.metadata import imagenet_class_names
from reportgen.loading.sources import source_kind
from reportgen.loading.types import LoadedModel

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
SOURCE_LABELS = "the data source's labels"
"""Class names taken from a manifest's, dataset's or shards' labels (see ``DataFolder.label_note``)."""
IMAGENET = "imagenet"


@dataclass
class Resolved:
    """The configuration with metadata applied, and where each value came from."""

    config: Config
    class_names_source: str
    preprocess_sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _class_folders(root: str | None) -> list[str]:
    if not root:
        return []
    try:
        return sorted(
            p.name
            for p in Path(root).expanduser().iterdir()
            if p.is_dir() and not p.name.startswith(".")
        )
    except OSError:
        return []


def _folders_match(folders: list[str], names: list[str]) -> bool:
    """Every class folder names one of the model's classes (by name or by index)."""
    known = set(names)
    return all(f in known or (f.isdigit() and int(f) < len(names)) for f in folders)


def _metadata_names(model: LoadedModel, head: Head) -> list[str] | None:
    """The model's own class names for its task: a binary model's metadata names its one
    output, the positive class (``{0: "defect"}``), so the two classes are ``not defect`` and
    ``defect``."""
    names = model.metadata.class_names
    if names and head.task == "binary" and len(names) == 1:
        return [f"not {names[0]}", names[0]]
    return list(names) if names else None


def apply_metadata(cfg: Config, model: LoadedModel, head: Head = MULTICLASS) -> Resolved:
    meta = model.metadata
    explicit = cfg.explicit
    warnings: list[str] = []

    # Preprocessing: the metadata's values where the config does not set the key.
    changes: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given = meta.preprocess_values()
    given_sources = meta.preprocess_sources()
    for key in ("resize", "crop", "mean", "std", "interpolation"):
        if f"preprocess.{key}" in explicit:
            sources[key] = "config"
            continue
        if key in given:
            value = given[key]
            if key == "interpolation" and value not in INTERPOLATIONS:
                warnings.append(
                    f"the model's metadata asks for {value!r} resizing, which reportgen does not "
                    "offer; bilinear is used (set preprocess.interpolation to choose)"
                )
                sources[key] = "reportgen default"
                continue
            changes[key] = list(value) if isinstance(value, tuple) else value
            sources[key] = given_sources.get(key, "model metadata")
        else:
            sources[key] = "reportgen default"
    warnings.extend(meta.notes)

    # Class names.
    meta_names = _metadata_names(model, head)
    labels = cfg.data.labels
    if labels == IMAGENET:
        labels = imagenet_class_names()
        names_source = "torchvision's ImageNet categories (data.labels: imagenet)"
    elif labels is not None:
        names_source = "data.labels"
    elif meta_names and source_kind(cfg.data) != "folder":
        # A manifest, shards or a dataset: its label names (or indices) must be the model's.
        labels = meta_names
        names_source = meta.class_names_source or "model metadata"
    elif meta_names:
        folders = _class_folders(cfg.data.root)
        if _folders_match(folders, meta_names):
            labels = meta_names
            names_source = meta.class_names_source or "model metadata"
        else:
            shown = ", ".join(folders[:4]) + (" ..." if len(folders) > 4 else "")
            warnings.append(
                f"the class folders ({shown}) are not the model's class names "
                f"({meta.class_names_source}); folders are numbered in sorted order — set "
                "data.labels to map them to the model's outputs"
            )
            names_source = "class folder names (the model's own names do not match them)"
    elif source_kind(cfg.data) != "folder":
        names_source = SOURCE_LABELS
    else:
        names_source = "class folder names" if _class_folders(cfg.data.root) else "class indices"

    config = dataclasses.replace(
        cfg,
        preprocess=dataclasses.replace(cfg.preprocess, **changes),
        data=dataclasses.replace(cfg.data, labels=labels),
    )
    return Resolved(config, names_source, sources, warnings)
