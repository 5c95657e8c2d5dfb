"""timm and Hugging Face models: loading, metadata (class names, preprocessing), safety, extras."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from hub_models import (
    TIMM_SMALL,
    hf_model,
    hf_resnet_config,
    hf_vit_config,
    save_hf_folder,
    save_timm_hub_folder,
    small_timm,
    tiny_hf_vit_folder,
)
from safetensors.torch import save_file
from torch import nn

from reportgen.config import ModelConfig
from reportgen.errors import CheckpointError, ConfigError
from reportgen.loading.hub import HFClassifier, load_timm
from reportgen.loading.metadata import (
    hf_metadata,
    hf_preprocessing,
    imagenet_class_names,
    timm_preprocessing,
)
from reportgen.loading.models import build_architecture, extract_logits, load_model
from reportgen.loading.types import HubFiles, Sourced


def batch(size: int = 32, n: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.randn((n, channels, size, size), generator=torch.Generator().manual_seed(5))


def save_layout(state: dict[str, torch.Tensor], path: Path, layout: str) -> Path:
    """``state`` written the way a timm training run or export would write it."""
    if layout == "safetensors":
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors"))
        )
        return path.with_suffix(".safetensors")
    nested: dict[str, Any]
    if layout == "plain":
        nested = dict(state)
    elif layout == "state_dict_ema":
        # timm's train.py: the raw model, its EMA copy, the optimizer step and the args.
        nested = {
            "epoch": 7,
            "arch": "x",
            "state_dict_ema": state,
            "args": argparse.Namespace(model="x", lr=0.1),
            "metric": 0.5,
        }
    elif layout == "model_ema":
        nested = {"model_ema": state, "epoch": 1}
    elif layout == "state_dict_ddp":
        nested = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    elif layout == "model":
        nested = {"model": state, "optimizer": {"lr": 0.1}}
    else:
        raise ValueError(layout)
    # timm's train.py names its checkpoints checkpoint-N.pth.tar (a torch.save zip all the same).
    path = path.with_suffix(".pth.tar" if layout == "state_dict_ema" else ".pth")
    torch.save(nested, path)
    return path


LAYOUTS = ["safetensors", "plain", "state_dict_ema", "model_ema", "state_dict_ddp", "model"]
CASES = [("vit_tiny_patch16_224", layout) for layout in LAYOUTS] + [
    ("resnet18", "state_dict_ema"),
    ("convnext_atto", "safetensors"),
    ("test_efficientnet", "state_dict_ddp"),
    ("swin_tiny_patch4_window7_224", "model_ema"),
]


@pytest.mark.parametrize(("name", "layout"), CASES)
def test_timm_checkpoint_layouts_load_back_equal(tmp_path: Path, name: str, layout: str) -> None:
    model = small_timm(name, num_classes=5)
    x = batch()
    with torch.no_grad():
        expected = model(x)
    path = save_layout(model.state_dict(), tmp_path / "weights", layout)
    loaded = load_timm(name, path, model_args=TIMM_SMALL[name])
    assert loaded.num_classes == 5  # read from the classifier rows in the file
    assert loaded.arch == f"timm:{name}" and loaded.family == "timm"
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(x), expected)


def test_timm_name_through_load_model_reads_classes_channels_and_preprocessing(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3, in_chans=1).eval()
    path = save_layout(model.state_dict(), tmp_path / "ckpt", "state_dict_ema")
    loaded = load_model(ModelConfig(arch="timm:test_vit", weights=str(path)))
    assert (loaded.family, loaded.num_classes, loaded.in_channels) == ("timm", 3, 1)
    assert loaded.source == "ckpt.pth.tar" and loaded.sha256 is not None
    x = batch(160, 1, channels=1)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    # Preprocessing as timm's own eval transform for this model does it.
    from timm.data import create_transform, resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    ops = create_transform(**data_cfg).transforms
    resize = next(op for op in ops if type(op).__name__ == "Resize")
    crop = next(op for op in ops if type(op).__name__ == "CenterCrop")
    meta = loaded.metadata
    assert meta.resize is not None and meta.crop is not None
    assert meta.resize.value == resize.size and list(crop.size) == [meta.crop.value] * 2
    assert meta.interpolation is not None and meta.interpolation.value == "bicubic"
    assert meta.mean is not None and meta.mean.value == list(data_cfg["mean"])
    assert meta.std is not None and meta.std.value == list(data_cfg["std"])
    assert "timm's registry entry for test_vit" in meta.resize.source
    assert "crop_pct 0.95" in meta.resize.source
    assert meta.class_names is None  # 3 outputs: no names in the metadata


def test_timm_name_errors() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown timm model 'vit_tiny_patch16_22'.*did you mean 'vit_tiny_patch16_224'",
    ):
        build_architecture("timm:vit_tiny_patch16_22", 3)
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        load_model(ModelConfig(arch="timm:hf-hub:timm/vit_tiny_patch16_224"))
    with pytest.raises(ConfigError, match="no pretrained tag"):
        build_architecture("timm:vit_tiny_patch16_224.nope", 3)


def test_timm_weights_of_another_architecture_fail_clearly(tmp_path: Path) -> None:
    path = save_layout(small_timm("convnext_atto").state_dict(), tmp_path / "w", "plain")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_timm("vit_tiny_patch16_224", path, model_args=TIMM_SMALL["vit_tiny_patch16_224"])


def test_timm_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_timm("resnet18").state_dict(), "fn": print}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_timm("resnet18", path, model_args=TIMM_SMALL["resnet18"])


@pytest.mark.parametrize("safetensors", [True, False])
def test_timm_hub_folder(tmp_path: Path, safetensors: bool) -> None:
    model = small_timm("vit_tiny_patch16_224", num_classes=4)
    folder = save_timm_hub_folder(
        model, tmp_path / "my-vit", ["ant", "bee", "cat", "dog"], safetensors=safetensors
    )
    loaded = load_model(ModelConfig(arch=str(folder)))
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    weights = "model.safetensors" if safetensors else "pytorch_model.bin"
    assert loaded.source == f"my-vit/{weights}"
    assert (loaded.arch, loaded.family, loaded.num_classes) == (
        "timm:vit_tiny_patch16_224",
        "timm",
        4,
    )
    meta = loaded.metadata
    assert meta.class_names == ["ant", "bee", "cat", "dog"]
    assert meta.class_names_source == "timm label_names (my-vit/config.json)"
    # The folder's pretrained_cfg (written by timm for this 32-px model) and timm's arithmetic.
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 0.9
    assert meta.preprocess_values() == {
        "resize": math.floor(32 / 0.9),
        "crop": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }
    assert meta.preprocess_sources()["mean"] == "my-vit/config.json pretrained_cfg mean"


def test_legacy_flat_timm_hub_config(tmp_path: Path) -> None:
    # Early timm exports wrote one flat object: the pretrained_cfg keys and "labels" at the top.
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = {
        "architecture": "test_resnet",
        "num_classes": 3,
        "num_features": 256,
        "input_size": [3, 64, 64],
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "labels": ["x", "y", "z"],
    }
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(ModelConfig(arch=str(folder)))
    x = batch(64)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    meta = loaded.metadata
    assert meta.class_names == ["x", "y", "z"]
    assert meta.preprocess_values() == {
        "resize": 73,  # floor(64 / 0.875)
        "crop": 64,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "interpolation": "bilinear",
    }
    assert meta.mean is not None and meta.mean.source == "legacy/config.json mean"


def test_timm_hub_folder_refuses_loading_arguments(tmp_path: Path) -> None:
    folder = save_timm_hub_folder(small_timm("resnet18"), tmp_path / "r")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["pretrained"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model_args pretrained would load or download"):
        load_model(ModelConfig(arch=str(folder)))


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        load_model(ModelConfig(arch=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=r"model folder .*missing not found"):
        load_model(ModelConfig(arch=str(tmp_path / "missing")))
    folder = save_timm_hub_folder(small_timm("resnet18"), tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights beside config\.json"):
        load_model(ModelConfig(arch=str(folder)))


# --------------------------------------------------------------------------- Hugging Face


def test_hf_resnet_folder_with_names_and_convnext_preprocessing(tmp_path: Path) -> None:
    from transformers import ConvNextImageProcessor

    names = {0: "apple", 1: "pear", 2: "plum", 3: "fig"}
    model = hf_model(hf_resnet_config(4, names))
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 64},
        crop_pct=0.875,
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.3, 0.2, 0.1],
    )
    folder = save_hf_folder(model, tmp_path / "fruit-resnet", processor)
    loaded = load_model(ModelConfig(arch=str(folder)))
    assert isinstance(loaded.module, HFClassifier)
    assert (loaded.family, loaded.arch, loaded.num_classes) == (
        "hf",
        "ResNetForImageClassification",
        4,
    )
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x).logits)
    meta = loaded.metadata
    assert meta.class_names == ["apple", "pear", "plum", "fig"]
    assert meta.class_names_source == "id2label (fruit-resnet/config.json)"
    # ConvNextImageProcessor below 384 px: shorter side to int(64 / 0.875), centre crop 64.
    assert meta.preprocess_values() == {
        "resize": 73,
        "crop": 64,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.3, 0.2, 0.1],
        "interpolation": "bicubic",
    }
    assert meta.resize is not None
    assert (
        meta.resize.source
        == "fruit-resnet/preprocessor_config.json size.shortest_edge / crop_pct 0.875"
    )
    # The processor itself produces a 64×64 crop from a non-square image.
    from PIL import Image

    pixels = processor(Image.new("RGB", (120, 90)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (64, 64)


def test_hf_vit_folder_logits_gradients_and_hooks(tmp_path: Path) -> None:
    folder = tiny_hf_vit_folder(tmp_path / "pets-vit")
    loaded = load_model(ModelConfig(arch=str(folder)))
    meta = loaded.metadata
    assert meta.class_names == ["cat", "dog", "fox"]
    assert meta.mean is not None and meta.mean.value == [0.4, 0.45, 0.5]
    assert meta.std is not None and meta.std.value == [0.2, 0.25, 0.3]
    assert meta.resize is not None and meta.resize.value == 32
    assert meta.crop is not None and meta.crop.value == 32
    assert meta.interpolation is not None and meta.interpolation.value == "bilinear"
    assert any("warps images to 32×32" in n for n in meta.notes)
    assert loaded.in_channels == 3
    # forward(x) is a tensor, so gradients reach the input and hooks see the layers.
    x = batch().requires_grad_(True)
    seen: list[torch.Tensor] = []
    layer = loaded.layer("model.vit.embeddings.patch_embeddings.projection")
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        out = loaded.module(x)
    finally:
        handle.remove()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    assert grad.abs().sum() > 0
    assert seen and seen[0].shape == (2, 32, 4, 4)


def test_hf_placeholder_labels_are_not_class_names(tmp_path: Path) -> None:
    folder = save_hf_folder(hf_model(hf_vit_config(3)), tmp_path / "anon")
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    loaded = load_model(ModelConfig(arch=str(folder)))
    assert loaded.metadata.class_names is None and loaded.metadata.class_names_source is None
    assert loaded.metadata.preprocess_values() == {}  # no preprocessor_config.json


def _v4_vit_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names transformers 4.x used for ViT (vit.encoder.layer.N.attention.attention.query)."""
    renames = [
        (
            r"^vit\.layers\.(\d+)\.attention\.q_proj",
            r"vit.encoder.layer.\1.attention.attention.query",
        ),
        (
            r"^vit\.layers\.(\d+)\.attention\.k_proj",
            r"vit.encoder.layer.\1.attention.attention.key",
        ),
        (
            r"^vit\.layers\.(\d+)\.attention\.v_proj",
            r"vit.encoder.layer.\1.attention.attention.value",
        ),
        (r"^vit\.layers\.(\d+)\.attention\.o_proj", r"vit.encoder.layer.\1.attention.output.dense"),
        (r"^vit\.layers\.(\d+)\.mlp\.fc1", r"vit.encoder.layer.\1.intermediate.dense"),
        (r"^vit\.layers\.(\d+)\.mlp\.fc2", r"vit.encoder.layer.\1.output.dense"),
        (r"^vit\.layers\.", r"vit.encoder.layer."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def test_hf_checkpoint_in_the_transformers_4_layout_loads(tmp_path: Path) -> None:
    model = hf_model(hf_vit_config(3))
    folder = save_hf_folder(model, tmp_path / "old")
    (folder / "model.safetensors").unlink()
    torch.save(_v4_vit_keys(model.state_dict()), folder / "pytorch_model.bin")
    loaded = load_model(ModelConfig(arch=str(folder)))
    assert loaded.source == "old/pytorch_model.bin"
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x).logits)


