"""Small timm and Hugging Face models for tests, built offline from random initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# timm architectures shrunk through their constructor arguments (what a timm hub folder records
# as model_args), so that they run at 32 px in milliseconds. test_efficientnet is timm's own
# tiny EfficientNet (efficientnet_b0 cannot be narrowed through its arguments).
TIMM_SMALL: dict[str, dict[str, Any]] = {
    "resnet18": {"layers": (1, 1, 1, 1), "stem_width": 8, "channels": (8, 16, 32, 64)},
    "convnext_atto": {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)},
    "test_efficientnet": {},
    "vit_tiny_patch16_224": {
        "img_size": 32,
        "patch_size": 8,
        "depth": 2,
        "embed_dim": 32,
        "num_heads": 2,
    },
    "swin_tiny_patch4_window7_224": {
        "img_size": 32,
        "window_size": 2,
        "embed_dim": 16,
        "depths": (1, 1),
        "num_heads": (2, 2),
    },
}


def small_timm(name: str, num_classes: int = 4, seed: int = 0, **extra: Any) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    kwargs = {**TIMM_SMALL[name], **extra}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return _randomise_norms(model).eval()


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine terms (fresh ones are 0/1 and hide key mix-ups)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, nn.BatchNorm2d | nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
    return model


def save_timm_hub_folder(
    model: nn.Module, folder: Path, label_names: list[str] | None = None, safetensors: bool = True
) -> Path:
    """A timm hub folder as timm's own ``save_for_hf`` writes it (config.json + weights)."""
    from timm.models import save_for_hf

    config = {"label_names": label_names} if label_names else None
    save_for_hf(model, str(folder), model_config=config, safe_serialization=safetensors)
    return folder


def hf_vit_config(num_labels: int = 3, id2label: dict[int, str] | None = None) -> Any:
    from transformers import ViTConfig

    labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def hf_resnet_config(num_labels: int = 4, id2label: dict[int, str] | None = None) -> Any:
    from transformers import ResNetConfig

    labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def hf_model(config: Any, seed: int = 0) -> nn.Module:
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)
    return _randomise_norms(AutoModelForImageClassification.from_config(config)).eval()


def save_hf_folder(model: nn.Module, folder: Path, processor: Any | None = None) -> Path:
    """A ``save_pretrained`` folder (config.json, model.safetensors, preprocessor_config.json)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(folder)  # type: ignore[operator]
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def tiny_hf_vit_folder(folder: Path) -> Path:
    """The HF ViT the sample config and tests use: 3 named classes, a ViT image processor."""
    from transformers import ViTImageProcessor

    model = hf_model(hf_vit_config(3, {0: "cat", 1: "dog", 2: "fox"}))
    processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3]
    )
    return save_hf_folder(model, folder, processor)
