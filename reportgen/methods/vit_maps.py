"""Vision-transformer maps: Grad-CAM on the token grid, attention rollout, method notes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from reportgen.heads import MULTICLASS, Head
from reportgen.loading.types import find_layer
from reportgen.methods.attribution import target_logits
from reportgen.methods.hooks import hooks
from reportgen.methods.vit import (
    Grid,
    TokenLayout,
    Unavailable,
    _first_tensor,
    _inner_model,
    token_output_to_map,
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
    *,
    head: Head = MULTICLASS,
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
            score = target_logits(model, x, targets[start : start + batch_size], head)
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