def test_hf_weights_that_do_not_fit(tmp_path: Path) -> None:
    folder = save_hf_folder(hf_model(hf_vit_config(3)), tmp_path / "a")
    other = hf_model(hf_vit_config(5))
    save_file(other.state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weights do not fit ViTForImageClassification"):
        load_model(ModelConfig(arch=str(folder)))
    torch.save({"w": torch.zeros(1), "f": print}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(ModelConfig(arch=str(folder)))


def test_hf_remote_code_and_unknown_types_are_refused(tmp_path: Path) -> None:
    folder = save_hf_folder(hf_model(hf_vit_config(3)), tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="never runs a model's own code"):
        load_model(ModelConfig(arch=str(folder)))
    config.pop("auto_map")
    config["model_type"] = "evil_vit"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'evil_vit' is not built into transformers"):
        load_model(ModelConfig(arch=str(folder)))
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no image-classification model"):
        load_model(ModelConfig(arch=str(folder)))


# --------------------------------------------------------------------------- extras missing


def test_missing_timm_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_timm_hub_folder(small_timm("resnet18"), tmp_path / "t")
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    for arch in ("timm:resnet18", str(folder)):
        with pytest.raises(
            ConfigError, match=r"needs the timm package: pip install reportgen\[timm\]$"
        ):
            load_model(ModelConfig(arch=arch))


def test_missing_transformers_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_hf_folder(hf_model(hf_vit_config(3)), tmp_path / "h")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        ConfigError, match=r"needs the transformers package: pip install reportgen\[hf\]$"
    ):
        load_model(ModelConfig(arch=str(folder)))


# --------------------------------------------------------------------------- building, layers


def test_build_on_the_meta_device_for_list_layers(tmp_path: Path) -> None:
    hf_folder = save_hf_folder(hf_model(hf_vit_config(3)), tmp_path / "h")
    timm_folder = save_timm_hub_folder(small_timm("vit_tiny_patch16_224"), tmp_path / "t")
    with torch.device("meta"):
        by_name = build_architecture("timm:test_vit", 7)
        hf = build_architecture(str(hf_folder), None)
        hub = build_architecture(str(timm_folder), None)
    assert "blocks.0.attn.qkv" in dict(by_name.named_modules())
    assert by_name.get_classifier().out_features == 7  # type: ignore[operator]
    assert "model.vit.embeddings.patch_embeddings.projection" in dict(hf.named_modules())
    assert hub.patch_embed.img_size == (32, 32)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- metadata


def test_imagenet_names_for_a_torchvision_arch_with_1000_outputs() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet tissue"
    loaded = load_model(ModelConfig(arch="resnet18"))
    assert loaded.family == "torchvision"
    assert loaded.metadata.class_names == names
    assert "imagenet" in (loaded.metadata.class_names_source or "")
    small = load_model(ModelConfig(arch="resnet18", num_classes=5))
    assert small.metadata.class_names is None


def test_timm_1000_outputs_default_to_imagenet_names_and_label_descriptions() -> None:
    files = HubFiles(config={"pretrained_cfg": {}}, config_source="c.json")
    from reportgen.loading.metadata import timm_metadata

    assert timm_metadata(files, 1000).class_names == imagenet_class_names()
    files = HubFiles(
        config={
            "label_names": {"0": "n01", "1": "n02"},
            "label_descriptions": {"n01": "tench", "n02": "goldfish"},
        },
        config_source="c.json",
    )
    meta = timm_metadata(files, 2)
    assert meta.class_names == ["n01", "n02"] and meta.class_descriptions == ["tench", "goldfish"]
    # A label list of the wrong length names nothing (it would shift classes).
    assert timm_metadata(HubFiles(config={"label_names": ["a"]}), 2).class_names is None


@pytest.mark.parametrize(
    ("name", "resize", "crop"),
    [
        ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 248, 224),  # crop_pct 0.9
        ("resnet50.a1_in1k", 235, 224),  # crop_pct 0.95
        ("convnext_tiny.fb_in22k_ft_in1k_384", 384, 384),  # crop_pct 1.0
        ("deit_tiny_patch16_224", 248, 224),
    ],
)
def test_timm_preprocessing_matches_timms_own_transform(name: str, resize: int, crop: int) -> None:
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    assert cfg is not None
    pre = timm_preprocessing(cfg.to_dict(), "cfg")
    data_cfg = resolve_data_config(pretrained_cfg=cfg.to_dict())
    ops = create_transform(**data_cfg).transforms
    timm_resize = next(op for op in ops if type(op).__name__ == "Resize").size
    timm_crop = next(op for op in ops if type(op).__name__ == "CenterCrop").size
    assert pre.resize is not None and pre.crop is not None
    assert (pre.resize.value, pre.crop.value) == (resize, crop)
    assert pre.resize.value == (timm_resize if isinstance(timm_resize, int) else timm_resize[0])
    assert [pre.crop.value] * 2 == list(timm_crop)


