"""Batch size by measurement (cached), layout by rule."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from reportgen.pipeline import calibration


class Timed(nn.Module):
    """A model whose forward takes a known time per batch size: fastest per image at 16."""

    SECONDS: ClassVar[dict[int, float]] = {8: 0.04, 16: 0.05, 32: 0.2, 64: 0.4}

    def __init__(self, conv: bool = True) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3) if conv else nn.Linear(3, 4)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        time.sleep(self.SECONDS[len(x)])
        return torch.zeros(len(x), 2)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REPORTGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "throughput.json"


def test_the_fastest_batch_is_measured_once_and_then_reused(cache: Path) -> None:
    model = Timed()
    cpu = torch.device("cpu")
    first = calibration.calibrate(model, (3, 8, 8), cpu, "auto")
    # 8: 200 img/s, 16: 320, 32: 160 (slower: stop) -> 16; gradients the same on a CPU.
    assert (first.forward_batch, first.backward_batch, first.source) == (16, 16, "measured")
    assert model.calls == [8, 8, 16, 16, 32, 32]  # one warm-up and one timed call each
    assert first.memory_format == "channels_last"
    assert model.body.weight.is_contiguous(memory_format=torch.channels_last)
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["forward_batch"] == 16

    again = Timed()
    second = calibration.calibrate(again, (3, 8, 8), cpu, "auto")
    assert again.calls == []  # nothing measured
    assert (second.forward_batch, second.backward_batch, second.source) == (16, 16, "cached")
    # Another input size is another measurement.
    calibration.calibrate(again, (3, 16, 16), cpu, "auto")
    assert again.calls and len(json.loads(cache.read_text())) == 2


def test_layout_is_a_rule_and_can_be_set(cache: Path) -> None:
    cpu = torch.device("cpu")
    assert calibration.calibrate(Timed(conv=False), None, cpu, "auto").memory_format == (
        "contiguous"
    )
    model = Timed()
    chosen = calibration.calibrate(model, None, cpu, "contiguous")
    assert chosen.memory_format == "contiguous" and chosen.source == "configured"
    assert not model.body.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.calls == []  # no input size known: nothing measured, the fallback batches


def test_an_unreadable_cache_means_measuring_again(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    model = Timed()
    assert calibration.calibrate(model, (3, 8, 8), torch.device("cpu"), "auto").source == (
        "measured"
    )
    assert json.loads(cache.read_text())  # rewritten whole


def test_the_cache_folder_without_a_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPORTGEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(calibration.Path, "home", staticmethod(no_home))
    assert calibration.cache_dir().name == "reportgen"
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert calibration.cache_dir() == Path("/x/cache/reportgen")
