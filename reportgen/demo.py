"""The embedded default: a small CNN trained on scikit-learn's bundled digits, no downloads.

``reportgen demo`` trains it (seeded, CPU, seconds), writes the images in ImageFolder layout, the
state dict and a config file into the output folder, then makes the report through exactly the
path ``reportgen run --config OUT/config.yaml`` takes, loading the checkpoint file it wrote.

``--task binary`` trains the same network with one output on "is it a 3?" (class folders
``other`` and ``three``); ``--task multilabel`` with three sigmoid outputs on {even, greater than
4, prime}, listed in a manifest with a ``digit`` metadata column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from reportgen.runtime.progress import Progress

IMAGE_SIZE = 32
MEAN, STD = 0.5, 0.5
DemoTask = Literal["multiclass", "binary", "multilabel"]
BINARY_CLASSES = ["other", "three"]
"""The binary demo's classes, negative first: is the digit a 3?"""
MULTILABEL_NAMES = ["even", "greater_than_4", "prime"]
"""The multi-label demo's labels: properties of the digit."""


def demo_targets(labels: np.ndarray, task: DemoTask) -> np.ndarray:
    """What the demo model learns for each digit: the digit (multiclass), ``digit == 3``
    (binary, N×1) or the N×3 properties {even, greater than 4, prime} (multi-label)."""
    if task == "binary":
        return (labels == 3).astype(np.float32)[:, None]
    if task == "multilabel":
        prime = np.isin(labels, [2, 3, 5, 7])
        return np.stack([labels % 2 == 0, labels > 4, prime], axis=1).astype(np.float32)
    return labels


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
    task: DemoTask = "multiclass",
) -> TrainResult:
    """Seeded CPU training with a held-out 20 % split (reported as test accuracy: at p ≥ 0.5
    for binary, the exact match of the label sets for multi-label).

    The network learns its features on the ten digits (cross-entropy); a binary or multi-label
    model then gets a new last layer with one output per target, fitted with the logistic loss
    on those features (the sparse "is it a 3?" target alone makes the small network collapse
    to "never")."""
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
    if task != "multiclass":
        model = _sigmoid_head(model, x, torch.from_numpy(demo_targets(labels, task)), train_idx)
        y = torch.from_numpy(demo_targets(labels, task))
    with torch.inference_mode():
        out = model(x)
    # Multi-label and binary: every output on the right side of p = 0.5 (z = 0).
    right = out.argmax(1) == y if task == "multiclass" else ((out >= 0).float() == y).all(dim=1)
    return TrainResult(
        model,
        float(right[train_idx].float().mean()),
        float(right[test_idx].float().mean()),
    )


def _sigmoid_head(
    model: DigitsCNN, x: torch.Tensor, targets: torch.Tensor, train_idx: torch.Tensor
) -> DigitsCNN:
    """The trained network with a new last layer, one sigmoid output per target column, fitted
    (full batch, logistic loss) on the penultimate features of the training split."""
    out = DigitsCNN(int(targets.shape[1]))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.3.")}
    out.load_state_dict(state, strict=False)
    out.eval()
    with torch.no_grad():
        features = out.classifier[:3](out.pool(out.features(x[train_idx])))
    last = out.classifier[3]
    opt = torch.optim.Adam(last.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(
            last(features), targets[train_idx]
        ).backward()
        opt.step()
    return out


def demo_config(out_dir: Path, task: DemoTask = "multiclass") -> dict[str, Any]:
    model: dict[str, Any] = {"arch": "reportgen.demo:digits_cnn", "weights": "model.pt"}
    data: dict[str, Any] = {"root": "data", "queries": 8}
    title = "Demo: a small CNN on scikit-learn's digits"
    if task == "binary":
        model.update(num_classes=1, task="binary")
        data["labels"] = list(BINARY_CLASSES)
        title += " — binary: is it a 3?"
    elif task == "multilabel":
        model.update(num_classes=len(MULTILABEL_NAMES), task="multilabel")
        data = {"manifest": "data/manifest.csv", "labels": list(MULTILABEL_NAMES), "queries": 8}
        title += " — multi-label: even, greater than 4, prime"
    return {
        "model": model,
        "data": data,
        "preprocess": {
            "resize": IMAGE_SIZE,
            "crop": IMAGE_SIZE,
            "mean": [MEAN],
            "std": [STD],
            "pixel_size": IMAGE_SIZE,
        },
        "run": {"device": "auto", "batch_size": 256, "workers": 0, "seed": 0},
        "analyses": {"filters": {"layers": ["features.3"]}},
        "output": {"dir": ".", "save_arrays": True, "title": title},
    }


def prepare_demo(
    out_dir: Path,
    *,
    per_class: int | None = None,
    epochs: int = 15,
    progress: Progress | None = None,
    task: DemoTask = "multiclass",
) -> tuple[Path, TrainResult]:
    """Train, write images + weights + config.yaml into ``out_dir``; return the config path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images(per_class)
    trained = train_digits(images, labels, epochs=epochs, progress=progress, task=task)
    data = out_dir / "data"
    counters = [0] * 10
    rows = ["path,labels,digit"]
    targets = demo_targets(labels, task)
    for img, lab, target in zip(images, labels, targets, strict=True):
        folder = str(int(lab))
        if task == "binary":
            folder = BINARY_CLASSES[int(target[0])]
        name = f"{int(lab)}_{counters[lab]:04d}.png"
        counters[lab] += 1
        path = data / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.fromarray(img, mode="L").save(path, format="PNG")
        if task == "multilabel":
            names = "|".join(n for n, on in zip(MULTILABEL_NAMES, target, strict=True) if on)
            rows.append(f"{folder}/{name},{names},{int(lab)}")
    if task == "multilabel":
        (data / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    torch.save(trained.model.state_dict(), out_dir / "model.pt")
    config_path = out_dir / "config.yaml"
    text = (
        "# Written by `reportgen demo`; re-run with: reportgen run --config "
        + str(config_path)
        + "\n"
        + yaml.safe_dump(demo_config(out_dir, task), sort_keys=False)
    )
    config_path.write_text(text, encoding="utf-8")
    return config_path, trained