def test_hf_preprocessing_forms() -> None:
    # BiT/CLIP: shorter side, then crop_size.
    bit = hf_preprocessing(
        {
            "size": {"shortest_edge": 256},
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "resample": 3,
        },
        "p",
    )
    assert bit.resize == Sourced(256, "p size.shortest_edge")
    assert bit.crop == Sourced(224, "p crop_size")
    assert bit.interpolation == Sourced("bicubic", "p resample=3")
    # DeiT: warp to 256×256, crop 224.
    deit = hf_preprocessing(
        {
            "size": {"height": 256, "width": 256},
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
        },
        "p",
    )
    assert deit.resize is not None and deit.crop is not None
    assert (deit.resize.value, deit.crop.value) == (256, 224) and deit.notes
    # ConvNeXt from 384 px up: a warp, no crop.
    big = hf_preprocessing(
        {
            "image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": 384},
            "crop_pct": 0.875,
        },
        "p",
    )
    assert big.resize is not None and big.crop is not None
    assert (big.resize.value, big.crop.value) == (384, 384) and big.notes
    # No normalisation: mean 0, std 1; no resize.
    raw = hf_preprocessing({"do_normalize": False, "do_resize": False, "do_rescale": False}, "p")
    assert raw.mean is not None and raw.std is not None
    assert (raw.mean.value, raw.std.value, raw.resize) == ([0.0], [1.0], None)
    assert any("0–255" in n for n in raw.notes)


