"""Vision transformers: token layout, token maps, Grad-CAM on the token grid, attention rollout.

References are written out by hand here: token (i, j) found by index arithmetic in loops,
attention probabilities recomputed from each block's own q/k projection weights, and the
rollout as an explicit NumPy product of per-layer matrices.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np
import pytest
import timm
import torch
from hub_models import hf_model, hf_vit_config, small_timm
from torch import nn

from reportgen.loading.hub import HFClassifier
from reportgen.methods.hooks import hook_count
from reportgen.methods.vit import (
    TokenLayout,
    Unavailable,
    describe_vit,
    token_cell_field,
    token_output_to_map,
    tokens_to_grid,
)
from reportgen.methods.vit_maps import (
    attention_rollout,
    default_vit_gradcam_layer,
    guided_backprop_unavailable,
    vit_grad_cam,
)


def images(n: int = 3, size: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def vit(**extra: Any) -> nn.Module:
    return small_timm("vit_tiny_patch16_224", num_classes=4, **extra)


def hf_vit() -> HFClassifier:
    return HFClassifier(hf_model(hf_vit_config(3))).eval()


def layout_of(model: nn.Module, size: int = 32) -> TokenLayout:
    found = describe_vit(model, (size, size))
    assert found is not None
    return found


# --------------------------------------------------------------------------- detection


def test_layouts_of_timm_and_hf_transformers() -> None:
    plain = layout_of(vit())
    assert (plain.patch_conv, plain.patch_size, plain.grid) == ("patch_embed.proj", (8, 8), (4, 4))
    assert plain.num_prefix_tokens == 1 and plain.prefix_description == "1 class token"
    assert plain.has_class_token
    assert plain.blocks == ("blocks.0", "blocks.1")
    assert plain.attention == ("blocks.0.attn", "blocks.1.attn")
    assert plain.block_norms == ("blocks.0.norm1", "blocks.1.norm1")
    assert plain.global_attention and not plain.channels_last and plain.grids == ((4, 4),)
    assert "1 class token dropped" in plain.describe() and "4×4 patch grid" in plain.describe()

    registers = layout_of(vit(reg_tokens=4))
    assert registers.num_prefix_tokens == 5
    assert registers.prefix_description == "1 class + 4 register tokens"

    distilled = layout_of(
        timm.create_model(
            "deit_tiny_distilled_patch16_224",
            num_classes=3,
            img_size=32,
            patch_size=8,
            depth=1,
            embed_dim=32,
            num_heads=2,
        ).eval()
    )
    assert distilled.num_prefix_tokens == 2
    assert distilled.prefix_description == "1 class + 1 distillation tokens"

    swin = layout_of(small_timm("swin_tiny_patch4_window7_224"))
    assert swin.channels_last and not swin.global_attention
    assert swin.grid == (8, 8) and swin.grids == ((8, 8), (4, 4)) and swin.num_prefix_tokens == 0
    assert swin.blocks == ("layers.0.blocks.0", "layers.1.blocks.0")

    hf = layout_of(hf_vit())
    assert hf.patch_conv == "model.vit.embeddings.patch_embeddings.projection"
    assert hf.num_prefix_tokens == 1 and hf.grid == (4, 4) and hf.global_attention
    assert hf.model_type == "ViTForImageClassification"
    assert len(hf.blocks) == 2 and hf.block_norms[-1] == f"{hf.blocks[-1]}.layernorm_before"


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "test_efficientnet"])
def test_cnns_are_not_vision_transformers(name: str) -> None:
    # ConvNeXt's stem is a patchify conv (4×4, stride 4), but there is no attention.
    assert describe_vit(small_timm(name), (32, 32)) is None


# --------------------------------------------------------------------------- tokens as maps


def hand_grid(tokens: torch.Tensor, prefix: int, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    out = torch.empty(b, d, h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = tokens[:, prefix + i * w + j, :]
    return out


def test_tokens_to_grid_matches_index_arithmetic() -> None:
    tokens = torch.randn(2, 2 + 3 * 5, 7)
    assert torch.equal(tokens_to_grid(tokens, 2, (3, 5)), hand_grid(tokens, 2, 3, 5))
    with pytest.raises(ValueError, match="do not fill a 4×4 grid"):
        tokens_to_grid(tokens, 2, (4, 4))


def test_token_outputs_as_maps() -> None:
    model = vit()
    layout = layout_of(model)
    x = images(2)
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, m in model.named_modules()
        if n
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    block = outputs["blocks.1"]
    assert block.shape == (2, 17, 32)
    mapped = token_output_to_map("blocks.1", block, layout, batch=2)
    assert mapped is not None and torch.equal(mapped, hand_grid(block, 1, 4, 4))
    conv = outputs["patch_embed.proj"]
    assert token_output_to_map("patch_embed.proj", conv, layout, batch=2) is conv
    # patch_embed's own output is the sequence before the class token is added.
    seq = outputs["patch_embed"]
    mapped_seq = token_output_to_map("patch_embed", seq, layout, batch=2)
    assert mapped_seq is not None and torch.equal(mapped_seq, hand_grid(seq, 0, 4, 4))
    # Pooled vectors and logits are not maps.
    assert token_output_to_map("head", outputs["head"], layout, batch=2) is None


def test_swin_maps_and_windows() -> None:
    model = small_timm("swin_tiny_patch4_window7_224")
    layout = layout_of(model)
    outputs: dict[str, torch.Tensor] = {}
    names = ["layers.0", "layers.1.blocks.0.attn", "layers.1.blocks.0.mlp"]
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: outputs.__setitem__(n, out)
        )
        for n in names
    ]
    with torch.no_grad():
        model(images(2))
    for h in handles:
        h.remove()
    stage = outputs["layers.0"]  # B×h×w×C
    assert stage.shape == (2, 8, 8, 16)
    mapped = token_output_to_map("layers.0", stage, layout, batch=2)
    assert mapped is not None
    for i in range(8):
        for j in range(8):
            assert torch.equal(mapped[:, :, i, j], stage[:, i, j, :])
    # Window attention runs on images × windows (2 × 4 windows of 2×2 tokens): not a map.
    assert outputs["layers.1.blocks.0.attn"].shape[0] == 8
    assert (
        token_output_to_map(
            "layers.1.blocks.0.attn", outputs["layers.1.blocks.0.attn"], layout, batch=2
        )
        is None
    )
    # The MLP runs on the flattened 4×4 stage sequence.
    mlp = outputs["layers.1.blocks.0.mlp"]
    mapped_mlp = token_output_to_map("layers.1.blocks.0.mlp", mlp, layout, batch=2)
    assert mapped_mlp is not None and torch.equal(mapped_mlp, hand_grid(mlp, 0, 4, 4))


def test_token_cell_field_is_the_tokens_patch() -> None:
    layout = layout_of(small_timm("swin_tiny_patch4_window7_224"))
    field = token_cell_field("layers.1", layout, (4, 4))
    assert field.box(0, 0) == (0, 0, 8, 8)
    assert field.box(2, 3) == (16, 24, 24, 32)
    assert token_cell_field("layers.0", layout, (8, 8)).box(7, 1) == (28, 4, 32, 8)


# --------------------------------------------------------------------------- Grad-CAM


def hand_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    layer: str,
    prefix: int,
    h: int,
    w: int,
) -> torch.Tensor:
    """Grad-CAM written out: capture the tokens, differentiate, place token (i, j) by index."""
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store.append(out[0] if isinstance(out, tuple) else out)

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            score = sum(logits[i, int(t)] for i, t in enumerate(targets))
            (grad,) = torch.autograd.grad(score, store[-1])
    finally:
        handle.remove()
    act = store[-1].detach()
    cams = torch.zeros(x.shape[0], h, w)
    for b in range(x.shape[0]):
        a_grid = hand_grid(act[b : b + 1], prefix, h, w)[0]
        g_grid = hand_grid(grad[b : b + 1], prefix, h, w)[0]
        weights = [float(g_grid[c].mean()) for c in range(a_grid.shape[0])]
        for i in range(h):
            for j in range(w):
                cams[b, i, j] = max(
                    0.0, sum(weights[c] * float(a_grid[c, i, j]) for c in range(len(weights)))
                )
    return cams


@pytest.mark.parametrize("family", ["timm", "timm_registers", "hf"])
def test_vit_grad_cam_equals_the_hand_written_reshape(family: str) -> None:
    model = {"timm": vit, "timm_registers": lambda: vit(reg_tokens=2), "hf": hf_vit}[family]()
    layout = layout_of(model)
    layer = default_vit_gradcam_layer(layout)
    x, targets = images(3), torch.tensor([0, 2, 1])
    cams = vit_grad_cam(model, x, targets, layer, layout, batch_size=2)
    expected = hand_grad_cam(model, x, targets, layer, layout.num_prefix_tokens, *layout.grid)
    assert cams.shape == (3, 4, 4)
    assert cams.abs().sum() > 0
    torch.testing.assert_close(cams, expected, rtol=1e-4, atol=1e-6)
    assert hook_count(model) == 0


def test_last_block_output_of_a_class_token_vit_has_no_patch_gradient() -> None:
    # Why the default layer is the last block's pre-attention norm: after the last block only
    # the class token reaches the head, so Grad-CAM on that block's output is all zeros.
    model = vit()
    layout = layout_of(model)
    x, targets = images(2), torch.tensor([0, 1])
    assert torch.count_nonzero(vit_grad_cam(model, x, targets, "blocks.1", layout)) == 0
    assert default_vit_gradcam_layer(layout) == "blocks.1.norm1"
    assert torch.count_nonzero(vit_grad_cam(model, x, targets, "blocks.1.norm1", layout)) > 0


def test_swin_grad_cam_on_channels_last_maps() -> None:
    model = small_timm("swin_tiny_patch4_window7_224")
    layout = layout_of(model)
    layer = default_vit_gradcam_layer(layout)
    assert layer == "layers.1.blocks.0.norm1"
    x, targets = images(2), torch.tensor([1, 3])
    cams = vit_grad_cam(model, x, targets, layer, layout)
    # Reference: the B×h×w×C norm output read cell by cell.
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: store.append(o))
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits[0, 1] + logits[1, 3], store[-1])
    handle.remove()
    act = store[-1].detach()
    weights = grad.mean(dim=(1, 2))  # per image and channel, over the 4×4 grid
    expected = torch.einsum("bc,bhwc->bhw", weights, act).clamp(min=0)
    torch.testing.assert_close(cams, expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- attention rollout


def reference_rollout(attentions: list[np.ndarray], prefix: int, h: int, w: int) -> np.ndarray:
    """Abnar & Zuidema written as the paper does: 0.5·A + 0.5·I per layer (A head-averaged,
    rows summing to 1), then the product A_L · … · A_1, class row over the patch tokens."""
    out = []
    for b in range(attentions[0].shape[0]):
        mats = []
        for att in attentions:
            a = att[b].mean(axis=0)
            mats.append(0.5 * a + 0.5 * np.eye(a.shape[0]))
        joint = reduce(np.matmul, reversed(mats))
        out.append(joint[0, prefix:].reshape(h, w))
    return np.stack(out)


def timm_attention_probabilities(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """softmax(q·kᵀ/√d) from each block's qkv weights and its norm1 output."""
    inputs: list[torch.Tensor] = []
    handles = [
        blk.norm1.register_forward_hook(lambda _m, _i, o: inputs.append(o)) for blk in model.blocks
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    probs = []
    for blk, t in zip(model.blocks, inputs, strict=True):
        attn = blk.attn
        b, n, _ = t.shape
        qkv = (t @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, attn.num_heads, -1)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        probs.append(
            torch.softmax(q @ k.transpose(-2, -1) * attn.head_dim**-0.5, dim=-1).detach().numpy()
        )
    return probs


def hf_attention_probabilities(model: HFClassifier, x: torch.Tensor) -> list[np.ndarray]:
    """The same for a transformers ViT, from layernorm_before and the query/key projections."""
    vit_model = model.model.vit
    layers = getattr(vit_model, "layers", None) or vit_model.encoder.layer
    inputs: list[torch.Tensor] = []
    handles = [
        layer.layernorm_before.register_forward_hook(lambda _m, _i, o: inputs.append(o))
        for layer in layers
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    heads = model.model.config.num_attention_heads
    probs = []
    for layer, t in zip(layers, inputs, strict=True):
        att = layer.attention
        q_lin = getattr(att, "q_proj", None) or att.attention.query
        k_lin = getattr(att, "k_proj", None) or att.attention.key
        b, n, d = t.shape
        q = q_lin(t).reshape(b, n, heads, d // heads).transpose(1, 2)
        k = k_lin(t).reshape(b, n, heads, d // heads).transpose(1, 2)
        probs.append(
            torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, dim=-1).detach().numpy()
        )
    return probs


def test_timm_rollout_equals_the_direct_matrix_product() -> None:
    model = vit()
    layout = layout_of(model)
    fused_before = [blk.attn.fused_attn for blk in model.blocks]
    x = images(3)
    result = attention_rollout(model, x, layout, batch_size=2)
    assert isinstance(result, torch.Tensor) and result.shape == (3, 4, 4)
    expected = reference_rollout(timm_attention_probabilities(model, x), 1, 4, 4)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-6)
    # The fused-attention switch and the hooks are put back.
    assert [blk.attn.fused_attn for blk in model.blocks] == fused_before
    assert hook_count(model) == 0


def test_timm_rollout_with_register_tokens_reads_the_class_row_over_patches() -> None:
    model = vit(reg_tokens=3)
    layout = layout_of(model)
    x = images(2)
    result = attention_rollout(model, x, layout)
    assert isinstance(result, torch.Tensor)
    expected = reference_rollout(timm_attention_probabilities(model, x), 4, 4, 4)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_hf_rollout_equals_the_direct_matrix_product() -> None:
    model = hf_vit()
    layout = layout_of(model)
    before = model.model.config._attn_implementation
    x = images(2)
    result = attention_rollout(model, x, layout)
    assert isinstance(result, torch.Tensor)
    expected = reference_rollout(hf_attention_probabilities(model, x), 1, 4, 4)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert model.model.config._attn_implementation == before


class MHABlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.attn(y, y, y, need_weights=False)[0]


class TorchViT(nn.Module):
    """A ViT on torch's nn.MultiheadAttention: fused, with no attention probabilities to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.block = MHABlock(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return self.head(self.block(t)[:, 0])


class ScoresAttention(nn.Module):
    """Has timm's switch and attn_drop, but passes the raw scores (not probabilities) through it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fused_attn = True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = self.attn_drop((q @ k.transpose(-2, -1))[:, None])[:, 0]
        return scores.softmax(dim=-1) @ v


class ScoresBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = ScoresAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def test_rollout_refuses_captured_tensors_that_are_not_probabilities() -> None:
    model = TorchViT()
    model.block = ScoresBlock(16)  # type: ignore[assignment]
    model.eval()
    layout = layout_of(model)
    result = attention_rollout(model, images(1), layout)
    assert isinstance(result, Unavailable) and "not a softmax" in result.reason
    assert model.block.attn.fused_attn is True


def test_rollout_unavailable_with_the_reason() -> None:
    swin = small_timm("swin_tiny_patch4_window7_224")
    result = attention_rollout(swin, images(1), layout_of(swin))
    assert isinstance(result, Unavailable) and "local windows" in result.reason
    assert str(result).startswith("unavailable: ")

    pooled = vit(class_token=False, global_pool="avg")
    result = attention_rollout(pooled, images(1), layout_of(pooled))
    assert isinstance(result, Unavailable) and "no class token" in result.reason

    # Register tokens are prefix tokens too, but their row is not what a class token's is.
    registers_only = vit(class_token=False, reg_tokens=2, global_pool="avg")
    layout = layout_of(registers_only)
    assert layout.num_prefix_tokens == 2 and not layout.has_class_token
    result = attention_rollout(registers_only, images(1), layout)
    assert isinstance(result, Unavailable) and "no class token (2 register tokens" in result.reason

    torch_vit = TorchViT().eval()
    layout = layout_of(torch_vit)
    assert layout.num_prefix_tokens == 1 and layout.blocks == ("block",)
    result = attention_rollout(torch_vit, images(1), layout)
    assert isinstance(result, Unavailable)
    assert "MultiheadAttention" in result.reason and "not reachable" in result.reason


def test_guided_backprop_is_not_applicable_to_gelu_transformers() -> None:
    reason = guided_backprop_unavailable(vit())
    assert reason is not None and "GELU" in reason and "VisionTransformer" in reason
    hf_reason = guided_backprop_unavailable(hf_vit())
    assert hf_reason is not None and "ViTForImageClassification" in hf_reason
    assert guided_backprop_unavailable(small_timm("resnet18")) is None
