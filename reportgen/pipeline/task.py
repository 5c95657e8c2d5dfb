"""Which task the model solves (multiclass, binary, multi-label): decided once, before any work,
from ``model.task``, the model and the data; every combination that cannot be right is an input
error naming the key and what to do.

``auto`` reads, in this order: one output → ``binary`` (a sigmoid logit); a Hugging Face config
with ``problem_type: multi_label_classification`` → ``multilabel``; a manifest with a label-set
column → ``multilabel``; otherwise ``multiclass``. A two-output softmax model stays multiclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from reportgen.config import Config
from reportgen.errors import ConfigError
from reportgen.heads import BINARY_CLASS_NAMES, Head, Task
from reportgen.loading.folders import DataFolder
from reportgen.loading.types import LoadedModel

HF_MULTI_LABEL = "multi_label_classification"


@dataclass(frozen=True)
class TaskChoice:
    """The head and where its task came from (for the run summary and summary.json)."""

    head: Head
    source: str
    notes: tuple[str, ...] = ()
    """What the reader should know (a threshold set for a model that does not use one)."""

    def record(self) -> dict[str, object]:
        return {
            "task": self.head.task,
            "source": self.source,
            "threshold": None if self.head.task == "multiclass" else self.head.threshold,
        }


def _hf_multi_label(model: LoadedModel) -> bool:
    config = model.hub.config if model.hub is not None else {}
    return model.family == "hf" and config.get("problem_type") == HF_MULTI_LABEL


def model_task(cfg: Config, model: LoadedModel) -> TaskChoice:
    """The task as far as the configuration and the model tell (before the data is opened);
    :func:`data_task` may still turn an ``auto`` multiclass into multi-label."""
    spec = cfg.model.task
    k = model.num_classes
    if spec == "auto":
        if k == 1:
            task: Task = "binary"
            source = "auto: the model has one output (a sigmoid logit)"
        elif _hf_multi_label(model):
            task = "multilabel"
            source = f"auto: the model's config.json says problem_type {HF_MULTI_LABEL}"
        else:
            task = "multiclass"
            source = f"auto: {k} outputs (softmax)"
    else:
        task = spec
        source = "model.task"
    if task == "binary" and k != 1:
        raise ConfigError(
            f"model.task: binary needs a model with one output (a sigmoid logit), but this "
            f"model has {k}; a two-output softmax model is multiclass (its classes are "
            "negative and positive) — use model.task: multiclass or auto"
        )
    if task == "multiclass" and k == 1:
        raise ConfigError(
            "model.task: multiclass needs at least two outputs, but this model has one (a "
            "sigmoid logit, whose softmax is always 1.0); use model.task: binary or auto"
        )
    notes: tuple[str, ...] = ()
    if "model.threshold" in cfg.explicit and task == "multiclass":
        notes = (
            f"model.threshold ({cfg.model.threshold:g}) is not used: a multiclass model "
            "predicts its most probable class",
        )
    return TaskChoice(Head(task, cfg.model.threshold), source, notes)


def data_task(cfg: Config, choice: TaskChoice, folder: DataFolder) -> TaskChoice:
    """The task checked against the data: label sets need a multi-label task, a multi-label task
    needs label sets from a manifest (or unlabelled images)."""
    task = choice.head.task
    sets_column = cfg.data.columns.labels
    if folder.label_sets and task != "multilabel":
        if cfg.model.task == "auto" and task == "multiclass":
            return TaskChoice(
                dataclasses.replace(choice.head, task="multilabel"),
                f"auto: the manifest's label-set column {sets_column!r}",
            )
        raise ConfigError(
            f"data.manifest: column {sets_column!r} holds label sets (multi-label), but the task "
            f"is {task} ({choice.source}); set model.task: multilabel, or give one class per "
            f"image in a {cfg.data.columns.label!r} column"
        )
    if task == "multilabel" and not folder.label_sets:
        if folder.source != "manifest":
            raise ConfigError(
                "model.task: multilabel needs label sets, which "
                + ("class folders" if folder.class_folders else "this data source")
                + " cannot express; list the images in a manifest (data.manifest / --manifest) "
                f"with a {sets_column!r} column of |-separated label names"
            )
        if folder.labelled:
            raise ConfigError(
                f"data.manifest: the {cfg.data.columns.label!r} column holds one class per image, "
                f"but the task is multilabel ({choice.source}); give the label sets in a "
                f"{sets_column!r} column (|-separated names or a JSON list)"
            )
    return choice


def with_class_names(folder: DataFolder, head: Head) -> DataFolder:
    """A binary task's two classes are named even when nothing else names them."""
    if head.task == "binary" and not folder.class_names:
        return dataclasses.replace(folder, class_names=list(BINARY_CLASS_NAMES))
    return folder


def baseline_head(head: Head, model: LoadedModel, baseline: LoadedModel) -> Head:
    """The head that reads the baseline's outputs: the model's, except across the two ways of
    writing a binary classifier — a two-output softmax baseline of a one-logit model (or the
    reverse) predicts the same two classes through its own head. The pipeline warns when the
    two heads still distinguish different numbers of classes."""
    if head.task == "binary" and baseline.num_classes == 2:
        return Head("multiclass")
    if head.task == "multiclass" and model.num_classes == 2 and baseline.num_classes == 1:
        return Head("binary", head.threshold)
    return head