def test_hf_metadata_rejects_partial_id2label() -> None:
    files = HubFiles(config={"id2label": {"0": "a", "2": "c"}}, config_source="c")
    assert hf_metadata(files, 3).class_names is None
    files = HubFiles(config={"id2label": {"0": "a", "1": "b", "2": "c"}}, config_source="c")
    assert hf_metadata(files, 3).class_names == ["a", "b", "c"]


def test_extract_logits_of_a_real_transformers_output() -> None:
    model = hf_model(hf_vit_config(3))
    x = batch()
    with torch.no_grad():
        out = model(x)
    assert type(out).__name__ == "ImageClassifierOutput"
    assert torch.equal(extract_logits(out), out.logits)
    wrapped = HFClassifier(model)
    with torch.no_grad():
        assert torch.equal(wrapped(x), out.logits)
    assert isinstance(wrapped, nn.Module)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_std", [0.2, 0.0, 0.3], "preprocess.std (from the model's metadata: "),
        ("image_mean", [0.4, float("nan"), 0.5], "must hold finite numbers"),
        ("image_mean", [0.4, 0.5], "image_mean) has 2 values but the model takes 3"),
        ("size", {"height": 60000, "width": 60000}, "between 1 and 4096 pixels"),
    ],
)
def test_metadata_values_are_validated_like_config_values(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    """std 0, a NaN mean, a 60000-px size or a 2-value mean from preprocessor_config.json used
    to bypass the validator (a 43 GB allocation, or the 2-value mean blamed on
    preprocess.mean): now one line naming the metadata file and key, exit 2, before the pass."""
    from click.testing import CliRunner
    from conftest import write_image_folder

    from reportgen.cli import cli

    folder = tiny_hf_vit_folder(tmp_path / "pets-vit")
    proc = folder / "preprocessor_config.json"
    data = json.loads(proc.read_text())
    data[key] = value
    proc.write_text(json.dumps(data))
    write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2, "fox": 2})
    result = CliRunner().invoke(
        cli,
        ["run", "--model", str(folder), "--data", str(tmp_path / "images"),
         "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet", "--analyses", "filters"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "preprocessor_config.json" in result.output
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("input_size", [[3, 0, 0], [3, -5, 224], [224, 224], "224"])
def test_an_unusable_timm_input_size_is_said_not_dropped(input_size: Any) -> None:
    """input_size [3, 0, 0] was dropped silently (the run then used reportgen's defaults)."""
    pre = timm_preprocessing({"input_size": input_size, "mean": [0.5] * 3}, "cfg.json")
    assert pre.crop is None and pre.resize is None
    assert any(n.startswith(f"cfg.json: input_size {input_size!r} is not") for n in pre.notes), (
        pre.notes
    )
    fine = timm_preprocessing({"input_size": [3, 224, 224]}, "cfg.json")
    assert not fine.notes and fine.crop is not None and fine.crop.value == 224
