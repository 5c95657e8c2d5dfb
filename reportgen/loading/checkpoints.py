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
import os
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from reportgen.errors import CheckpointError

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net")
CheckpointKind = Literal["state_dict", "pickled_module", "torchscript", "exported"]


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pt2")
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_weights_file(path: str | Path, key: str = "model.weights") -> Path:
    """The path of a file that can hold saved weights, or a CheckpointError saying what it is.

    Runs before anything opens the file: the type comes from ``stat`` (a FIFO given as weights
    never blocks the run), then the first bytes are looked at. Refused, each with what to do: a
    missing path, a folder (naming the weight files inside it), a FIFO/socket/device, an empty
    file, a Git LFS pointer, an HTML page (a failed download) and any other text file. ``key`` is
    the config key named in the message (``model.weights`` or ``model.checkpoint``).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        noun = "checkpoint file" if key == "model.checkpoint" else "weights file"
        raise CheckpointError(f"{key}: {p}: {noun} not found; check the path") from None
    except OSError as exc:
        raise CheckpointError(f"{key}: cannot open {p} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            inside = sorted(
                e.name for e in os.scandir(p) if e.name.endswith(WEIGHT_SUFFIXES) and e.is_file()
            )
        except OSError:
            inside = []
        hint = (
            f" (it holds {', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''})"
            if inside
            else ""
        )
        raise CheckpointError(
            f"{key}: {p} is a folder, not a weights file{hint}; pass the weights file itself"
        )
    for test, kind in _SPECIAL:
        if test(st.st_mode):
            raise CheckpointError(
                f"{key}: {p} is {kind}, not a regular file; save the weights to a file and pass that"
            )
    if st.st_size == 0:
        raise CheckpointError(
            f"{key}: {p} is empty (0 bytes), so the save or download did not finish; save the "
            "weights again (torch.save(model.state_dict(), path))"
        )
    try:
        with p.open("rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise CheckpointError(f"{key}: cannot read {p} ({exc.strerror or exc})") from None
    text = _as_text(head)
    if text is not None:
        stripped = text.lstrip()
        if stripped.startswith("version https://git-lfs"):
            raise CheckpointError(
                f"{key}: {p} is a Git LFS pointer, not the weights; fetch the real file with "
                "`git lfs pull` (or download it again)"
            )
        if stripped[:15].lower().startswith(("<!doctype html", "<html")):
            raise CheckpointError(
                f"{key}: {p} is an HTML page (a failed download?), not saved weights; download "
                "the weights file again"
            )
        first = _one_line(stripped, 40) or "whitespace"
        raise CheckpointError(
            f"{key}: {p} is a text file (it starts with {first!r}), not saved weights; pass the "
            "file written by torch.save(model.state_dict(), path) or a .safetensors file"
        )
    return p


def _as_text(head: bytes) -> str | None:
    """``head`` decoded when it looks like the start of a text file (UTF-8, no NUL, no binary
    control bytes), else None. Every weights format starts with binary bytes (a pickle opcode, a
    zip header, safetensors' 8-byte length)."""
    if not head or b"\x00" in head:
        return None
    for cut in range(4):  # the 512-byte window may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if any(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in text):
        return None
    return text


_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"\x89HDF", "an HDF5 file, e.g. Keras .h5 weights"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip file; decompress it first"),
    (b"GGUF", "a GGUF file"),
)


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _is_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) >= 10 and head[8:10] == b'{"'


