"""Checkpoint files: every state-dict layout users have, and refusal of code-carrying files."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, make_config, write_image_folder
from safetensors.torch import save_file
from tiny_models import tiny_net
from torch import nn

from reportgen.api import run_report
from reportgen.cli import cli
from reportgen.config import ModelConfig
from reportgen.errors import CheckpointError
from reportgen.loading.checkpoints import (
    ExportedModule,
    adapt_keys,
    load_state_dict,
    load_trusted_checkpoint,
)
from reportgen.loading.models import load_model


def reference_state(num_classes: int = 3) -> dict[str, torch.Tensor]:
    """A tiny_net state dict with weights different from the factory's seeded init."""
    torch.manual_seed(123)
    model = tiny_net(num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_loaded_equal(path: Path, reference: dict[str, torch.Tensor]) -> None:
    loaded = load_model(ModelConfig(arch=TINY_ARCH, weights=str(path)))
    got = loaded.module.state_dict()
    assert set(got) == set(reference)
    for k, v in reference.items():
        assert torch.equal(got[k], v), k
    assert loaded.num_classes == reference["fc2.weight"].shape[0]
    assert loaded.kind == "state_dict"


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


LAYOUTS: dict[str, Callable[[dict[str, torch.Tensor]], Any]] = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer": {"state": {}, "param_groups": []}},
    "model_state_dict": lambda s: {"model_state_dict": s, "epoch": 7, "loss": 0.1},
    "state_dict_ema": lambda s: {"state_dict_ema": s},
    "ddp_module": lambda s: prefixed(s, "module."),
    "compile_orig_mod": lambda s: prefixed(s, "_orig_mod."),
    "ddp_and_compile": lambda s: {"state_dict": prefixed(s, "module._orig_mod.")},
    "lightning": lambda s: {
        "epoch": 4,
        "global_step": 100,
        "pytorch-lightning_version": "2.4.0",
        # Lightning keys carry the LightningModule's attribute name, plus the module's other
        # state (a loss' class weights) that is not part of the network.
        "state_dict": {**prefixed(s, "model."), "criterion.weight": torch.ones(3)},
        "hyper_parameters": {"lr": 0.01, "arch": "tiny", "betas": [0.9, 0.99]},
        "optimizer_states": [{"state": {}}],
        "lr_schedulers": [],
    },
    "lightning_compiled": lambda s: {"state_dict": prefixed(s, "net._orig_mod.")},
    "timm_namespace_numpy": lambda s: {
        "epoch": 10,
        "arch": "tiny",
        "state_dict": s,
        "state_dict_ema": {k: v + 1 for k, v in s.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "args": argparse.Namespace(lr=0.1, model="tiny", epochs=10, smoothing=0.1),
        "metric": np.float64(0.875),
        "best_top1": np.float32(0.5),
        "step": np.int64(12),
    },
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_state_dict_layout_loads_the_original_weights(tmp_path: Path, layout: str) -> None:
    ref = reference_state()
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](ref), path)
    assert_loaded_equal(path, ref)


def test_timm_checkpoint_metadata_comes_back(tmp_path: Path) -> None:
    ref = reference_state()
    path = tmp_path / "timm.pth.tar"
    torch.save(LAYOUTS["timm_namespace_numpy"](ref), path)
    state, meta = load_state_dict(path)
    assert isinstance(meta["args"], argparse.Namespace) and meta["args"].lr == 0.1
    assert meta["metric"] == pytest.approx(0.875)
    # "state_dict" wins over the EMA copy (documented order).
    assert torch.equal(state["conv1.weight"], ref["conv1.weight"])


def test_safetensors(tmp_path: Path) -> None:
    ref = reference_state()
    path = tmp_path / "tiny.safetensors"
    save_file(prefixed(ref, "module."), str(path))
    assert_loaded_equal(path, ref)


def test_corrupt_safetensors_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a readable \.safetensors"):
        load_state_dict(path)


def test_num_classes_inferred_for_a_custom_factory(tmp_path: Path) -> None:
    ref = reference_state(num_classes=7)
    path = tmp_path / "seven.pt"
    torch.save({"state_dict": prefixed(ref, "module.")}, path)
    assert_loaded_equal(path, ref)


