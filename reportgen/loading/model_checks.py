"""Checks on a loaded model before any work: what it returns, its weights, its mode.

A model that returns the wrong thing does not crash the report, it makes every number wrong: a
feature map taken for logits, the features of a ``(features, logits)`` pair taken for logits, NaN
weights reported as "accuracy 10 %", a BatchNorm left in training mode that makes predictions
depend on the batch. These checks find such models with one tiny forward pass (a batch of two,
no gradients, buffers restored afterwards) and by looking at the parameters:

* :func:`check_model_output` raises :class:`~reportgen.errors.CheckpointError` when no N×classes
  logits can be found, and returns warnings (which tuple element is taken and why, non-finite
  outputs, outputs that depend on the rest of the batch);
* :func:`nonfinite_parameters` lists parameters and buffers holding NaN or Inf;
* :func:`train_mode_modules` lists BatchNorm and Dropout modules that do not behave as in
  inference.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from reportgen.errors import CheckpointError
from reportgen.loading.models import extract_logits

_NORM_NAMES = ("BatchNorm", "SyncBatchNorm", "InstanceNorm")
_DROPOUT_NAMES = ("Dropout", "AlphaDropout", "FeatureAlphaDropout")


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def describe_output(output: Any) -> str:
    """A short description of what a model returned, e.g. ``tuple(2×512, 2×10)``."""
    if isinstance(output, torch.Tensor):
        return f"a {_shape(output)} tensor"
    if isinstance(output, (tuple, list)):
        inner = ", ".join(
            _shape(o) if isinstance(o, torch.Tensor) else type(o).__name__ for o in output
        )
        return f"a {type(output).__name__} ({inner})"
    if isinstance(output, dict):
        inner = ", ".join(
            f"{k}: {_shape(v) if isinstance(v, torch.Tensor) else type(v).__name__}"
            for k, v in output.items()
        )
        return f"a dict ({inner})"
    return f"a {type(output).__name__}"


def _elements(output: Any) -> list[tuple[Hashable, Any]]:
    """(index or key, value) of a tuple/list/dict output's top level; [] for anything else."""
    if isinstance(output, (tuple, list)):
        return list(enumerate(output))
    if isinstance(output, dict):
        return list(output.items())
    return []


def _taken_key(output: Any) -> Hashable | None:
    """The top-level element :func:`extract_logits` takes (None for a tensor or an object)."""
    if isinstance(output, (tuple, list)) and output:
        return 0
    if isinstance(output, dict) and output:
        return "logits" if "logits" in output else next(iter(output))
    return None


