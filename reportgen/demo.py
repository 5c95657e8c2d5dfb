"""The embedded default: a small CNN trained on scikit-learn's bundled digits, no downloads.

``reportgen demo`` trains it (seeded, CPU, seconds), writes the images in ImageFolder layout, the
state dict and a config file into the output folder, then makes the report through exactly the
path ``reportgen run --config OUT/config.yaml`` takes, loading the checkpoint file it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from reportgen.runtime.progress import Progress

IMAGE_SIZE = 32
MEAN, STD = 0.5, 0.5


class DigitsCNN(nn.Module):
    """Three conv layers (5×5, 3×3, 3×3), global average pooling, two linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """Factory for ``model.arch: reportgen.demo:digits_cnn``."""
    return DigitsCNN(num_classes)


def digit_images(per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The digits as 32×32 uint8 images (white on black, like MNIST) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        images, labels = images[keep], labels[keep]
    out = np.empty((len(images), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, img in enumerate(images):
        small = Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8))
        out[i] = np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
    return out, labels.astype(np.int64)


@dataclass(frozen=True)
class TrainResult:
    model: DigitsCNN
    train_accuracy: float
    test_accuracy: float


def train_digits(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 15,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Seeded CPU training with a held-out 20 % split (reported as test accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = (torch.from_numpy(images).float()[:, None] / 255.0 - MEAN) / STD
    y = torch.from_numpy(labels)
    order = torch.randperm(len(x), generator=gen)
    n_test = max(1, len(x) // 5)
    test_idx, train_idx = order[:n_test], order[n_test:]
    model = DigitsCNN(10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    steps = epochs * ((len(train_idx) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    epochs_iter = (
        range(epochs)
        if progress is None
        else progress(range(epochs), desc="training demo CNN", total=epochs)
    )
    model.train()
    for _ in epochs_iter:
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(perm), 64):
            b = perm[start : start + 64]
            xb = x[b]
            # Small random shifts make the features less tied to exact pixel positions.
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(shift[0], shift[1]), dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(xb), y[b]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        pred = model(x).argmax(1)
    return TrainResult(
        model,
        float((pred[train_idx] == y[train_idx]).float().mean()),
        float((pred[test_idx] == y[test_idx]).float().mean()),
    )


def demo_config(out_dir: Path) -> dict[str, Any]:
    return {
        "model": {"arch": "reportgen.demo:digits_cnn", "weights": "model.pt"},
        "data": {"root": "data", "queries": 8},
        "preprocess": {
            "resize": IMAGE_SIZE,
            "crop": IMAGE_SIZE,
            "mean": [MEAN],
            "std": [STD],
            "pixel_size": IMAGE_SIZE,
        },
        "run": {"device": "auto", "batch_size": 256, "workers": 0, "seed": 0},
        "analyses": {"filters": {"layers": ["features.3"]}},
        "output": {
            "dir": ".",
            "save_arrays": True,
            "title": "Demo: a small CNN on scikit-learn's digits",
        },
    }


def prepare_demo(
    out_dir: Path,
    *,
    per_class: int | None = None,
    epochs: int = 15,
    progress: Progress | None = None,
) -> tuple[Path, TrainResult]:
    """Train, write images + weights + config.yaml into ``out_dir``; return the config path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images(per_class)
    trained = train_digits(images, labels, epochs=epochs, progress=progress)
    data = out_dir / "data"
    for c in range(10):
        (data / str(c)).mkdir(parents=True, exist_ok=True)
    counters = [0] * 10
    for img, lab in zip(images, labels, strict=True):
        path = data / str(int(lab)) / f"{int(lab)}_{counters[lab]:04d}.png"
        counters[lab] += 1
        if not path.exists():
            Image.fromarray(img, mode="L").save(path, format="PNG")
    torch.save(trained.model.state_dict(), out_dir / "model.pt")
    config_path = out_dir / "config.yaml"
    text = (
        "# Written by `reportgen demo`; re-run with: reportgen run --config "
        + str(config_path)
        + "\n"
        + yaml.safe_dump(demo_config(out_dir), sort_keys=False)
    )
    config_path.write_text(text, encoding="utf-8")
    return config_path, trained