def test_num_classes_inferred_for_torchvision_resnet18(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save({"model": prefixed(model.state_dict(), "module.")}, path)
    loaded = load_model(ModelConfig(arch="resnet18", weights=str(path)))
    assert loaded.num_classes == 7
    assert loaded.module.fc.out_features == 7
    assert torch.equal(loaded.module.fc.weight, model.fc.weight)
    assert torch.equal(loaded.module.layer4[1].bn2.running_var, model.layer4[1].bn2.running_var)
    assert not loaded.module.training


def test_wrong_architecture_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    ref = reference_state()
    ref["extra.weight"] = torch.zeros(2)
    del ref["conv2.bias"]
    ref["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "wrong.pt"
    torch.save(ref, path)
    with pytest.raises(CheckpointError) as err:
        load_model(ModelConfig(arch=TINY_ARCH, weights=str(path)))
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys: conv2.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "conv1.weight: file (8, 3, 3, 3) vs model (8, 3, 5, 5)" in msg
    assert "model.arch" in msg


def test_torchvision_weights_for_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(reference_state(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(ModelConfig(arch="resnet18", weights=str(path)))
    msg = str(err.value)
    assert "missing keys: bn1.weight, bn1.bias" in msg and "(101)" in msg
    assert "unexpected keys: conv1.bias, conv2.weight" in msg
    assert "conv1.weight: file (8, 3, 5, 5) vs model (64, 3, 7, 7)" in msg


def test_adapt_keys_keeps_unrelated_state_visible() -> None:
    # No prefix fits better than none: the state comes back as is, so errors list every key.
    state = {"a.weight": torch.zeros(1), "b.weight": torch.zeros(1)}
    assert adapt_keys(state, {"conv.weight"}) == state


def test_not_a_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(
        CheckpointError, match=r"notes\.pt is a text file \(it starts with 'hello'\)"
    ):
        load_state_dict(path)
    path.write_bytes(b"\x07\x00\x01garbage")  # binary, but nothing torch can read
    with pytest.raises(
        CheckpointError,
        match=r"notes\.pt: not a PyTorch weights file \(it starts with the bytes 07 00 01 67\)",
    ):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")


def test_a_dict_without_tensors_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match=r"no state dict found.*epoch, config"):
        load_state_dict(path)


# --------------------------------------------------------------------------- code-carrying files


class _Malicious:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _MaliciousOpen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _write_malicious(kind: str, path: Path, marker: Path) -> None:
    if kind == "torch_save_system":
        torch.save({"state_dict": reference_state(), "x": _Malicious(marker)}, path)
    elif kind == "torch_save_open":
        torch.save({"state_dict": reference_state(), "x": _MaliciousOpen(marker)}, path)
    elif kind == "raw_pickle":
        with path.open("wb") as f:
            pickle.dump({"state_dict": _Malicious(marker)}, f, protocol=2)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["torch_save_system", "torch_save_open", "raw_pickle"])
def test_malicious_pickle_as_weights_runs_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _write_malicious(kind, path, marker)
    write_image_folder(tmp_path / "images", {"a": 2})
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            TINY_ARCH,
            "--weights",
            str(path),
            "--data",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert not marker.exists(), "unpickling ran code"
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("reportgen: error: ")
    assert "--checkpoint" in lines[0] and "--trust-checkpoint" in lines[0]
    assert "Traceback" not in result.output
    # torch's own text advises weights_only=False; we must never relay that.
    assert "weights_only" not in lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


def test_pickled_module_as_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(tiny_net(), path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert "TinyNet" in msg and "--trust-checkpoint" in msg and "state_dict()" in msg


def _torchscript(path: Path, how: str) -> nn.Module:
    model = tiny_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if how == "script":
            scripted = torch.jit.script(model)
        else:
            scripted = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
        scripted.save(str(path))
    return model


def _exported(path: Path, *, batch: int = 2, dynamic: bool = False) -> nn.Module:
    model = tiny_net().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    program = torch.export.export(model, (torch.randn(batch, 3, 32, 32),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return model


def _pickled(path: Path) -> nn.Module:
    model = tiny_net().eval()
    torch.save(model, path)
    return model


CODE_CARRYING: dict[str, tuple[str, Callable[[Path], nn.Module], str]] = {
    "torchscript_script": ("ts.pt", lambda p: _torchscript(p, "script"), "torchscript"),
    "torchscript_trace": ("traced.pt", lambda p: _torchscript(p, "trace"), "torchscript"),
    "export_pt2": ("model.pt2", lambda p: _exported(p), "exported"),
    "pickled_module": ("whole.pt", _pickled, "pickled_module"),
}


@pytest.mark.parametrize("name", ["torchscript_script", "export_pt2"])
def test_archives_as_weights_are_refused(tmp_path: Path, name: str) -> None:
    filename, make, _kind = CODE_CARRYING[name]
    path = tmp_path / filename
    make(path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert "runs code" in msg and "--checkpoint" in msg and "--trust-checkpoint" in msg
    assert ("TorchScript" in msg) == name.startswith("torchscript")


@pytest.mark.parametrize("name", sorted(CODE_CARRYING))
def test_checkpoints_refused_without_trust(tmp_path: Path, name: str) -> None:
    filename, make, _kind = CODE_CARRYING[name]
    path = tmp_path / filename
    make(path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_trusted_checkpoint(path, trust=False)


def test_malicious_pickle_as_checkpoint_without_trust_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _write_malicious("torch_save_system", path, marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_trusted_checkpoint(path, trust=False)
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(CODE_CARRYING))
def test_trusted_checkpoints_load_and_match_the_original(tmp_path: Path, name: str) -> None:
    filename, make, kind = CODE_CARRYING[name]
    path = tmp_path / filename
    original = make(path)
    loaded = load_model(ModelConfig(checkpoint=str(path), trust_checkpoint=True))
    assert loaded.kind == kind
    assert loaded.num_classes == 3 and loaded.in_channels == 3
    assert loaded.supports_hooks == (kind == "pickled_module")
    x = torch.randn(5, 3, 32, 32)  # a batch size the export did not see
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), original(x), atol=1e-5)


def test_exported_train_mode_program_runs_in_inference_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()  # exported by mistake in train mode: batch statistics and live dropout
    program = torch.export.export(model, (torch.randn(4, 3, 16, 16),))
    torch.export.save(program, str(tmp_path / "train.pt2"))
    loaded = load_model(ModelConfig(checkpoint=str(tmp_path / "train.pt2"), trust_checkpoint=True))
    assert isinstance(loaded.module, ExportedModule)
    assert loaded.module.eval_ops_switched == 2
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-5)
        assert torch.equal(loaded.module(x), loaded.module(x))


def test_exported_static_image_size_mismatch_is_an_input_error(tmp_path: Path) -> None:
    _exported(tmp_path / "m.pt2")
    loaded = load_model(ModelConfig(checkpoint=str(tmp_path / "m.pt2"), trust_checkpoint=True))
    with pytest.raises(CheckpointError, match=r"3×32×32.*preprocess\.crop"):
        loaded.module(torch.randn(2, 3, 40, 40))


@pytest.mark.parametrize("name", ["torchscript_trace", "export_pt2", "pickled_module"])
def test_trusted_checkpoint_report(tmp_path: Path, name: str) -> None:
    filename, make, kind = CODE_CARRYING[name]
    path = tmp_path / filename
    make(path)
    write_image_folder(tmp_path / "images", {"a": 3, "b": 3}, size=32)
    # Every registered analysis on graphs without hooks (the point of the test); the spine's
    # analyses suffice for the pickled module, which behaves like a state-dict model.
    cfg = make_config(
        tmp_path,
        {"model.arch": None, "model.checkpoint": str(path), "model.trust_checkpoint": True},
        analyses=["filters", "neighbors", "embedding"] if kind == "pickled_module" else None,
    )
    result = run_report(cfg)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {s["name"]: s for s in summary["sections"]}
    assert status["filters"]["status"] == "ok"
    assert summary["model"]["checkpoint_kind"] == kind
    assert summary["data"]["num_images"] == 6
    assert summary["metrics"]["accuracy"] is not None
    html = (tmp_path / "out" / "report.html").read_text()
    if kind == "pickled_module":
        assert result.exit_code == 0
        assert {s["status"] for s in summary["sections"]} == {"ok"}
    else:
        assert result.exit_code == 0
        for s in summary["sections"]:
            # Sections that need hooks say why they are skipped; forward-only ones work.
            assert s["status"] in ("ok", "skipped"), s
            if s["status"] == "skipped":
                assert "hooks" in s["reason"] and kind.split("_")[0] in s["reason"].lower(), s
        for feature_section in ("neighbors", "embedding"):
            assert status[feature_section]["status"] == "skipped"
        assert "needs layer hooks" in html
        # Filters come from the first 4-D parameter, which keeps its original name.
        assert "conv1" in html