def _element_name(key: Hashable) -> str:
    return f"element {key}" if isinstance(key, int) else f"key {key!r}"


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _forward(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` without gradients, leaving every buffer (BatchNorm statistics) as it was."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _select(model: nn.Module, key: Hashable) -> None:
    """Make ``model(x)`` return ``output[key]`` (a forward hook on the model itself)."""

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        return output[key]

    try:
        model.register_forward_hook(hook)
    except Exception as exc:  # TorchScript modules refuse Python hooks
        raise CheckpointError(
            f"the model returns its logits as {_element_name(key)} of its output, and this kind "
            f"of model cannot be adapted ({type(exc).__name__}); make forward return the logits"
        ) from None


def check_model_output(
    model: nn.Module, in_channels: int, size: int | tuple[int, int], num_classes: int
) -> list[str]:
    """Run the model on a tiny batch and check that it returns N×``num_classes`` logits.

    ``size``: the preprocessed input side (``preprocess.crop``, or height × width). Raises
    CheckpointError, with what to do, when the model cannot run on that input, returns a feature
    map (N×C×H×W) or anything but one row per image, or a row width other than ``num_classes``.
    For a tuple/list/dict output, the element taken as the logits is named in a warning with the
    reason; when that element does not fit but exactly one other element is N×``num_classes``
    (a model returning ``(features, logits)``), that element is taken instead: a forward hook
    on ``model`` makes it return that element, so every later forward pass sees the logits.
    Also warns when the logits are not finite or when one image's logits change with the other
    images in its batch (BatchNorm using batch statistics, active Dropout: see
    :func:`train_mode_modules`). Buffers are restored, so the check changes nothing else.
    """
    h, w = (size, size) if isinstance(size, int) else size
    device = _device(model)
    zeros = torch.zeros(2, in_channels, h, w, device=device)
    mixed = torch.cat([zeros[:1], torch.ones_like(zeros[:1])])
    try:
        output = _forward(model, zeros)
        other = _forward(model, mixed)
    except CheckpointError:
        raise
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"the model cannot run on a batch of {in_channels}×{h}×{w} inputs (a batch of 2 "
            f"images; {type(exc).__name__}: {msg}); set preprocess.resize and "
            "preprocess.crop to the input size it was trained on (and model.in_channels if "
            "it is not read from the first convolution) — or, if it was traced or exported "
            "for one fixed batch size, it cannot take the batches reportgen makes: export it "
            "with a dynamic batch dimension"
        ) from None
    warnings: list[str] = []
    described = describe_output(output)
    taken_key = _taken_key(output)
    logits = extract_logits(output)

    def fits(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.ndim == 2 and tuple(t.shape) == (2, num_classes)

    if taken_key is not None:
        if fits(logits):
            warnings.append(
                f"the model returns {described}; {_element_name(taken_key)} "
                f"({_shape(logits)}) is taken as the logits because it is the first and is "
                f"{num_classes} wide, one score per class"
            )
        else:
            others = [k for k, v in _elements(output) if k != taken_key and fits(v)]
            if len(others) == 1:
                _select(model, others[0])
                warnings.append(
                    f"the model returns {described}; {_element_name(others[0])} is taken as the "
                    f"logits because it is the only one {num_classes} wide, one score per class "
                    f"({_element_name(taken_key)}, {_shape(logits)}, is not)"
                )
                logits = output[others[0]]
                other = other[others[0]]
            elif len(others) > 1:
                names = ", ".join(_element_name(k) for k in others)
                raise CheckpointError(
                    f"the model returns {described}; {_element_name(taken_key)} is not "
                    f"{num_classes} wide and several others are ({names}), so which one holds "
                    "the logits is ambiguous; make forward return the logits"
                )
    if logits.ndim == 4:
        raise CheckpointError(
            f"the model's output is {_shape(logits)} (a feature map: N×C×H×W), not one row of "
            f"{num_classes} class scores per image; end the model with global pooling and a "
            "Linear layer, or flatten its output, so that it returns N×classes logits"
        )
    if logits.ndim != 2 or logits.shape[0] != 2:
        raise CheckpointError(
            f"the model returns {described}, not one row of class scores per image (N×classes); "
            "make forward return the logits"
        )
    if logits.shape[1] != num_classes:
        raise CheckpointError(
            f"the model outputs {logits.shape[1]} scores per image but num_classes is "
            f"{num_classes}; set model.num_classes to {logits.shape[1]} or give weights whose "
            "classifier has that many outputs"
        )
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        warnings.append(
            "the model's logits on an all-zero input are not finite (NaN or Inf): its weights or "
            "its arithmetic are broken, and every number in this report is unreliable"
        )
        return warnings
    other_row = extract_logits(other).float()[0]
    scale = float(logits.abs().max()) + 1e-6
    if not torch.allclose(logits[0], other_row, rtol=1e-4, atol=1e-5 * scale):
        modes = train_mode_modules(model)
        cause = (
            f" ({', '.join(modes[:4])}{' ...' if len(modes) > 4 else ''})"
            if modes
            else " (a module that uses batch statistics or randomness in inference)"
        )
        warnings.append(
            "one image's logits change with the other images in its batch"
            f"{cause}: predictions depend on batching and are not reproducible; put the model in "
            "inference mode (model.eval()) before saving it, or save a state dict"
        )
    return warnings


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Parameters and buffers holding NaN or Inf, e.g. ``fc.weight (3 NaN, 1 Inf of 5130)``."""
    found = []
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, t in named:
        if not t.is_floating_point() and not t.is_complex():
            continue
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        if nan or inf:
            found.append(f"{name} ({nan} NaN, {inf} Inf of {t.numel()})")
    return found


def _kind(module: nn.Module) -> str:
    # Scripted submodules are RecursiveScriptModules; their original class name is kept.
    return str(getattr(module, "original_name", None) or type(module).__name__)


def train_mode_modules(model: nn.Module) -> list[str]:
    """BatchNorm and Dropout modules that do not behave as in inference.

    Lists, as ``name (Kind in train mode)``, normalisation and dropout modules whose ``training``
    flag is set (after ``model.eval()`` only a module that overrides ``train``/``eval`` or sets
    the flag in ``forward`` stays so), and, as ``name (Kind without running statistics)``,
    BatchNorm modules that always normalise with the batch's statistics
    (``track_running_stats=False``). Either makes a prediction depend on the other images in its
    batch.
    """
    found = []
    for name, m in model.named_modules():
        kind = _kind(m)
        label = name or "(the model)"
        is_norm = kind.startswith(_NORM_NAMES)
        is_dropout = kind.startswith(_DROPOUT_NAMES) or isinstance(m, nn.modules.dropout._DropoutNd)
        if not (is_norm or is_dropout):
            continue
        if is_dropout and m.training and float(getattr(m, "p", 1.0)) > 0:
            found.append(f"{label} ({kind} in train mode)")
        elif is_norm and kind.startswith(("BatchNorm", "SyncBatchNorm")):
            if getattr(m, "running_mean", 0) is None:
                found.append(f"{label} ({kind} without running statistics)")
            elif m.training:
                found.append(f"{label} ({kind} in train mode)")
        elif is_norm and m.training and getattr(m, "track_running_stats", False):
            found.append(f"{label} ({kind} in train mode)")
    return found
