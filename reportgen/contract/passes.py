"""The result of the one dataset pass, as every analysis sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from reportgen.errors import DataError
from reportgen.heads import MULTICLASS, Head
from reportgen.loading.folders import ImageItem
from reportgen.methods.scores import (
    BinaryScores,
    MultilabelScores,
    binary_scores,
    multilabel_scores,
)


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
    head: Head = MULTICLASS
    """What the logits mean (:mod:`reportgen.heads`): every prediction and probability below
    comes from it."""
    baseline_head: Head | None = None
    """What the baseline's logits mean (None without a baseline)."""
    label_sets: torch.Tensor | None = None
    """Multi-label data: N×K int8 on the CPU, 1 where the image has label k, 0 where it has
    not; every entry -1 on an unlabelled row (``labels`` is then -1 everywhere). None for
    single-label data."""

    @property
    def num_classes(self) -> int:
        """Classes (labels) the model distinguishes: its outputs, or 2 for a binary head."""
        return self.head.classes(int(self.logits.shape[1]))

    @cached_property
    def predictions(self) -> torch.Tensor:
        """N predicted class indices (single-label heads; for multi-label see
        :attr:`predicted_sets`), on the logits' device. Computed once: captions and galleries
        read it image by image (treat it as read-only)."""
        if not self.head.single_label:
            raise TypeError("a multi-label model predicts label sets: use predicted_sets")
        preds: torch.Tensor = self.head.predictions(self.logits)
        return preds

    @cached_property
    def predicted_sets(self) -> torch.Tensor:
        """N×K booleans: the labels each image is predicted to have (multi-label heads).
        Computed once, like :attr:`predictions`."""
        if self.head.single_label:
            raise TypeError("a single-label model predicts one class: use predictions")
        sets: torch.Tensor = self.head.predictions(self.logits)
        return sets

    def probabilities(self) -> torch.Tensor:
        """N×C probabilities of every class (the head's), float32 on the logits' device."""
        probs: torch.Tensor = self.head.probabilities(self.logits.float())
        return probs

    def confidence(self) -> torch.Tensor:
        """N probabilities of the predicted class (single-label heads)."""
        conf: torch.Tensor = self.head.confidence(self.logits.float())
        return conf

    @property
    def labelled_rows(self) -> torch.Tensor:
        """N bools on the CPU: the image has a label (single-label) or a known label set."""
        if self.label_sets is not None:
            return (
                (self.label_sets >= 0).all(dim=1)
                if self.label_sets.shape[1]
                else (torch.zeros(len(self.labels), dtype=torch.bool))
            )
        return self.labels >= 0

    @property
    def finite(self) -> torch.Tensor:
        """N bools, on the logits' device: the image's outputs are all finite. An image with a
        NaN or infinite logit has no prediction or confidence to score: every metric leaves it
        out (and says how many it left out)."""
        return torch.isfinite(self.logits).all(dim=1)

    def scored(self) -> torch.Tensor:
        """N bools, on the CPU: labelled with a class the model can output (a known label set,
        multi-label), and finite outputs — the images accuracy, calibration and the label
        checks are computed over."""
        if self.label_sets is not None:
            return self.labelled_rows & self.finite.cpu()
        labels = self.labels
        return (labels >= 0) & (labels < self.num_classes) & self.finite.cpu()

    def explained_labels(self, position: int, cap: int) -> list[int]:
        """A multi-label image's labels its per-image maps explain: its true and predicted
        labels, the most probable first, at most ``cap`` (with neither: its most probable)."""
        row = self.logits[position : position + 1].float()
        probs = self.head.probabilities(row)[0].cpu()
        wanted = self.head.predictions(row)[0].cpu().clone()
        if self.label_sets is not None and bool(self.labelled_rows[position]):
            wanted |= self.label_sets[position] > 0
        order = torch.argsort(probs, descending=True, stable=True).tolist()
        chosen = [k for k in order if bool(wanted[k])][:cap]
        return chosen or order[:1]

    def task_scores(self) -> BinaryScores | MultilabelScores | None:
        """A binary or multi-label model's scores on the scored images (AUROC, AP, F1 ...),
        from the float64 probabilities predictions.csv holds; None for a multiclass model or
        without a scored image. Computed once (the summary, the checks and the audit read it)."""
        return self._task_scores

    @cached_property
    def _task_scores(self) -> BinaryScores | MultilabelScores | None:
        if self.head.task == "multiclass":
            return None
        scored = self.scored().numpy()
        if not scored.any():
            return None
        z = self.logits.float().cpu().numpy()[scored]
        probs = self.head.probabilities(z)
        if self.head.task == "binary":
            return binary_scores(self.labels.numpy()[scored], probs[:, 1], self.head.threshold)
        assert self.label_sets is not None
        truth = self.label_sets.numpy()[scored] > 0
        return multilabel_scores(truth, probs, self.head.predictions(z))

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


def label_set_matrix(items: Sequence[ImageItem], outputs: int) -> torch.Tensor:
    """N×K int8: 1 where the item has label k, 0 where not, -1 across an unlabelled row.
    Label indices past the model's outputs are an input error found before the pass."""
    out = torch.zeros((len(items), outputs), dtype=torch.int8)
    for row, item in enumerate(items):
        if item.labels is None:
            out[row] = -1
        elif item.labels:
            out[row, list(item.labels)] = 1
    return out
