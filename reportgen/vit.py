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

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reportgen.attribution import target_logits
from reportgen.hooks import hooks
from reportgen.loading.models import find_layer
from reportgen.receptive_field import AxisField, ReceptiveField

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


# --------------------------------------------------------------------------- Grad-CAM


def default_vit_gradcam_layer(layout: TokenLayout) -> str:
    """The last block's pre-attention norm (timm ``norm1``, HF ``layernorm_before``), else the
    last block: its patch tokens still reach the class score through the last attention."""
    norm = layout.block_norms[-1]
    return norm if norm is not None else layout.blocks[-1]


def vit_grad_cam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layer: str,
    layout: TokenLayout,
    batch_size: int = 32,
) -> torch.Tensor:
    """Grad-CAM on a token grid, Q×h×w, ReLU applied.

    The layer's output and its gradient are reshaped with :func:`token_output_to_map` (prefix
    tokens dropped); channel weights are the gradient's means over the grid. A layer called
    several times per forward pass is explained at its last call.
    """
    module = find_layer(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        act = _first_tensor(out)
        if act is None:
            return None
        captured.append(act)
        # Hand the rest of the network a copy, so an in-place op downstream cannot overwrite the
        # activation we differentiate against.
        return act.clone() if isinstance(out, torch.Tensor) else None

    cams = []
    with torch.enable_grad(), hooks(lambda: [module.register_forward_hook(hook)]):
        for start in range(0, inputs.shape[0], batch_size):
            captured.clear()
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            score = target_logits(model, x, targets[start : start + batch_size])
            if not captured:
                raise RuntimeError(f"the Grad-CAM layer {layer} was not called in the forward pass")
            act = captured[-1]
            (grad,) = torch.autograd.grad(score.sum(), act)
            act_map = token_output_to_map(layer, act, layout, batch=x.shape[0])
            grad_map = token_output_to_map(layer, grad, layout, batch=x.shape[0])
            if act_map is None or grad_map is None:
                raise ValueError(
                    f"{layer}'s output {tuple(act.shape)} is not on the model's token grid"
                )
            weights = grad_map.mean(dim=(2, 3), keepdim=True)
            cams.append((weights * act_map).sum(dim=1).clamp(min=0).detach())
    return torch.cat(cams)


# --------------------------------------------------------------------------- attention rollout


def rollout(attentions: Sequence[torch.Tensor], prefix: int, grid: Grid) -> torch.Tensor:
    """Attention rollout from per-layer attention probabilities (each B×heads×N×N, first layer
    first): B×h×w, the class token's row over the patch tokens.

    Per layer the heads are averaged, the identity added (the residual connection) and rows
    renormalised; the layers' matrices are multiplied, later layers on the left.
    """
    result: torch.Tensor | None = None
    for att in attentions:
        a = att.float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise ValueError("no attention layers to roll out")
    h, w = grid
    return result[:, 0, prefix:].reshape(result.shape[0], h, w)


@contextlib.contextmanager
def _unfused(modules: Sequence[nn.Module]) -> Iterator[None]:
    """timm attention computes softmax(q·kᵀ) explicitly while inside (``fused_attn=False``)."""
    # ``fused_attn`` is a plain bool attribute (typed Any: nn.Module's attributes are tensors).
    attns: list[Any] = list(modules)
    before = [m.fused_attn for m in attns]
    try:
        for m in attns:
            m.fused_attn = False
        yield
    finally:
        for m, value in zip(attns, before, strict=True):
            m.fused_attn = value


def _timm_attentions(
    model: nn.Module, x: torch.Tensor, layout: TokenLayout
) -> list[torch.Tensor] | Unavailable:
    modules = [find_layer(model, name) for name in layout.attention]
    lacking = [
        name
        for name, m in zip(layout.attention, modules, strict=True)
        if not hasattr(m, "fused_attn") or not isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]
    if lacking:
        kind = type(find_layer(model, lacking[0])).__name__
        return Unavailable(
            f"attention weights are not reachable: {kind} ({lacking[0]}) computes attention "
            "without exposing its probabilities (no attn_drop/fused_attn switch)"
        )
    store: dict[int, torch.Tensor] = {}

    def make(i: int) -> Callable[..., None]:
        def pre(_m: nn.Module, inp: Any) -> None:
            store[i] = inp[0].detach()

        return pre

    def register() -> list[Any]:
        drops = [m.get_submodule("attn_drop") for m in modules]
        return [d.register_forward_pre_hook(make(i)) for i, d in enumerate(drops)]

    with torch.inference_mode(), _unfused(modules), hooks(register):
        model(x)
    if sorted(store) != list(range(len(modules))):
        return Unavailable("attention weights are not reachable: an attention layer was not run")
    return [store[i] for i in range(len(modules))]


def _hf_attentions(inner: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | Unavailable:
    config = getattr(inner, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(inner, "set_attn_implementation")
    try:
        if switch:
            inner.set_attn_implementation("eager")  # type: ignore[operator]
        with torch.inference_mode():
            out = inner(pixel_values=x, output_attentions=True)
    finally:
        if switch:
            inner.set_attn_implementation(previous)  # type: ignore[operator]
    attentions = getattr(out, "attentions", None)
    if not attentions:
        return Unavailable(
            f"attention weights are not reachable: {type(inner).__name__} returned none with "
            "output_attentions=True"
        )
    return [a.detach() for a in attentions]


def attention_maps(
    model: nn.Module, x: torch.Tensor, layout: TokenLayout
) -> list[torch.Tensor] | Unavailable:
    """Per-layer attention probabilities (B×heads×N×N, first layer first) for inputs ``x``."""
    from reportgen.loading.hub import HFClassifier

    if isinstance(model, HFClassifier):
        found = _hf_attentions(model.model, x)
    else:
        found = _timm_attentions(model, x, layout)
    if isinstance(found, Unavailable):
        return found
    n = layout.num_prefix_tokens + layout.grid[0] * layout.grid[1]
    for i, att in enumerate(found):
        if att.ndim != 4 or tuple(att.shape[2:]) != (n, n) or att.shape[0] != x.shape[0]:
            return Unavailable(
                f"attention weights of layer {i} have shape {tuple(att.shape)}, not "
                f"images×heads×{n}×{n} over all tokens"
            )
        # What was captured must be probabilities (softmax rows), not scores or values.
        rows = att.float().sum(dim=-1)
        if bool((att < 0).any()) or not torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
            return Unavailable(
                f"the tensor captured as layer {i}'s attention is not a softmax over tokens "
                "(rows do not sum to 1)"
            )
    return found


def attention_rollout(
    model: nn.Module, inputs: torch.Tensor, layout: TokenLayout, batch_size: int = 32
) -> torch.Tensor | Unavailable:
    """Attention rollout (Abnar & Zuidema 2020) per input, Q×h×w on the patch grid.

    Unavailable (with the reason) for windowed attention (Swin), for models without a class
    token, and where the attention probabilities cannot be captured.
    """
    if not layout.global_attention:
        return Unavailable(
            f"{layout.model_type} attends within local windows, so there is no attention "
            "between all tokens to roll out"
        )
    if not layout.has_class_token:
        return Unavailable(
            f"{layout.model_type} has no class token ({layout.prefix_description}; it pools "
            "the tokens); rollout reads the class token's row"
        )
    maps = []
    for start in range(0, inputs.shape[0], batch_size):
        found = attention_maps(model, inputs[start : start + batch_size], layout)
        if isinstance(found, Unavailable):
            return found
        maps.append(rollout(found, layout.num_prefix_tokens, layout.grid))
    return torch.cat(maps)


# --------------------------------------------------------------------------- method notes


def guided_backprop_unavailable(model: nn.Module) -> str | None:
    """Why guided backprop does not apply (GELU activations and no ReLU), or ``None``."""
    has_relu = any(isinstance(m, nn.ReLU | nn.ReLU6) for m in model.modules())
    gelu = next(
        (type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__.upper()), None
    )
    if gelu is not None and not has_relu:
        return (
            f"not applicable: {type(_inner_model(model)).__name__} uses {gelu} activations, not "
            "ReLU; guided backprop's rule (pass positive gradients through ReLUs) is defined for "
            "ReLU networks"
        )
    return None
