"""Checkpoint files: state dicts (never run code) and whole models (run code; need trust).

``--weights`` files are read with ``torch.load(weights_only=True)`` and an allow-list of harmless
globals (``argparse.Namespace`` as timm saves it, NumPy scalars); there is no fallback to unsafe
loading. ``.safetensors`` cannot carry code. ``--checkpoint`` files (pickled ``nn.Module``,
TorchScript archives, ``torch.export`` ``.pt2``) execute code when loaded, so they are refused
unless the user passes ``--trust-checkpoint``.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from reportgen.errors import CheckpointError

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net")
STRIPPABLE_PREFIXES = ("module.", "_orig_mod.", "model.")
CheckpointKind = Literal["state_dict", "pickled_module", "torchscript", "exported"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace]
    # NumPy scalars and dtypes appear in training checkpoints (best metric, epoch counters).
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray.scalar)
    allowed.append(np.dtype)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(np.dtypes, name, None)
        if dtype_cls is not None:
            allowed.append(dtype_cls)
    return allowed


def _looks_like_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _looks_like_export(path: Path) -> bool:
    if path.suffix == ".pt2":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(
        "serialized_exported_program" in n or n.endswith("/models/model.json") for n in names
    )


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict from a weights file, plus whatever metadata sat beside it.

    Accepts plain state dicts and the nested layouts of Lightning, timm and training scripts.
    Never executes code from the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu")), {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable .safetensors file ({exc})") from None
    if _looks_like_export(p) or _looks_like_torchscript(p):
        raise CheckpointError(
            f"{p}: this is a TorchScript/torch.export archive, which runs code when loaded; "
            "pass it as --checkpoint with --trust-checkpoint if you trust its source"
        )
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(
            f"{p}: refused to load: the file needs code to unpickle ({first[:200]}). "
            "If it is a whole pickled model from a source you trust, pass it as --checkpoint "
            "with --trust-checkpoint; otherwise save a state dict (model.state_dict())"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{p}: not a readable PyTorch weights file ({exc})") from None
    return unwrap_state_dict(obj, p)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
    )


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    seen = 0
    while not _is_state_dict(obj):
        seen += 1
        if not isinstance(obj, Mapping) or seen > 4:
            kind = type(obj).__name__
            raise CheckpointError(
                f"{path}: no state dict found (top level is a {kind}); expected a dict of tensors, "
                f"possibly under one of {', '.join(NESTED_KEYS)}"
            )
        key = next((k for k in NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            raise CheckpointError(
                f"{path}: no state dict found; top-level keys are {', '.join(map(str, list(obj)[:8]))}; "
                f"expected tensors or one of {', '.join(NESTED_KEYS)}"
            )
        meta.update({k: v for k, v in obj.items() if k != key and not isinstance(v, Mapping)})
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, meta


def adapt_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) while that matches more keys."""

    def score(keys: set[str]) -> int:
        return len(keys & expected)

    current = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPABLE_PREFIXES:
            if not any(k.startswith(prefix) for k in current):
                continue
            stripped = {
                (k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in current.items()
            }
            if score(set(stripped)) > score(set(current)):
                current = stripped
                changed = True
    return current


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` strictly, with one clear error when it does not fit."""
    expected = model.state_dict()
    state = adapt_keys(state, set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    # BatchNorm's num_batches_tracked is absent from some exports; harmless.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(
                f"missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} ({len(missing)})"
            )
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        if mismatched:
            parts.append(
                f"shape mismatches: {'; '.join(mismatched[:3])}{' ...' if len(mismatched) > 3 else ''}"
            )
        raise CheckpointError(
            f"{path}: weights do not fit the architecture ({'; '.join(parts)}); "
            "check model.arch (and model.num_classes)"
        )
    model.load_state_dict(state, strict=False)


@dataclass(frozen=True)
class TrustedModel:
    module: nn.Module
    kind: CheckpointKind


def load_trusted_checkpoint(path: str | Path, trust: bool) -> TrustedModel:
    """Load a code-carrying checkpoint. Refused unless ``trust`` (the --trust-checkpoint flag)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if not trust:
        raise CheckpointError(
            f"{p}: refused: --checkpoint files (pickled models, TorchScript, .pt2) run code when "
            "loaded; pass --trust-checkpoint only if you trust where the file came from, or give "
            "--model ARCH --weights STATE_DICT instead"
        )
    try:
        if _looks_like_export(p):
            program = torch.export.load(str(p))
            return TrustedModel(program.module(), "exported")
        if _looks_like_torchscript(p):
            return TrustedModel(torch.jit.load(str(p), map_location="cpu"), "torchscript")
        obj = torch.load(p, map_location="cpu", weights_only=False)  # trusted by the user's flag
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot load trusted checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, nn.Module):
        return TrustedModel(obj, "pickled_module")
    raise CheckpointError(
        f"{p}: the checkpoint holds a {type(obj).__name__}, not a model; for a state dict use "
        "--weights with --model ARCH"
    )
