"""Helpers that several analyses use (analyses do not import each other)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from reportgen import loading, methods
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from torch import nn

    from reportgen.methods.vit import TokenLayout

TSNE_MAP = "embedding.tsne"
"""Key under which the embedding section shares its t-SNE map (N×2, by pass position) with later
sections (:meth:`~reportgen.contract.AnalysisContext.share_array`): the slices section outlines
its failing clusters on the very map the reader saw."""


def pixel_vectors(pixels: torch.Tensor) -> torch.Tensor:
    """N×C×s×s uint8 -> N×(C·s·s) float in [0, 1]."""
    return pixels.flatten(1).float() / 255.0


def spread_conv_layers(model: nn.Module, count: int, skip_first: bool = False) -> list[str]:
    """``count`` conv layers evenly spread from early to late (always including the last)."""
    names = [n for n, _ in loading.models.conv_layers(model)]
    if skip_first and len(names) > count:
        names = names[1:]
    if len(names) <= count:
        return names
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in dict.fromkeys(picks.tolist())]


def resolve_layers(model: nn.Module, layers: Sequence[str], default: list[str]) -> list[str]:
    """Configured layer names checked against the model (a clear error naming the nearest)."""
    chosen = list(layers) or default
    for name in chosen:
        loading.types.find_layer(model, name)
    return chosen


class LayerNotCalled(RuntimeError):
    def __init__(self, layer: str) -> None:
        super().__init__(f"layer {layer} was not called in the model's forward")


def layer_outputs(
    model: nn.Module, layers: Sequence[str], inputs: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Each layer's output for ``inputs`` (N×C×H×W), float32 on the inputs' device.

    The hooks capture the tensor each layer returns; an in-place activation right after it
    (``ReLU(inplace=True)``) is therefore included, as the next layer sees it.
    """
    modules = {name: loading.types.find_layer(model, name) for name in layers}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with torch.inference_mode(), methods.hooks.capture_outputs(modules) as captured:
        for start in range(0, inputs.shape[0], batch_size):
            captured.clear()
            model(inputs[start : start + batch_size])
            for name in layers:
                if name not in captured:
                    raise LayerNotCalled(name)
                parts[name].append(captured[name].float().clone())
    return {name: torch.cat(p) for name, p in parts.items()}


def default_layers(
    model: nn.Module, layout: TokenLayout | None, count: int = 3, skip_first: bool = False
) -> list[str]:
    """Layers drawn by default: conv layers spread from early to late, or on a vision
    transformer ``count`` of its blocks spread from first to last (their tokens on the grid)."""
    if layout is None:
        return spread_conv_layers(model, count, skip_first=skip_first)
    blocks = methods.vit.token_layers(layout)
    if len(blocks) <= count:
        return blocks
    picks = np.linspace(0, len(blocks) - 1, count).round().astype(int)
    return [blocks[i] for i in dict.fromkeys(picks.tolist())]


def as_map(
    name: str, output: torch.Tensor, layout: TokenLayout | None, batch: int
) -> torch.Tensor | None:
    """A layer's output as B×C×h×w: spatial maps as they are; on a vision transformer, token
    sequences reshaped to their patch grid (class/register tokens dropped); otherwise None."""
    if layout is None:
        return output if output.ndim == 4 else None
    return methods.vit.token_output_to_map(name, output, layout, batch=batch)