def _looks_like(head: bytes) -> str:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"it is {kind}"
    return f"it starts with the bytes {head[:4].hex(' ')}"


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


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse a (possibly multi-line) library message into one short line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _blocked_reason(message: str) -> str:
    """What the weights-only unpickler refused, in words (torch's own text suggests unsafe loading)."""
    found = re.search(r"GLOBAL\s+([\w.]+)", message)
    if found:
        return f"it needs code to unpickle (it references {found.group(1)}, which is not allowed)"
    return "it holds pickle content outside the weights-only subset (it needs code to unpickle)"


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict from a weights file, plus whatever metadata sat beside it.

    Accepts plain state dicts and the nested layouts of Lightning, timm and training scripts.
    Never executes code from the file.
    """
    p = check_weights_file(path, "model.weights")
    head = _head(p)
    if p.suffix == ".safetensors" or _is_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu")), {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable .safetensors file ({exc})") from None
    if _looks_like_export(p) or _looks_like_torchscript(p):
        kind = "torch.export (.pt2)" if _looks_like_export(p) else "TorchScript"
        raise CheckpointError(
            f"{p}: this is a {kind} archive, which runs code when loaded, so it is not read as "
            "--weights; pass it as --checkpoint with --trust-checkpoint if you trust its source"
        )
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        # torch.save writes a zip archive (or, in the legacy format, a pickle: protocol >= 2
        # starts with 0x80); anything else is another kind of file, not weights.
        raise CheckpointError(
            f"{p}: not a PyTorch weights file ({_looks_like(head)}); pass the file written by "
            "torch.save(model.state_dict(), path) or a .safetensors file"
        )
    try:
        # torch warns about pickle protocols it did not write; the message means nothing to users.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with torch.serialization.safe_globals(_safe_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Never retry with weights_only=False: an attacker can provoke this error at will.
        raise CheckpointError(
            f"{p}: refused to load as --weights: {_blocked_reason(str(exc))}; nothing in it was "
            "run. If it is a whole pickled model from a source you trust, pass it as --checkpoint "
            "with --trust-checkpoint; otherwise save a state dict (model.state_dict())"
        ) from None
    except Exception as exc:  # garbage makes torch's unpickler raise anything (KeyError...)
        raise CheckpointError(
            f"{p}: not a readable PyTorch weights file ({_one_line(str(exc))})"
        ) from None
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


def _key_prefixes(keys: Iterable[str]) -> set[str]:
    """The dotted prefixes of the keys up to three levels (``a.``, ``a.b.`` for ``a.b.c.d``).

    Three levels cover the real wrappers (``module._orig_mod.``, ``model.backbone.``) and keep
    this cheap for models with thousands of keys.
    """
    out: set[str] = set()
    for k in keys:
        parts = k.split(".")[:-1]
        for i in range(1, min(len(parts), 3) + 1):
            out.add(".".join(parts[:i]) + ".")
    return out


def adapt_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The part of ``state`` that fits a model with ``expected`` keys.

    Wrappers put the model's keys under a prefix: ``module.`` (DataParallel/DDP), ``_orig_mod.``
    (torch.compile), the LightningModule attribute (``model.``, ``net.`` ...), or several of them
    (``module._orig_mod.``). The prefix whose keys match the most expected keys wins; keys outside
    it (a Lightning module's loss weights, an EMA copy) belong to the wrapper and are dropped.
    Without a better prefix the state is returned unchanged, so a wrong architecture still shows
    every unexpected key.
    """
    needed = {k for k in expected if not k.endswith("num_batches_tracked")}

    def score(keys: Iterable[str]) -> int:
        return len(needed.intersection(keys))

    best, best_score = "", score(state)
    if best_score == len(needed):
        return dict(state)
    # Shortest prefix first, so that ``module.`` beats ``module.module.`` on a tie.
    for prefix in sorted(_key_prefixes(state), key=lambda x: (x.count("."), x)):
        sub = [k[len(prefix) :] for k in state if k.startswith(prefix)]
        sc = score(sub)
        if sc > best_score:
            best, best_score = prefix, sc
    if not best:
        return dict(state)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


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
    p = check_weights_file(path, "model.checkpoint")
    if not trust:
        raise CheckpointError(
            f"{p}: refused: --checkpoint files (pickled models, TorchScript, .pt2) run code when "
            "loaded; pass --trust-checkpoint only if you trust where the file came from, or give "
            "--model ARCH --weights STATE_DICT instead"
        )
    try:
        # torch deprecates TorchScript with a FutureWarning on every load; not the user's concern.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if _looks_like_export(p):
                return TrustedModel(ExportedModule(torch.export.load(str(p))), "exported")
            if _looks_like_torchscript(p):
                return TrustedModel(torch.jit.load(str(p), map_location="cpu"), "torchscript")
            obj = torch.load(p, map_location="cpu", weights_only=False)  # trusted by the flag
    except Exception as exc:
        raise CheckpointError(
            f"{p}: cannot load trusted checkpoint ({type(exc).__name__}: {_one_line(str(exc))})"
        ) from None
    if isinstance(obj, nn.Module):
        return TrustedModel(obj, "pickled_module")
    raise CheckpointError(
        f"{p}: the checkpoint holds a {type(obj).__name__}, not a model; for a state dict use "
        "--weights with --model ARCH"
    )


