"""Batch size and memory layout by measurement, not a fixed 64.

On a CPU a convolutional network often runs *slower* per image in large batches (the working set
leaves the caches: ResNet-50 on two cores makes 26 images/s at batch 8 and 18 at batch 32) and
faster in channels-last layout (1.2–1.6× on ResNet-50 and EfficientNet-B0). So a convolutional
model is put in channels-last layout (a rule), and before the dataset pass a short measurement
on random inputs of the model's input size picks the batch size of the perturbation sections
(occlusion, the deletion/insertion curves; the gradient methods take the same on a CPU and half
of it on a GPU, a backward holding about twice the activations). The result is cached per model, input size, layout, device
and torch version, so a re-run makes the same choices (and the same bytes) without measuring
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
from torch import nn

from reportgen.loading.models import extract_logits
from reportgen.runtime.writes import write_atomic

CPU_BATCHES = (8, 16, 32, 64)
CUDA_BATCHES = (64, 128, 256, 512)
FALLBACK = {"cpu": 16, "cuda": 256}
GAIN = 1.05
"""A larger batch must be this much faster to be chosen (noise margin)."""


@dataclass(frozen=True)
class Throughput:
    """What the perturbation sections run with, and where it came from."""

    forward_batch: int
    """Images per forward-only pass (occlusion, the curves)."""
    backward_batch: int
    """Images per forward+backward pass (the gradient methods)."""
    memory_format: str
    """``channels_last`` or ``contiguous``."""
    images_per_s: float | None
    """Forward images per second at ``forward_batch`` when measured."""
    source: str
    """``measured``, ``cached`` (measured by an earlier run on this machine) or ``configured``."""

    def describe(self) -> str:
        rate = f", {self.images_per_s:.0f} images/s" if self.images_per_s else ""
        return (
            f"{self.forward_batch} per forward, {self.backward_batch} per forward+backward, "
            f"{self.memory_format.replace('_', ' ')} layout ({self.source}{rate})"
        )


def cache_dir() -> Path:
    """``$REPORTGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/reportgen``, else ``~/.cache/reportgen``."""
    explicit = os.environ.get("REPORTGEN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container user): measure each run
            base = os.path.join(tempfile.gettempdir(), f"reportgen-cache-{os.getuid()}")
    return Path(base) / "reportgen"


def cache_key(model: nn.Module, shape: tuple[int, ...], device: torch.device, layout: str) -> str:
    """What the measurement depends on: the architecture (class and parameter shapes, not the
    weights' values), the input size and layout, the device and the torch version. Not the
    thread count: a torchrun rank (one thread) reuses what the plain run measured, so both
    compute the sections with the same batches."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    h.update(f"{shape}|{layout}|{name}|{torch.__version__}".encode())
    return h.hexdigest()[:32]


def _rate(run: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device) -> float:
    """Images per second of one timed call after one warm-up call (kernel choice, allocator)."""
    run(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = perf_counter()
    run(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(x) / max(perf_counter() - t, 1e-9)


def measure(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> Throughput:
    """The forward batch (doubling from the smallest candidate while it is ≥ 5 % faster),
    forward only, under inference mode, on seeded random inputs, in the model's layout."""
    gen = torch.Generator().manual_seed(0)
    batches = CUDA_BATCHES if device.type == "cuda" else CPU_BATCHES

    def forward(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return extract_logits(model(x))

    rates: dict[int, float] = {}
    best = batches[0]
    for n in batches:
        rates[n] = _rate(forward, torch.randn((n, *shape), generator=gen).to(device), device)
        if n != best and rates[n] < GAIN * rates[best]:
            break
        best = n
    # A backward holds about twice the forward's activations: on a GPU (memory-bound) half the
    # batch, on a CPU the same one (two cores: 8.3 vs 7.5 images/s at 8 and 4 on ResNet-50).
    backward = best if device.type != "cuda" else max(1, best // 2)
    return Throughput(best, backward, layout_of(model), rates[best], "measured")


def wants_channels_last(model: nn.Module) -> bool:
    """``memory_format: auto``: channels-last for a model with 2-D convolutions (measured
    1.2–1.6× faster on two CPU cores for ResNet-50 and EfficientNet-B0, and the CUDA default),
    contiguous otherwise. A rule, not a timing, so that the layout — which changes logits in the
    6th digit — never depends on a noisy moment."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def layout_of(model: nn.Module) -> str:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    if weights and weights[0].is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"


def calibrate(
    model: nn.Module, shape: tuple[int, ...] | None, device: torch.device, memory_format: str
) -> Throughput:
    """Put the model in its layout (``auto``: :func:`wants_channels_last`; a convolution with
    channels-last weights computes in channels-last whatever its input's layout) and pick the
    perturbation sections' batch sizes: measured once per machine and model (cached)."""
    layout = memory_format
    if memory_format == "auto":
        layout = "channels_last" if wants_channels_last(model) else "contiguous"
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    try:
        model.to(memory_format=fmt)
    except (RuntimeError, TypeError):  # a scripted or exported graph keeps its own layout
        layout = "contiguous"
    fallback = FALLBACK["cuda" if device.type == "cuda" else "cpu"]
    if shape is None:
        return Throughput(fallback, max(1, fallback // 2), layout, None, "configured")
    key = cache_key(model, shape, device, layout)
    path = cache_dir() / "throughput.json"
    table = _read(path)
    if key in table:
        try:
            return Throughput(**{**table[key], "memory_format": layout, "source": "cached"})
        except TypeError:
            pass
    try:
        found = measure(model, shape, device)
    except (RuntimeError, ValueError, TypeError):  # a model that will say so in the pass
        return Throughput(fallback, max(1, fallback // 2), layout, None, "configured")
    found = Throughput(
        found.forward_batch, found.backward_batch, layout, found.images_per_s, "measured"
    )
    table[key] = {k: v for k, v in asdict(found).items() if k != "source"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(table, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache only means measuring again next time
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
