"""Building models: torchvision names, user factories, layer lookup, logits from any output."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_ARCH, TINY_GRAY_ARCH
from torch import nn

from reportgen.config import ModelConfig
from reportgen.errors import CheckpointError, ConfigError, LayerError
from reportgen.loading.models import (
    build_architecture,
    extract_logits,
    first_weight_4d,
    infer_num_classes,
    load_model,
)
from reportgen.loading.types import find_layer


def test_torchvision_name_with_suggestion() -> None:
    model = build_architecture("resnet18", 5)
    assert model.fc.out_features == 5
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet181' \(did you mean"):
        build_architecture("resnet181", None)


def test_factory_file_and_errors(tmp_path: Path) -> None:
    model = build_architecture(TINY_ARCH, 6)
    assert model.fc2.out_features == 6  # type: ignore[union-attr]
    factories = tmp_path / "factories.py"
    factories.write_text(
        "from torch import nn\n"
        "def fixed():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))\n"
        "def broken(num_classes=3):\n    raise ValueError('bad\\nwidth')\n"
        "def not_a_model(num_classes=3):\n    return 42\n"
    )
    # A factory without num_classes is called without it.
    assert isinstance(build_architecture(f"{factories}:fixed", 9), nn.Sequential)
    with pytest.raises(ConfigError, match=r"broken\(num_classes=3\) raised ValueError: bad width"):
        build_architecture(f"{factories}:broken", 3)
    with pytest.raises(ConfigError, match=r"returned int, not an nn\.Module"):
        build_architecture(f"{factories}:not_a_model", None)
    with pytest.raises(ConfigError, match=r"has no callable 'fixd' \(did you mean 'fixed'"):
        build_architecture(f"{factories}:fixd", None)
    with pytest.raises(ConfigError, match="not found"):
        build_architecture(f"{tmp_path / 'nope.py'}:f", None)
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_pkg\.mod'"):
        build_architecture("no_such_pkg.mod:f", None)


def test_infer_num_classes_under_any_prefix() -> None:
    state = {"module._orig_mod.fc2.weight": torch.zeros(11, 12)}
    assert infer_num_classes(TINY_ARCH, state) == 11
    assert infer_num_classes("resnet18", {"model.fc.weight": torch.zeros(7, 512)}) == 7
    assert infer_num_classes("resnet18", {"conv1.weight": torch.zeros(64, 3, 7, 7)}) is None


def test_model_without_weights_is_in_eval_mode_and_frozen() -> None:
    loaded = load_model(ModelConfig(arch=TINY_GRAY_ARCH))
    assert loaded.in_channels == 1 and loaded.num_classes == 3
    assert loaded.sha256 is None and loaded.supports_hooks
    assert not loaded.module.training
    assert all(not p.requires_grad for p in loaded.module.parameters())


def test_unsupported_input_channels(tmp_path: Path) -> None:
    factories = tmp_path / "four.py"
    factories.write_text(
        "from torch import nn\ndef four():\n    return nn.Sequential(nn.Conv2d(4, 2, 3))\n"
    )
    with pytest.raises(CheckpointError, match="takes 4 input channels"):
        load_model(ModelConfig(arch=f"{factories}:four"))


def test_find_layer_suggests_real_names() -> None:
    model = build_architecture(TINY_ARCH, 3)
    assert find_layer(model, "conv2") is model.conv2  # type: ignore[union-attr]
    with pytest.raises(LayerError) as err:
        find_layer(model, "conv3")
    assert "layer 'conv3' is not in the model (did you mean 'conv1', 'conv2'" in str(err.value)
    with pytest.raises(LayerError):
        find_layer(model, "")  # the root module is not a layer name


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_first_weight_4d_works_without_module_types() -> None:
    scripted = torch.jit.script(build_architecture(TINY_ARCH, 3))
    name, weight = first_weight_4d(scripted) or ("", torch.empty(0))
    assert name == "conv1.weight" and weight.shape == (8, 3, 5, 5)


@pytest.mark.parametrize(
    "output",
    [
        torch.ones(2, 3),
        (torch.ones(2, 3), torch.zeros(2, 5)),
        [torch.ones(2, 3)],
        {"logits": torch.ones(2, 3), "aux": torch.zeros(2)},
        OrderedDict(out=torch.ones(2, 3)),
        SimpleNamespace(logits=torch.ones(2, 3), hidden_states=None),
    ],
)
def test_extract_logits(output: object) -> None:
    assert torch.equal(extract_logits(output), torch.ones(2, 3))


def test_extract_logits_refuses_unknown_outputs() -> None:
    with pytest.raises(CheckpointError, match="cannot find logits"):
        extract_logits("text")
