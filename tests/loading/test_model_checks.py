"""Checkpoint files that are not weights, and models that return the wrong thing."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, write_image_folder
from PIL import Image
from safetensors.torch import save_file
from tiny_models import tiny_net
from torch import nn

from reportgen.cli import cli
from reportgen.errors import CheckpointError, ConfigError
from reportgen.loading.checkpoints import (
    check_weights_file,
    load_state_dict,
    load_trusted_checkpoint,
)
from reportgen.loading.model_checks import (
    check_model_output,
    nonfinite_parameters,
    train_mode_modules,
)
from reportgen.loading.models import build_architecture

# --------------------------------------------------------------------------- weights files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"w\.pt is empty \(0 bytes\).*save the weights again"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            r"is a Git LFS pointer, not the weights; fetch the real file with `git lfs pull`",
        ),
        (
            b"<!DOCTYPE html><html><body>404</body></html>",
            r"is an HTML page \(a failed download\?\)",
        ),
        (
            "weights = [0.1, 0.2] # é\n".encode(),
            r"is a text file \(it starts with 'weights = \[0\.1, 0\.2\] # é'\), not saved weights",
        ),
    ],
)
def test_files_that_are_not_weights_get_one_clear_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"^model\\.weights: .*{message}"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match=f"^model\\.checkpoint: .*{message}"):
        load_trusted_checkpoint(path, trust=True)


def test_real_weight_formats_pass_the_file_check(tmp_path: Path) -> None:
    state = tiny_net(3).state_dict()
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    # safetensors content under a .pt name: recognised by its header, not its suffix.
    (tmp_path / "st.pt").write_bytes((tmp_path / "w.safetensors").read_bytes())
    for name in ("zip.pt", "legacy.pt", "w.safetensors", "st.pt"):
        assert check_weights_file(tmp_path / name) == tmp_path / name
        loaded, _ = load_state_dict(tmp_path / name)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_another_binary_format_is_named(tmp_path: Path) -> None:
    photo = tmp_path / "w.pt"
    Image.new("RGB", (4, 4)).save(photo, format="JPEG")
    with pytest.raises(
        CheckpointError, match=r"w\.pt: not a PyTorch weights file \(it is a JPEG image\)"
    ):
        load_state_dict(photo)
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match=r"\(it is a NumPy \.npy array\)"):
        load_state_dict(tmp_path / "a.npy")


def test_a_folder_as_weights_names_the_weight_files_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "hub_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({}, folder / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model\.weights: .*hub_model is a folder, not a weights file \(it holds "
        r"model\.safetensors\); pass the weights file itself",
    ):
        load_state_dict(folder)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_state_dict(tmp_path / "missing.pt")


def _without_blocking(fn: Callable[[], Any], fifo: Path) -> BaseException | None:
    """Run ``fn`` in a thread; fail the test if it blocks (as opening a FIFO for reading does)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10.0)
    if t.is_alive():
        # Free the blocked reader (a writer end opened non-blocking) so the process can end.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("blocked on a FIFO")
    return outcome[0]


def test_a_fifo_as_weights_or_checkpoint_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "w.pt"
    os.mkfifo(fifo)
    for call in (
        lambda: load_state_dict(fifo),
        lambda: load_trusted_checkpoint(fifo, trust=True),
        lambda: load_trusted_checkpoint(fifo, trust=False),
    ):
        exc = _without_blocking(call, fifo)
        assert isinstance(exc, CheckpointError)
        assert "is a FIFO (named pipe), not a regular file" in str(exc)


