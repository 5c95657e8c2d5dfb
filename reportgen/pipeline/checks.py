"""What the pipeline checks before and after the dataset pass, for the model and the baseline
alike: what the model outputs, its weights, its mode, the class names, non-finite outputs."""

from __future__ import annotations

from collections.abc import Callable

from reportgen.config import Config
from reportgen.contract import PassResult
from reportgen.errors import DataError, ReportgenError
from reportgen.heads import MULTICLASS, Head
from reportgen.loading.folders import DataFolder, output_size, read_labels
from reportgen.loading.images import Preprocessor
from reportgen.loading.model_checks import (
    check_model_output,
    nonfinite_parameters,
    train_mode_modules,
)
from reportgen.loading.sources import item_header_size
from reportgen.loading.types import LoadedModel
from reportgen.methods.scores import BinaryScores
from reportgen.methods.vit import TokenLayout, describe_vit


def input_size(folder: DataFolder, pre: Preprocessor) -> tuple[int, int] | None:
    """(height, width) the model gets: the crop, else the first readable image resized."""
    if pre.crop:
        return pre.crop, pre.crop
    hw = next((h for h in (item_header_size(folder, it) for it in folder.items) if h), None)
    return output_size(hw, pre.resize, None) if hw else None


def check_label_count(
    model: LoadedModel, labels: str | list[str] | None, user_labels: object, head: Head = MULTICLASS
) -> None:
    """data.labels names the model's classes in order: one name per output (two for a binary
    model: negative, then positive), or the names cannot be the classes (extra names pass as
    classes nothing predicts, missing ones leave outputs unnamed). Class names from the
    model's own metadata are the model's."""
    if user_labels is None or labels is None:
        return
    names, k = len(read_labels(labels) or []), head.classes(model.num_classes)
    if names != k:
        if head.task == "binary":
            raise DataError(
                f"data.labels has {names} class names but a binary model has two classes; "
                "give two names, the negative class first, then the positive"
            )
        raise DataError(
            f"data.labels has {names} class names but the model has {k} outputs; give one "
            "name per output, in output order"
        )


def check_model(
    warn: Callable[[str], None],
    config: Config,
    model: LoadedModel,
    folder: DataFolder,
    pre: Preprocessor,
    role: str = "model",
    channels: int | None = None,
) -> None:
    """What can be told about a model before the pass: its output is N×classes logits
    (a ``(features, logits)`` model is made to return its logits), its weights are finite,
    it is in eval mode, and it was given weights at all. The same checks for the baseline
    (``role="baseline"``, on the inputs made for the model: ``channels``), its messages
    naming it."""
    prefix = "" if role == "model" else f"{role}: "
    size = input_size(folder, pre)
    if size is not None and model.supports_hooks:
        try:
            found = check_model_output(
                model.module, channels or model.in_channels, size, model.num_classes
            )
        except ReportgenError as exc:
            raise type(exc)(f"{prefix}{exc}") from None
        for message in found:
            warn(prefix + message)
    bad = nonfinite_parameters(model.module)
    if bad:
        warn(
            f"{prefix}the {role}'s weights are not finite (" + "; ".join(bad[:3]) + "): "
            f"every number computed from them is unreliable; check the {role}'s checkpoint"
        )
    for message in train_mode_modules(model.module):
        warn(prefix + message)
    if role != "model":
        return
    if model.kind == "state_dict" and model.source is None:
        warn(
            f"no weights were given: {model.arch} is randomly initialised, so this report "
            "describes an untrained network (pass --weights FILE to report on your model)"
        )
    if config.model.checkpoint and config.model.arch:
        warn(
            f"model.arch ({config.model.arch}) is ignored with a whole-model checkpoint; "
            f"the report records the checkpoint's own class, {model.arch}"
        )


def check_outputs(warn: Callable[[str], None], pass_result: PassResult, folder: DataFolder) -> None:
    """Images whose logits are NaN or infinite: counted, named, left out of every metric."""
    bad = (~pass_result.finite).nonzero().flatten().cpu().tolist()
    if not bad:
        return
    names = ", ".join(folder.items[pass_result.item_index[i]].display for i in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warn(
        f"the model's outputs are not finite (NaN or Inf) on {len(bad)} of "
        f"{len(pass_result)} images ({names}{more}): they have no prediction or confidence, "
        "so accuracy, calibration and the label checks leave them out (summary.json "
        "data.num_nonfinite_outputs)"
    )


def token_layout(model: LoadedModel, pre: Preprocessor) -> TokenLayout | None:
    """A vision transformer's token layout (one probe forward pass), or None for other models."""
    size = pre.crop or pre.resize
    if not model.supports_hooks or size is None:
        return None
    try:
        return describe_vit(model.module, (size, size))
    except (RuntimeError, ValueError, StopIteration):
        return None


def chance_level(pass_result: PassResult, folder: DataFolder) -> str | None:
    """A warning when the labels look like they are not the model's classes: multiclass
    accuracy at chance level, a binary model's AUROC near 0.5 — or far below it, which means
    the two classes are the other way round (class folders are taken in sorted order, and
    "defect" sorts before "ok")."""
    head = pass_result.head
    if not head.single_label:
        return None
    if head.task == "binary":
        scores = pass_result.task_scores()
        if not isinstance(scores, BinaryScores) or scores.auroc is None:
            return None
        if min(scores.positives, scores.n - scores.positives) < 10:
            return None
        names = [folder.class_names[i] if i < len(folder.class_names) else str(i) for i in (0, 1)]
        if scores.auroc < 0.4:
            return (
                f"AUROC {scores.auroc:.2f} is below chance (0.5): the model ranks the "
                f"{names[0]!r} images above the {names[1]!r} ones, so the two classes are "
                "probably the other way round (index 0 must be the negative class, 1 the "
                "positive one the logit scores"
                + ("; class folders are taken in sorted order" if folder.class_folders else "")
                + f"); if so set data.labels: [{names[1]}, {names[0]}]"
            )
        if scores.auroc <= 0.6:
            return (
                f"AUROC {scores.auroc:.2f} is near chance (0.5): check that the labels are the "
                "model's classes (index 0 negative, 1 positive) and that the checkpoint and "
                "preprocessing are the right ones"
            )
        return None
    labels = pass_result.labels
    classes = len(set(labels[(labels >= 0) & (labels < pass_result.num_classes)].tolist()))
    known = pass_result.scored()
    if int(known.sum()) < 20 or classes < 2:
        return None
    accuracy = float((pass_result.predictions.cpu()[known] == labels[known]).float().mean())
    if accuracy > 1.5 / classes:
        return None
    return (
        f"accuracy {100 * accuracy:.1f} % is at chance level for {classes} classes: "
        "check that the class folders are the model's classes in output order "
        "(data.labels) and that the checkpoint and preprocessing are the right ones"
    )
