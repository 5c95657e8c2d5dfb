"""The result of the one dataset pass, as every analysis sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reportgen.errors import DataError


@dataclass
class PassResult:
    item_index: list[int]
    """Position among readable images -> index into ``folder.items``."""
    features: torch.Tensor | None
    """N×D penultimate features (float32, on the device); None when the model has no hooks."""
    feature_layer: str | None
    logits: torch.Tensor
    """N×K logits (float32, on the device)."""
    labels: torch.Tensor
    """N class indices (-1 where unlabelled), on the CPU."""
    pixels: torch.Tensor
    """N×C×s×s uint8 downsampled inputs (de-normalised), for pixel-space distances and thumbnails."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) of images that could not be read."""
    manifest: list[tuple[str, int, str]] = field(default_factory=list)
    """(relative path, size, sha256) of every image file considered."""
    mean_input: torch.Tensor | None = None
    """Per-channel mean of the preprocessed inputs (model space), e.g. the occluder's fill."""
    batch_sums: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)
    """(first dataset index, per-channel input sum, pixel count) per batch: lets a sharded run
    (torchrun) add the batches up in one-process order, so ``mean_input`` is bit-identical."""
    baseline_logits: torch.Tensor | None = None
    """N×K' logits of the baseline model on the same inputs (None without a baseline)."""
    baseline_features: torch.Tensor | None = None
    """N×D' penultimate features of the baseline (None without a baseline or its hooks)."""

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def finite(self) -> torch.Tensor:
        """N bools, on the logits' device: the image's outputs are all finite. An image with a
        NaN or infinite logit has no prediction or confidence to score: every metric leaves it
        out (and says how many it left out)."""
        return torch.isfinite(self.logits).all(dim=1)

    def scored(self) -> torch.Tensor:
        """N bools, on the CPU: labelled with a class the model can output, and finite outputs
        — the images accuracy, calibration and the label checks are computed over."""
        labels = self.labels
        return (labels >= 0) & (labels < self.logits.shape[1]) & self.finite.cpu()

    def __len__(self) -> int:
        return len(self.item_index)


def mean_of_batches(batch_sums: Sequence[tuple[int, torch.Tensor, int]]) -> torch.Tensor:
    """Per-channel mean over batches, added in dataset order (the same float rounding for any
    number of ranks)."""
    total: torch.Tensor | None = None
    count = 0
    for _, s, c in sorted(batch_sums, key=lambda b: b[0]):
        total = s if total is None else s + total
        count += c
    assert total is not None
    return total / count


def raise_no_images(root: object, skipped: list[tuple[str, str]]) -> None:
    """The error for a pass that read no image at all."""
    reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
    raise DataError(f"{root}: none of the {len(skipped)} image(s) could be read ({reasons})")
