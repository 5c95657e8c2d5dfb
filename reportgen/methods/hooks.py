"""Forward hooks registered through one context manager and always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def hooks(handles_factory: Callable[[], list[RemovableHandle]]) -> Iterator[None]:
    """Register the handles the factory makes; remove them on exit, also on error."""
    handles: list[RemovableHandle] = []
    try:
        handles = handles_factory()
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs(
    layers: Mapping[str, nn.Module], *, inputs_of: Mapping[str, nn.Module] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each layer's output (and, for ``inputs_of``, its first input) on every forward.

    A module called several times in one forward keeps its last call's tensor.
    """
    store: dict[str, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def out_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store[name] = out[0] if isinstance(out, (tuple, list)) else out

        return hook

    def in_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: Any) -> None:
            store[name] = inp[0] if isinstance(inp, (tuple, list)) else inp

        return hook

    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(out_hook(name)))
        for name, module in (inputs_of or {}).items():
            handles.append(module.register_forward_pre_hook(in_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def hook_count(model: nn.Module) -> int:
    """Hooks of every kind registered on any submodule (tests check this returns to 0)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            total += len(getattr(m, attr, {}) or {})
    return total