# --------------------------------------------------------------------------- torch.export programs

# Graph ops whose "training" flag is baked in when a model is exported in train mode, and the
# position of that flag. ``ExportedProgram.module()`` refuses ``.eval()`` and torch no longer ships
# ``move_exported_model_to_eval`` (it moved to torchao), so the flag is rewritten here.
_TRAIN_FLAG_ARG = {
    "aten.batch_norm.default": 5,
    "aten.dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
    "aten.feature_alpha_dropout.default": 2,
}


def exported_graph_to_eval(graph_module: torch.fx.GraphModule) -> int:
    """Switch batch norm and dropout in an exported graph to inference; returns ops changed."""
    changed = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        pos = _TRAIN_FLAG_ARG.get(str(node.target))
        if pos is None or len(node.args) <= pos or node.args[pos] is not True:
            continue
        args = list(node.args)
        args[pos] = False
        node.args = tuple(args)
        changed += 1
    if changed:
        graph_module.recompile()
    return changed


def _static_input_shape(program: Any) -> tuple[int | None, ...] | None:
    """The first user input's shape with ``None`` for dynamic dimensions (None if unknown)."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            if shape is None:
                return None
            return tuple(d if isinstance(d, int) else None for d in shape)
    return None


class ExportedModule(nn.Module):
    """A ``torch.export`` program as a module that runs in inference mode on any batch size.

    Most programs are exported with a static batch size (often 1); inputs are split into chunks
    of that size (the last chunk padded) so the DataLoader's batches fit. A static image size that
    differs from the preprocessing is reported as an input error rather than a guard failure.
    """

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.input_shape = _static_input_shape(program)
        self.program = program.module()
        self.eval_ops_switched = exported_graph_to_eval(self.program)
        self.training = False

    def train(self, mode: bool = True) -> ExportedModule:
        # The unlifted graph raises on .train()/.eval(); its mode is fixed at export time (and
        # switched to inference above), so only this wrapper's flag changes.
        self.training = mode
        return self

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        # Report the original model's names (``conv1.weight``), not ``program.conv1.weight``.
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            yield (
                name.replace("program.", "", 1) if name.startswith(prefix + "program.") else name,
                p,
            )

    def forward(self, x: torch.Tensor) -> Any:
        shape = self.input_shape
        if shape is not None and len(shape) == x.ndim:
            want = [d for d in shape[1:]]
            got = list(x.shape[1:])
            if any(w is not None and w != g for w, g in zip(want, got, strict=True)):
                expect = "×".join("?" if w is None else str(w) for w in want)
                raise CheckpointError(
                    f"the exported model takes inputs of {expect} (channels×height×width) but "
                    f"gets {'×'.join(map(str, got))}; set preprocess.resize and preprocess.crop "
                    "to match the export"
                )
            batch = shape[0]
            if batch is not None and x.shape[0] != batch:
                return self._chunked(x, batch)
        return self.program(x)

    def _chunked(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            n = chunk.shape[0]
            if n < batch:
                pad = chunk[-1:].expand(batch - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            out = self.program(chunk)
            logits = _first_tensor(out)
            outs.append(logits[:n])
        return torch.cat(outs)


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    if isinstance(output, dict) and output:
        return _first_tensor(output.get("logits", next(iter(output.values()))))
    raise CheckpointError(f"cannot find logits in the exported model's {type(output).__name__}")
