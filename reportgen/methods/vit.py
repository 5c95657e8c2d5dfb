"""Vision transformers: their token layout, token outputs as maps, Grad-CAM and attention rollout.

A ViT cuts the image into patches with one convolution whose kernel equals its stride (the
*patch embedding*: the transformer's "first-layer filters"), adds prefix tokens (a class token,
register tokens, a distillation token) and runs blocks of attention and MLPs on the sequence
B×N×D, N = prefix + h·w. Every per-location analysis needs that sequence back on its h×w patch
grid with the prefix dropped (:func:`tokens_to_grid`). timm's Swin keeps its tokens as
B×h×w×C maps (channels last) and halves the grid at every stage; Hugging Face's Swin uses
sequences at every stage's grid. :func:`describe_vit` finds all of this by running one probe
forward pass, for timm and Hugging Face models alike.

Grad-CAM on a ViT (:func:`vit_grad_cam`) is the usual channel-weighted sum on the reshaped
grid. By default it explains the last block's pre-attention norm: a class-token model reads only
the class token after the last block, so the patch tokens of the last block's *output* have zero
gradient. Attention rollout (Abnar & Zuidema 2020, :func:`attention_rollout`) multiplies the
head-averaged attention matrices, each with the identity added for the residual path and rows
renormalised, through the layers and reads the class token's row over the patch tokens. It
needs the attention probabilities: timm attention modules are switched to their unfused path
for the pass and the input of their ``attn_drop`` is captured; Hugging Face models run with
eager attention and ``output_attentions=True``. Where neither applies the result is an explicit
:class:`Unavailable` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reportgen.methods.hooks import hooks
from reportgen.methods.receptive_field import AxisField, ReceptiveField

Grid = tuple[int, int]


@dataclass(frozen=True)
class Unavailable:
    """A result that cannot be computed for this architecture, and why."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out its tokens, for inputs of ``input_size``."""

    model_type: str
    """Class name of the transformer (``VisionTransformer``, ``ViTForImageClassification`` ...)."""
    patch_conv: str
    """Module name of the patch-embedding convolution (the first-layer filters)."""
    patch_size: Grid
    in_channels: int
    embed_dim: int
    input_size: Grid
    grid: Grid
    """Patch grid (rows, columns) for ``input_size``."""
    num_prefix_tokens: int
    """Tokens before the patch tokens (class, register, distillation), dropped on reshape."""
    has_class_token: bool
    """The first token is a class token (rollout reads its row)."""
    prefix_description: str
    grids: tuple[Grid, ...]
    """Every token grid the blocks produce, the patch grid first (one per Swin stage)."""
    channels_last: bool
    """Token maps are B×h×w×C tensors (timm Swin) instead of B×N×D sequences."""
    blocks: tuple[str, ...]
    """Transformer blocks in forward order (parents of the attention modules)."""
    attention: tuple[str, ...]
    """Each block's attention module."""
    block_norms: tuple[str | None, ...]
    """Each block's first normalisation called (the pre-attention norm), when it has one."""
    global_attention: bool
    """Attention spans all tokens (ViT) rather than local windows (Swin)."""
    output_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    """Output shape of every module in the probe pass (batch 2)."""

    def describe(self) -> str:
        """One sentence for the report: patch size, grid and token handling."""
        prefix = (
            f"{self.prefix_description} dropped"
            if self.num_prefix_tokens
            else "no class or register tokens"
        )
        stages = (
            f"; stage grids {', '.join(f'{h}×{w}' for h, w in self.grids)}"
            if len(self.grids) > 1
            else ""
        )
        layout = "B×h×w×C maps" if self.channels_last else "B×N×D token sequences"
        return (
            f"{self.model_type}: {self.patch_size[0]}×{self.patch_size[1]} patches embedded by "
            f"{self.patch_conv} ({self.in_channels}→{self.embed_dim}), a {self.grid[0]}×"
            f"{self.grid[1]} patch grid for {self.input_size[0]}×{self.input_size[1]} inputs"
            f"{stages}; {layout} reshaped to their grid ({prefix})."
        )


# --------------------------------------------------------------------------- detection


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module returns: itself, the first of a tuple, or an output object's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return _first_tensor(output[0]) if output else None
    if isinstance(output, Mapping) and output:
        return _first_tensor(next(iter(output.values())))
    return None


def _is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.MultiheadAttention) or "Attention" in name or "Attn" in name


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "Norm" in type(module).__name__


def _outermost_attention(model: nn.Module) -> list[str]:
    """Names of attention modules not inside another attention module, in definition order."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or not _is_attention(module):
            continue
        if any(name.startswith(outer + ".") for outer in found):
            continue
        found.append(name)
    return found


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _inner_model(model: nn.Module) -> nn.Module:
    """The transformers model inside reportgen's HFClassifier wrapper (else the model)."""
    from reportgen.loading.hub import HFClassifier

    return model.model if isinstance(model, HFClassifier) else model


