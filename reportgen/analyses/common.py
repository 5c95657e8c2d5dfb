"""Helpers that several analyses use (analyses do not import each other)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reportgen import loading, methods
from reportgen.errors import ConfigError
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


def output_channels(module: nn.Module) -> int | None:
    """Channels a layer outputs when its weights say so (conv, linear, norm), else None."""
    for attr in ("out_channels", "out_features", "num_features", "normalized_shape"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], int):
            return value[0]
    return None


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


# --------------------------------------------------------------------------- channel statistics


@dataclass
class LayerTopK:
    """Running state of one layer: top-k per channel and per-channel statistics of the peaks."""

    values: torch.Tensor
    """C×k best per-image peak activations, descending (-inf = not filled)."""
    positions: torch.Tensor
    """C×k dataset positions of those images (-1 = not filled)."""
    ys: torch.Tensor
    xs: torch.Tensor
    """C×k location of the peak unit in the layer's map."""
    mean: torch.Tensor
    m2: torch.Tensor
    """C running mean and sum of squared deviations of each image's peak (Chan et al. merge)."""
    count: int = 0
    map_size: tuple[int, int] = (0, 0)

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(1, self.count - 1)


class TopKCollector:
    """Running top-k per channel over the dataset pass, O(channels × k) memory per layer.

    Per batch and channel, each image's peak activation (max over the map) and its location are
    merged with the kept k by one sort on the device. The sort is stable with kept entries first,
    so ties keep the earlier image, as a plain loop over the dataset would.
    """

    def __init__(self, layers: Sequence[str], k: int, layout: TokenLayout | None = None) -> None:
        self.layers: Sequence[str] = list(layers)
        self.k = k
        self.layout = layout
        """A vision transformer's token layout: token outputs are read on their patch grid."""
        self.state: dict[str, LayerTopK] = {}

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        for name in self.layers:
            out = as_map(name, outputs[name], self.layout, int(indices.numel()))
            if out is None:
                continue
            self._update(name, indices, out)

    def _update(self, name: str, indices: torch.Tensor, out: torch.Tensor) -> None:
        b, c, h, w = out.shape
        flat = torch.nan_to_num(out.detach().float().flatten(2), nan=float("-inf"))
        peak, where = flat.max(dim=2)  # B×C
        st = self.state.get(name)
        if st is None:
            st = self._empty(c, out.device)
            self.state[name] = st
        st.map_size = (h, w)
        pos = indices.to(out.device).long()
        cand_v = torch.cat([st.values, peak.T], dim=1)
        cand_p = torch.cat([st.positions, pos[None, :].expand(c, b)], dim=1)
        cand_y = torch.cat([st.ys, (where // w).T], dim=1)
        cand_x = torch.cat([st.xs, (where % w).T], dim=1)
        order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        st.values = cand_v.gather(1, order)
        st.positions = cand_p.gather(1, order)
        st.ys = cand_y.gather(1, order)
        st.xs = cand_x.gather(1, order)
        stat = peak.to(st.mean.dtype).clamp(min=torch.finfo(torch.float32).min)
        mean_b = stat.mean(0)
        m2_b = ((stat - mean_b) ** 2).sum(0)
        n_a, n = st.count, st.count + b
        delta = mean_b - st.mean
        st.mean = st.mean + delta * (b / n)
        st.m2 = st.m2 + m2_b + delta**2 * (n_a * b / n)
        st.count = n

    def _empty(self, channels: int, device: torch.device) -> LayerTopK:
        stat_dtype = torch.float32 if device.type == "mps" else torch.float64

        def fill(v: int) -> torch.Tensor:
            return torch.full((channels, self.k), v, dtype=torch.long, device=device)

        return LayerTopK(
            values=torch.full((channels, self.k), float("-inf"), device=device),
            positions=fill(-1),
            ys=fill(0),
            xs=fill(0),
            mean=torch.zeros(channels, dtype=stat_dtype, device=device),
            m2=torch.zeros(channels, dtype=stat_dtype, device=device),
        )

    def merge(self, shards: Sequence[TopKCollector], positions: Sequence[torch.Tensor]) -> None:
        """torchrun: fold every process's collector into this one (``shards[0] is self``).

        ``positions[r][j]`` is the global position of process r's local position j; stored
        positions are re-keyed through it, then combined with ties going to the lower global
        position, which is what one process sees (it meets images in position order).
        """
        for shard, global_of in zip(shards, positions, strict=True):
            for st in shard.state.values():
                filled = st.positions >= 0
                table = global_of.to(st.positions.device)
                st.positions = torch.where(filled, table[st.positions.clamp(min=0)], st.positions)
        for other in shards[1:]:
            self.merge_state(other)

    def merge_state(self, other: TopKCollector) -> None:
        """Fold in a collector that saw other images, positions already in one numbering."""
        for name, theirs in other.state.items():
            mine = self.state.get(name)
            if mine is None:
                self.state[name] = theirs
                continue
            cand_v = torch.cat([mine.values, theirs.values.to(mine.values.device)], 1)
            cand_p = torch.cat([mine.positions, theirs.positions.to(mine.values.device)], 1)
            # Value descending, then lower position: sort by the tie-breaker first, stably.
            by_pos = torch.sort(
                torch.where(cand_p < 0, cand_p.max() + 1, cand_p), dim=1, stable=True
            ).indices
            by_val = torch.sort(
                cand_v.gather(1, by_pos), dim=1, descending=True, stable=True
            ).indices
            order = by_pos.gather(1, by_val)[:, : self.k]
            for attr in ("values", "positions", "ys", "xs"):
                both = torch.cat([getattr(mine, attr), getattr(theirs, attr).to(cand_v.device)], 1)
                setattr(mine, attr, both.gather(1, order))
            n_a, n_b = mine.count, theirs.count
            n = max(1, n_a + n_b)
            delta = theirs.mean.to(mine.mean) - mine.mean
            mine.mean = mine.mean + delta * (n_b / n)
            mine.m2 = mine.m2 + theirs.m2.to(mine.m2) + delta**2 * (n_a * n_b / n)
            mine.count = n_a + n_b


def choose_channels(st: LayerTopK, listed: list[int] | None, count: int) -> list[int]:
    """Listed channels, or the ``count`` whose per-image peak varies most (ties: lower index)."""
    if listed is not None:
        return listed
    # A channel whose best peak is ≤ 0 never fires (after a ReLU it is dead): nothing to show.
    seen = torch.isfinite(st.values[:, 0]) & (st.values[:, 0] > 0)
    score = torch.where(seen, st.variance.float(), torch.full_like(st.variance.float(), -1.0))
    order = torch.sort(score, descending=True, stable=True).indices
    return [int(c) for c in order[: min(count, int(seen.sum()))].tolist()]


def patch_layers(
    analysis: str,
    model: nn.Module,
    layout: TokenLayout | None,
    layers: Sequence[str],
    channels: Sequence[int],
) -> list[str]:
    """The layers whose channels the maximally activating patches (and feature visualisation)
    show: the configured ones, or conv layers spread from the second to the last (on a vision
    transformer its blocks). Listed channel numbers beyond a layer's are an input error naming
    ``analyses.<analysis>.channels``, before the pass."""
    # The first layer's tiny fields repeat the filters section; start later when there is room.
    chosen = resolve_layers(model, layers, default_layers(model, layout, skip_first=True))
    for name in chosen:
        count = output_channels(loading.types.find_layer(model, name))
        bad = [c for c in channels if count is not None and c >= count]
        if bad and count is not None:
            raise ConfigError(
                f"analyses.{analysis}.channels: {name} has {count} channels "
                f"(0–{count - 1}), no channel {bad[0]}; list channel numbers below {count}"
            )
    return chosen


def layer_channels(
    analysis: str, name: str, st: LayerTopK, listed: list[int] | None, count: int
) -> list[int]:
    """:func:`choose_channels` for one layer, a listed channel beyond the layer's an input
    error naming ``analyses.<analysis>.channels``."""
    channels = choose_channels(st, listed, count)
    bad = [c for c in channels if c >= st.values.shape[0]]
    if bad:
        raise ConfigError(
            f"analyses.{analysis}.channels: {name} has {st.values.shape[0]} channels, "
            f"no channel {bad[0]}"
        )
    return channels
