"""Building the model: torchvision names, a user's factory, timm or Hugging Face models.

``model.arch`` forms: a torchvision name (``resnet50``), ``package.module:factory`` or
``file.py:factory``, ``timm:NAME`` (any ``timm.list_models()`` name), or a folder: a timm hub
folder or a Hugging Face ``save_pretrained`` folder (see :mod:`reportgen.loading.hub`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reportgen.config import ModelConfig
from reportgen.errors import CheckpointError, ConfigError, did_you_mean
from reportgen.loading.checkpoints import (
    CheckpointKind,
    apply_state_dict,
    load_state_dict,
    load_trusted_checkpoint,
    sha256_file,
)
from reportgen.loading.hub import build_hub_architecture, hub_kind, load_hub_model
from reportgen.loading.metadata import model_metadata
from reportgen.loading.types import Family, HubFiles, LoadedModel


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    return found


def first_weight_4d(model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """First 4-D parameter (a conv kernel); works on TorchScript and exported graphs too."""
    for name, p in model.named_parameters():
        if p.ndim == 4:
            return name, p
    return None


def _import_factory(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"model.arch: {spec!r} is neither a torchvision model nor 'module:factory'"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"model.arch: file {path} not found")
            mod_name = f"reportgen_user_{path.stem}"
            spec_obj = importlib.util.spec_from_file_location(mod_name, path)
            assert spec_obj is not None and spec_obj.loader is not None
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[mod_name] = module
            spec_obj.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.arch: cannot import {module_name!r} ({exc})") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"model.arch: {module_name} has no callable {attr!r}{did_you_mean(attr, names)}; name a "
            "function or class in it that returns the nn.Module"
        )
    factory = getattr(module, attr)
    if not callable(factory):
        callables = [
            n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))
        ]
        raise ConfigError(
            f"model.arch: {module_name}:{attr} is not a function or class (it is of type "
            f"{type(factory).__name__}){did_you_mean(attr, callables)}; name a function or class "
            "that returns the nn.Module"
        )
    return factory


def _accepts(factory: Any, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _looks_like_path(arch: str) -> bool:
    return ":" not in arch and ("/" in arch or "\\" in arch or arch.startswith((".", "~")))


def build_architecture(arch: str, num_classes: int | None) -> nn.Module:
    """A fresh model: a torchvision name, ``module:factory`` (``file.py:factory``),
    ``timm:NAME``, or a timm/Hugging Face model folder (built from its config.json)."""
    import torchvision

    kind = hub_kind(arch)
    if kind is not None:
        return build_hub_architecture(arch, kind, num_classes)
    if _looks_like_path(arch):
        raise ConfigError(f"model.arch: model folder {arch} not found")
    if ":" in arch:
        factory = _import_factory(arch)
        factory_kwargs = (
            {"num_classes": num_classes}
            if num_classes is not None and _accepts(factory, "num_classes")
            else {}
        )
        try:
            model = factory(**factory_kwargs)
        except Exception as exc:
            raise ConfigError(
                f"model.arch: {arch}({', '.join(f'{k}={v!r}' for k, v in factory_kwargs.items())}) "
                f"raised {type(exc).__name__}: {' '.join(str(exc).split())}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model.arch: {arch} returned {type(model).__name__}, not an nn.Module"
            )
        return model
    available = torchvision.models.list_models()
    if arch not in available:
        raise ConfigError(
            f"model.arch: unknown torchvision model {arch!r}{did_you_mean(arch, available)}"
        )
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if arch in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    return torchvision.models.get_model(arch, **kwargs)


def infer_num_classes(arch: str, state: dict[str, torch.Tensor]) -> int | None:
    """Read the class count from the weights: the classifier's output size in the file.

    The classifier is found on a probe built on the meta device (no memory, no init cost); its
    weight is looked up in the file under any wrapper prefix (``module.``, ``model.`` ...).
    """
    try:
        with torch.device("meta"):
            probe = build_architecture(arch, None)
    except ConfigError:
        raise
    except Exception:
        # Some user factories cannot run on the meta device; then num_classes comes from the
        # factory's default (or model.num_classes).
        return None
    head = last_linear(probe)
    if head is None:
        convs = conv_layers(probe)
        if not convs:
            return None
        head_name = convs[-1][0]
    else:
        head_name = head[0]
    suffix = f"{head_name}.weight"
    candidates = sorted(
        (k for k in state if k == suffix or k.endswith("." + suffix)), key=lambda k: (len(k), k)
    )
    for key in candidates:
        w = state[key]
        if w.ndim >= 2:
            return int(w.shape[0])
    return None


def _in_channels(model: nn.Module, override: int | None) -> int:
    if override is not None:
        return override
    conv = first_conv(model)
    if conv is not None:
        return int(conv[1].in_channels)
    w = first_weight_4d(model)
    if w is not None:
        return int(w[1].shape[1])
    raise ConfigError("cannot tell the model's input channels (no Conv2d); set model.in_channels")


def _num_classes(model: nn.Module, override: int | None) -> int:
    if override is not None:
        return override
    head = last_linear(model)
    if head is not None:
        return int(head[1].out_features)
    convs = conv_layers(model)
    if convs:
        return int(convs[-1][1].out_channels)
    # TorchScript and exported graphs have no nn.Linear instances, only their parameters: the
    # last 2-D parameter is the classifier's weight (out_features × in_features).
    matrices = [p for _, p in model.named_parameters() if p.ndim == 2]
    if matrices:
        return int(matrices[-1].shape[0])
    return 0


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build and load the model the config describes, on the CPU, in eval mode."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        trusted = load_trusted_checkpoint(path, cfg.trust_checkpoint)
        module = trusted.module
        # The checkpoint is the model: record its own class, whatever model.arch says (the
        # pipeline warns that model.arch is ignored).
        arch = type(module).__name__
        sha: str | None = sha256_file(path)
        source: str | None = path.name
        kind: CheckpointKind = trusted.kind
        num_classes = _num_classes(module, cfg.num_classes)
        in_ch = _in_channels(module, cfg.in_channels)
        family: Family = "checkpoint"
        hub: HubFiles | None = None
    else:
        assert cfg.arch is not None
        arch = cfg.arch
        family = "factory" if ":" in arch else "torchvision"
        hub = None
        hub_classes: int | None = None
        spec = hub_kind(arch)
        if spec is not None:
            weights = Path(cfg.weights) if cfg.weights else None
            loaded_hub = load_hub_model(arch, spec, weights, cfg.num_classes, cfg.in_channels)
            module, arch, family, hub = (
                loaded_hub.module,
                loaded_hub.arch,
                loaded_hub.family,
                loaded_hub.files,
            )
            weights_path = loaded_hub.weights
            sha = sha256_file(weights_path) if weights_path is not None else None
            source = _weights_source(weights_path, spec)
            hub_classes = loaded_hub.num_classes
        elif _looks_like_path(arch):
            raise ConfigError(f"model.arch: model folder {arch} not found")
        elif cfg.weights:
            path = Path(cfg.weights)
            state, _meta = load_state_dict(path)
            n = cfg.num_classes or infer_num_classes(arch, state)
            module = build_architecture(arch, n)
            apply_state_dict(module, state, path)
            sha = sha256_file(path)
            source = path.name
        else:
            module = build_architecture(arch, cfg.num_classes)
            sha, source = None, None
        kind = "state_dict"
        # timm and transformers record the class count; the last nn.Linear may be another head
        # (a distilled DeiT's) or absent (a conv classifier).
        num_classes = cfg.num_classes or hub_classes or _num_classes(module, None)
        in_ch = _in_channels(module, cfg.in_channels)
    # Exported programs are switched to inference when loaded (ExportedModule); eval() is then
    # a no-op on them but keeps every kind on the same path.
    module.eval()
    half = _to_float32(module)
    for p in module.parameters():
        p.requires_grad_(False)
    if in_ch not in (1, 3):
        raise CheckpointError(f"the model takes {in_ch} input channels; reportgen supports 1 or 3")
    loaded = LoadedModel(module, arch, kind, sha, source, num_classes, in_ch, family, hub)
    meta = model_metadata(cfg.arch, loaded)
    if half:
        meta = dataclasses.replace(
            meta,
            notes=(
                *meta.notes,
                f"the checkpoint's weights are {half}; they were converted to float32, the "
                "precision every section computes in (predictions may differ from the "
                "half-precision model's in the last digits)",
            ),
        )
    loaded.metadata = meta
    return loaded


def _to_float32(module: nn.Module) -> str | None:
    """Half-precision weights (a trusted fp16/bf16 whole-model checkpoint) to float32, since
    every input the tool makes is float32; returns what they were, or None. Scripted and
    exported graphs keep their types (their code may cast)."""
    if isinstance(module, torch.jit.ScriptModule) or not isinstance(module, nn.Module):
        return None
    kinds = sorted(
        {str(t.dtype).removeprefix("torch.") for t in module.parameters()} & {"float16", "bfloat16"}
    )
    if not kinds:
        return None
    try:
        module.float()
    except (RuntimeError, TypeError):
        return None
    return " and ".join(kinds)


def _weights_source(path: Path | None, kind: str) -> str | None:
    """The weights' name as reported: ``folder/model.safetensors`` for a file in a hub folder."""
    if path is None:
        return None
    return f"{path.parent.name}/{path.name}" if kind != "timm-name" else path.name


def extract_logits(output: Any) -> torch.Tensor:
    """The logits from whatever the model returns (tensor, tuple, dict, HF-style object). One
    score per image (a binary classifier ending in ``.squeeze(1)``: shape N) is read as N×1."""
    if isinstance(output, torch.Tensor):
        return output[:, None] if output.ndim == 1 else output
    if isinstance(output, (tuple, list)) and output:
        return extract_logits(output[0])
    if isinstance(output, dict):
        if "logits" in output:
            return extract_logits(output["logits"])
        if output:
            return extract_logits(next(iter(output.values())))
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return extract_logits(logits)
    raise CheckpointError(
        f"cannot find logits in the model's output of type {type(output).__name__}"
    )