def _prefix_tokens(model: nn.Module) -> list[tuple[str, int]]:
    """(kind, count) of the model's prefix-token parameters: class, register, distillation."""
    kinds: list[tuple[str, int]] = []
    for name, p in model.named_parameters():
        leaf = name.rpartition(".")[2]
        n = int(p.shape[1]) if p.ndim == 3 else 1
        if leaf in ("cls_token",):
            kinds.append(("class", n))
        elif leaf in ("reg_token", "register_tokens"):
            kinds.append(("register", n))
        elif leaf in ("dist_token", "distillation_token"):
            kinds.append(("distillation", n))
    return kinds


def _prefix_description(kinds: list[tuple[str, int]], count: int) -> str:
    """'1 class token', '1 class + 4 register tokens' ..."""
    if count == 0:
        return "no prefix tokens"
    if kinds and sum(n for _, n in kinds) == count:
        return " + ".join(f"{n} {kind}" for kind, n in kinds) + (
            " token" if count == 1 else " tokens"
        )
    return f"{count} prefix token{'s' if count != 1 else ''}"


def _probe(
    model: nn.Module, sample: torch.Tensor
) -> tuple[dict[str, tuple[int, ...]], list[str], dict[str, int]]:
    """(output shape per module, modules in call order, first-input batch per module)."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    called: set[str] = set()
    in_batch: dict[str, int] = {}

    def make(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        def pre(_m: nn.Module, inp: Any) -> None:
            t = _first_tensor(inp)
            if name not in in_batch and t is not None and t.ndim >= 1:
                in_batch[name] = int(t.shape[0])
            if name not in called:
                called.add(name)
                order.append(name)

        def post(_m: nn.Module, _inp: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                shapes[name] = tuple(t.shape)

        return pre, post

    def register() -> list[Any]:
        handles = []
        for n, m in model.named_modules():
            if n:
                pre, post = make(n)
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        return handles

    with torch.inference_mode(), hooks(register):
        model(sample)
    return shapes, order, in_batch


def _stage_grids(grid: Grid) -> list[Grid]:
    """The patch grid and its halvings (hierarchical stages merge 2×2 patches)."""
    out = [grid]
    h, w = grid
    while h > 1 or w > 1:
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


def describe_vit(model: nn.Module, input_size: Grid, batch: int = 2) -> TokenLayout | None:
    """The token layout of a vision transformer for ``input_size`` (H, W) inputs; ``None`` for
    a model that is not one (a CNN: no patchify convolution followed by attention blocks).

    Runs one forward pass on zeros (``batch`` images; the default 2 tells windowed attention,
    whose batch is images × windows, from global attention). A ViT-like model has a first
    convolution whose kernel equals its stride, attention modules, and blocks whose outputs are
    token sequences (or timm Swin's B×h×w×C maps) on that convolution's grid.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    conv_name, conv = convs[0]
    kernel, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if kernel != stride or kernel == (1, 1) or any(p != 0 for p in _pair(conv.padding)):
        return None
    attention = _outermost_attention(model)
    if not attention:
        return None
    param = next(model.parameters())
    sample = torch.zeros(
        (batch, conv.in_channels, *input_size), dtype=param.dtype, device=param.device
    )
    shapes, order, in_batch = _probe(model, sample)
    conv_shape = shapes.get(conv_name)
    if conv_shape is None or len(conv_shape) != 4:
        return None
    grid: Grid = (conv_shape[2], conv_shape[3])
    candidates = _stage_grids(grid)
    inner = _inner_model(model)
    attr_prefix = getattr(inner, "num_prefix_tokens", None)

    blocks: list[str] = []
    block_attention: list[str] = []
    channels_last = False
    prefix: int | None = attr_prefix if isinstance(attr_prefix, int) else None
    seen_grids: list[Grid] = []
    for att in attention:
        block = _parent(att)
        shape = shapes.get(block)
        if not block or shape is None or shape[0] != batch:
            continue
        if len(shape) == 3:
            n = shape[1]
            if prefix is None:
                if not 0 <= n - grid[0] * grid[1] <= 16:
                    continue
                prefix = n - grid[0] * grid[1]
            g = next((c for c in candidates if c[0] * c[1] == n - prefix), None)
            if g is None:  # blocks before the class token joins (CaiT's self-attention stage)
                g = next((c for c in candidates if c[0] * c[1] == n), None)
        elif len(shape) == 4 and (shape[1], shape[2]) in candidates:
            channels_last = True
            g = (shape[1], shape[2])
        else:
            g = None
        if g is None:
            continue
        blocks.append(block)
        block_attention.append(att)
        if g not in seen_grids:
            seen_grids.append(g)
    if not blocks:
        return None
    if prefix is None:
        prefix = 0
    if grid not in seen_grids:
        seen_grids.insert(0, grid)
    modules = dict(model.named_modules())
    norms: list[str | None] = []
    for block in blocks:
        inside = [n for n in order if n.startswith(block + ".") and _is_norm(modules[n])]
        norms.append(inside[0] if inside else None)
    global_attention = all(in_batch.get(a, batch) == batch for a in block_attention)
    kinds = _prefix_tokens(inner)
    return TokenLayout(
        model_type=type(inner).__name__,
        patch_conv=conv_name,
        patch_size=(int(kernel[0]), int(kernel[1])),
        in_channels=int(conv.in_channels),
        embed_dim=int(conv.out_channels),
        input_size=(int(input_size[0]), int(input_size[1])),
        grid=grid,
        num_prefix_tokens=prefix,
        # timm and transformers put the class token first, then registers/distillation.
        has_class_token=prefix > 0 and bool(kinds) and kinds[0][0] == "class",
        prefix_description=_prefix_description(kinds, prefix),
        grids=tuple(seen_grids),
        channels_last=channels_last,
        blocks=tuple(blocks),
        attention=tuple(block_attention),
        block_norms=tuple(norms),
        global_attention=global_attention,
        output_shapes=shapes,
    )


def _pair(v: Any) -> tuple[int, ...]:
    if isinstance(v, str):  # padding="same"/"valid"
        return (0, 0) if v == "valid" else (1, 1)
    return tuple(v) if isinstance(v, tuple | list) else (int(v), int(v))


# --------------------------------------------------------------------------- tokens as maps


def tokens_to_grid(tokens: torch.Tensor, prefix: int, grid: Grid) -> torch.Tensor:
    """B×N×D tokens -> B×D×h×w: the first ``prefix`` tokens dropped, the rest in row-major
    patch order (token ``prefix + i·w + j`` is grid cell (i, j))."""
    b, n, d = tokens.shape
    h, w = grid
    if n - prefix != h * w:
        raise ValueError(
            f"{n} tokens less {prefix} prefix tokens do not fill a {h}×{w} grid ({h * w} cells)"
        )
    return tokens[:, prefix:, :].reshape(b, h, w, d).permute(0, 3, 1, 2)


def channels_last_to_map(t: torch.Tensor) -> torch.Tensor:
    """B×h×w×C (timm Swin) -> B×C×h×w."""
    return t.permute(0, 3, 1, 2)


def token_output_to_map(
    name: str, output: Any, layout: TokenLayout, batch: int | None = None
) -> torch.Tensor | None:
    """A module's output as a B×C×h×w map on one of the model's token grids, or ``None``.

    * the patch-embedding conv and other B×C×h×w outputs on a token grid: returned as they are;
    * B×N×D token sequences whose N is a grid's cells (plus the prefix tokens): reshaped with
      :func:`tokens_to_grid`, prefix dropped;
    * timm Swin's B×h×w×C maps: permuted to B×C×h×w;
    * anything else (pooled vectors, attention weights, windowed tokens whose batch is
      images × windows): ``None`` — not a map over the image.

    ``batch`` (the number of images in the pass) rejects windowed tensors for certain.
    """
    t = _first_tensor(output)
    if t is None or (batch is not None and t.shape[0] != batch):
        return None
    grids = layout.grids
    if t.ndim == 4:
        if name == layout.patch_conv:
            return t
        if layout.channels_last and (t.shape[1], t.shape[2]) in grids:
            return channels_last_to_map(t)
        if (t.shape[2], t.shape[3]) in grids:
            return t
        return None
    if t.ndim == 3:
        n = t.shape[1]
        for g in grids:
            if n - layout.num_prefix_tokens == g[0] * g[1]:
                return tokens_to_grid(t, layout.num_prefix_tokens, g)
        for g in grids:
            if n == g[0] * g[1]:  # a sequence before the prefix tokens were added
                return tokens_to_grid(t, 0, g)
    return None


def token_layers(layout: TokenLayout) -> list[str]:
    """The block outputs: the default layers for activation maps and top patches on a ViT."""
    return list(layout.blocks)


def token_cell_field(layer: str, layout: TokenLayout, grid: Grid) -> ReceptiveField:
    """The image cell a token of ``grid`` stands for, as a field for cropping top patches.

    After the first attention layer every token depends on the whole image, so this is not a
    receptive field: it is the patch (or merged patch) the token was made from, which is what
    top-patch figures show for transformers.
    """
    sh = layout.input_size[0] // grid[0]
    sw = layout.input_size[1] // grid[1]
    return ReceptiveField(
        layer,
        rows=AxisField(size=sh, stride=sh, offset=0),
        cols=AxisField(size=sw, stride=sw, offset=0),
        probe_size=max(layout.input_size),
    )
