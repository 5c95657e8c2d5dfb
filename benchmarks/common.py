"""Shared pieces of the benchmarks: generated data, the seeded model, timing, Markdown tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image


def sync(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call, with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def write_images(root: Path, n: int, size: int = 256, classes: int = 10, seed: int = 0) -> Path:
    """``n`` seeded JPEGs of size×size in ``classes`` class folders (skips work already done).

    Each image is a smooth random colour field (upsampled 8×8 noise, class-tinted) with a
    class-coloured rectangle and fine noise, so decoding costs what a photo of that size costs.
    """
    stamp = root / f".generated-{n}-{size}-{classes}-{seed}"
    if stamp.exists():
        return root
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0, 255, size=(classes, 3))
    for i in range(n):
        c = i % classes
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.uniform(0, 255, size=(8, 8, 3)) * 0.6 + tints[c] * 0.4
        img = np.asarray(
            Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        y, x = rng.integers(0, size // 2, 2)
        img[y : y + size // 3, x : x + size // 3] = tints[c]
        img += rng.normal(scale=12, size=img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            folder / f"img_{i:06d}.jpg", quality=90
        )
    stamp.touch()
    return root


def resnet18_weights(path: Path, num_classes: int = 10) -> Path:
    """torchvision resnet18 with ``weights=None``, seeded, saved as a plain state dict."""
    if not path.exists():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def gaussian_mixture(n: int, dims: int, centres: int = 20, seed: int = 0) -> np.ndarray:
    """``n`` points in ``dims`` dimensions around ``centres`` seeded cluster centres (float32)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dims)) * 3.0
    labels = rng.integers(0, centres, n)
    return (c[labels] + rng.normal(size=(n, dims))).astype(np.float32)


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.1e}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def standalone_main(
    doc: str | None,
    run: Callable[[str, bool], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """``python -m benchmarks.bench_X [--device D] [--quick]``: run one benchmark, print its table."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    print(markdown(run(args.device, args.quick)))


def resnet18_config(
    weights: Path, root: Path, out: Path, device: str, batch: int, extra: dict[str, Any]
) -> Any:
    """The benchmarks' config: the seeded 10-class resnet18 state dict on the generated images."""
    from reportgen.api import load_config

    overrides: dict[str, Any] = {
        "model.arch": "resnet18",
        "model.weights": str(weights),
        "model.num_classes": 10,
        "data.root": str(root),
        "output.dir": str(out),
        "run.device": device,
        "run.batch_size": batch,
        "run.quiet": True,
    }
    return load_config(None, {**overrides, **extra})
