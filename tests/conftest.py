"""Shared fixtures: tiny models, generated image folders, configs and analysis contexts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.api import load_config, pipeline
from reportgen.config import Config
from reportgen.contract import AnalysisContext

# The measured batch sizes are cached per machine; the suite keeps its own cache, so a test
# never depends on what an earlier run (or the user's reports) measured.
os.environ.setdefault("REPORTGEN_CACHE_DIR", tempfile.mkdtemp(prefix="reportgen-test-cache-"))

TESTS = Path(__file__).resolve().parent
TINY_ARCH = f"{TESTS / 'tiny_models.py'}:tiny_net"
TINY_GRAY_ARCH = f"{TESTS / 'tiny_models.py'}:tiny_gray_net"

# Distinct per-class colours and shapes, so that neighbours and clusters are meaningful.
_CLASS_COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 30), (160, 40, 200)]


def class_image(cls: int, i: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """An H×W×3 uint8 image: a class-coloured square at a jittered position on noise."""
    rng = np.random.default_rng(seed * 1000 + cls * 100 + i)
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    s = size // 2
    y, x = rng.integers(0, size - s, 2)
    img[y : y + s, x : x + s] = _CLASS_COLOURS[cls % len(_CLASS_COLOURS)]
    return img


def write_image_folder(
    root: Path,
    classes: dict[str, int] | None = None,
    *,
    size: int = 40,
    fmt: str = "PNG",
    flat: bool = False,
) -> Path:
    """ImageFolder layout (``classes``: folder name -> count) or a flat folder of images."""
    classes = classes or {"circle": 6, "square": 6, "triangle": 6}
    root.mkdir(parents=True, exist_ok=True)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for ci, (name, count) in enumerate(classes.items()):
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(class_image(ci, i, size)).save(
                folder / f"{name}_{i:03d}.{ext}", format=fmt
            )
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    from tiny_models import tiny_net

    path = tmp_path / "tiny.pt"
    torch.save(tiny_net(3).state_dict(), path)
    return path


def make_config(
    tmp_path: Path, overrides: dict[str, Any] | None = None, analyses: list[str] | None = None
) -> Config:
    """A small, fast config: 32-px inputs, no workers, HTML only."""
    base: dict[str, Any] = {
        "model.arch": TINY_ARCH,
        "data.root": str(tmp_path / "images"),
        "output.dir": str(tmp_path / "out"),
        "output.formats": ["html"],
        "preprocess.resize": 32,
        "preprocess.crop": 32,
        "preprocess.pixel_size": 16,
        "run.device": "cpu",
        "run.workers": 0,
        "run.batch_size": 8,
        "data.queries": 3,
    }
    base.update(overrides or {})
    return load_config(None, base, analyses=analyses)


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    def factory(
        overrides: dict[str, Any] | None = None, analyses: list[str] | None = None
    ) -> Config:
        return make_config(tmp_path, overrides, analyses)

    return factory


def make_context(cfg: Config, analysis: str | None = None) -> AnalysisContext:
    """The context analyses get: model loaded, dataset pass done.

    ``analysis``: whose collector the context carries (default: the only enabled analysis with a
    collector, if there is exactly one).
    """
    prepared = pipeline(cfg, warn=lambda _m: None).prepare()
    if analysis is None and len(prepared.collectors) == 1:
        analysis = next(iter(prepared.collectors))
    return prepared.context_for(analysis) if analysis else prepared.context