def test_cli_weights_mistakes_exit_2_with_one_line(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 1}, size=8)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")
    for weights, message in (
        ("empty.pt", "is empty (0 bytes)"),
        ("folder", "is a folder, not a weights file"),
        ("fifo.pt", "is a FIFO (named pipe)"),
    ):
        args = ["run", "--model", TINY_ARCH, "--weights", str(tmp_path / weights)]
        args += ["--data", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--quiet"]
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 2, out.output
        assert out.output.count("\n") == 1 and message in out.output
        assert not (tmp_path / "out").exists()


def test_a_factory_that_is_not_callable(tmp_path: Path) -> None:
    module = tmp_path / "nets.py"
    module.write_text(
        "from torch import nn\nWIDTH = 3\ndef make_net():\n    return nn.Linear(2, 2)\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"model\.arch: .*nets\.py:WIDTH is not a function or class \(it is of type int\)"
        r".*name a function or class that returns the nn\.Module",
    ):
        build_architecture(f"{module}:WIDTH", None)


# --------------------------------------------------------------------------- model outputs


class FeatureMap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Pair(nn.Module):
    """Returns (features, logits) or (logits, features)."""

    def __init__(self, logits_first: bool = False, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(6, classes)
        self.logits_first = logits_first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        out = self.head(f)
        return (out, f) if self.logits_first else (f, out)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net(3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x), "extra": x.mean((2, 3))}


def test_a_plain_classifier_passes_without_warnings() -> None:
    assert check_model_output(tiny_net(3).eval(), 3, 16, 3) == []


def test_a_feature_map_output_is_an_input_error() -> None:
    with pytest.raises(
        CheckpointError, match=r"output is 2×5×8×8 \(a feature map: N×C×H×W\), not one row"
    ):
        check_model_output(FeatureMap().eval(), 3, 8, 5)


def test_features_then_logits_takes_the_logits_and_says_so() -> None:
    model = Pair().eval()
    x = torch.randn(3, 3, 12, 12)
    expected = model.forward(x)[1]  # forward() itself bypasses hooks: the reference
    warnings = check_model_output(model, 3, 12, 4)
    assert warnings == [
        "the model returns a tuple (2×6, 2×4); element 1 is taken as the logits because it is "
        "the only one 4 wide, one score per class (element 0, 2×6, is not)"
    ]
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_logits_first_is_taken_and_named() -> None:
    warnings = check_model_output(Pair(logits_first=True).eval(), 3, 12, 4)
    assert warnings == [
        "the model returns a tuple (2×4, 2×6); element 0 (2×4) is taken as the logits because "
        "it is the first and is 4 wide, one score per class"
    ]
    (dict_warning,) = check_model_output(DictOut().eval(), 3, 16, 3)
    assert dict_warning.startswith(
        "the model returns a dict (logits: 2×3, extra: 2×3); key 'logits'"
    )


def test_ambiguous_tuple_and_wrong_width_are_errors() -> None:
    class Three(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            f = x.flatten(1)
            return f, f[:, :2], f[:, 2:4]

    with pytest.raises(CheckpointError, match=r"several others are \(element 1, element 2\)"):
        check_model_output(Three(), 1, 2, 2)
    with pytest.raises(
        CheckpointError,
        match=r"outputs 3 scores per image but num_classes is 10; set model\.num_classes to 3",
    ):
        check_model_output(tiny_net(3).eval(), 3, 16, 10)


def test_a_model_that_cannot_run_on_the_input_size() -> None:
    fixed = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 3)).eval()
    with pytest.raises(
        CheckpointError,
        match=r"cannot run on a batch of 3×16×16 inputs \(a batch of 2 images; RuntimeError: .*set preprocess\.resize.*fixed batch size",
    ):
        check_model_output(fixed, 3, 16, 3)
    assert check_model_output(fixed, 3, 32, 3) == []


def test_scripted_models_with_logits_second_cannot_be_adapted() -> None:
    with warnings.catch_warnings():  # torch deprecates TorchScript; users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(Pair().eval())
    with pytest.raises(CheckpointError, match=r"cannot be adapted.*make forward return the logits"):
        check_model_output(scripted, 3, 12, 4)


# --------------------------------------------------------------------------- weights and modes


def test_nonfinite_parameters_are_counted() -> None:
    model = tiny_net(3)
    with torch.no_grad():
        model.fc2.weight[0, :3] = float("nan")
        model.fc2.weight[1, 0] = float("inf")
        model.conv1.bias[2] = -float("inf")
    w = model.fc2.weight.detach().numpy()
    found = nonfinite_parameters(model)
    assert found == [
        "conv1.bias (0 NaN, 1 Inf of 8)",
        f"fc2.weight ({int(np.isnan(w).sum())} NaN, {int(np.isinf(w).sum())} Inf of {w.size})",
    ]
    assert nonfinite_parameters(tiny_net(3)) == []
    assert check_model_output(model.eval(), 3, 16, 3)[0].startswith(
        "the model's logits on an all-zero input are not finite"
    )


class WithNorm(nn.Module):
    def __init__(self, track: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, track_running_stats=track)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(self.conv(x)).mean((2, 3))))


def test_batchnorm_left_in_train_mode_is_noticed_and_its_statistics_untouched() -> None:
    model = WithNorm().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.3)
    assert check_model_output(model, 3, 8, 3) == []
    assert train_mode_modules(model) == []
    model.bn.train()  # e.g. a model whose eval() override forgot its norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warnings = check_model_output(model, 3, 8, 3)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "one image's logits change with the other images in its batch "
        "(bn (BatchNorm2d in train mode))"
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the check changed nothing


def test_batchnorm_without_running_stats_and_active_dropout_are_listed() -> None:
    model = WithNorm(track=False).eval()
    assert train_mode_modules(model) == ["bn (BatchNorm2d without running statistics)"]
    assert "batch" in check_model_output(model, 3, 8, 3)[0]
    dropping = WithNorm(dropout=0.5).eval()
    assert train_mode_modules(dropping) == []
    dropping.drop.train()
    assert train_mode_modules(dropping) == ["drop (Dropout in train mode)"]
    (warning,) = check_model_output(dropping, 3, 8, 3)
    assert "drop (Dropout in train mode)" in warning
