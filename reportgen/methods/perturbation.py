"""Occlusion maps, compute only: every occluded copy of every image is one job, evaluated in
batches under ``torch.inference_mode``. Used by the occlusion section and by the attribution
checks (which recompute occlusion on randomised copies of the model)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.heads import MULTICLASS, Head
from reportgen.methods import incremental
from reportgen.methods.incremental import IncrementalOcclusion

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_geometry(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """(window, stride) with the automatic defaults filled in and clipped to the image."""
    side = min(height, width)
    w = window if window > 0 else max(1, round(side / 4))
    w = min(w, side)
    s = stride if stride > 0 else max(1, w // 4)
    return w, s


def grid_shape(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """Occluder positions per axis: top-left corners at 0, stride, ... until every pixel is covered.

    When the stride does not divide (size - window), the last window is clipped at the image's
    border (Captum's Occlusion uses the same positions), so no border pixel is left untested.
    """
    return -(-(height - window) // stride) + 1, -(-(width - window) // stride) + 1


def occluded_copies(
    images: torch.Tensor,
    image_index: torch.Tensor,
    tops: torch.Tensor,
    lefts: torch.Tensor,
    window: int,
    fill: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """B occluded copies: copy b is ``images[image_index[b]]`` with the window at (top, left) filled.

    ``fill``: C values (model input space). Built with broadcasting, no loop over copies.
    """
    _, c, h, w = images.shape
    ys = torch.arange(h, device=images.device)
    xs = torch.arange(w, device=images.device)
    in_rows = (ys[None, :] >= tops[:, None]) & (ys[None, :] < tops[:, None] + window)  # B×H
    in_cols = (xs[None, :] >= lefts[:, None]) & (xs[None, :] < lefts[:, None] + window)  # B×W
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # B×1×H×W
    fill4 = fill.to(images.dtype).view(1, c, 1, 1)
    source = images.index_select(0, image_index)
    if out is None:
        return torch.where(mask, fill4, source)
    return torch.where(mask, fill4, source, out=out)


@dataclass(frozen=True)
class OcclusionMaps:
    prob: torch.Tensor
    """Q×rows×cols: the target's probability (the head's explained probability) with the
    occluder's top-left corner at (r·stride, c·stride)."""
    predicted: torch.Tensor
    """Q×rows×cols: the predicted class at each occluder position (single-label heads); for a
    multi-label head 1 where the explained label is still predicted, else 0."""
    base_prob: torch.Tensor
    """Q: target probability of the unoccluded image."""
    window: int
    stride: int
    incremental: bool = False
    """True when the occluded copies were computed incrementally (:mod:`reportgen.methods.incremental`)."""


def _checked_runner(
    module: nn.Module,
    model_fn: ModelFn,
    image: torch.Tensor,
    tops: torch.Tensor,
    lefts: torch.Tensor,
    window: int,
    fill: torch.Tensor,
) -> IncrementalOcclusion | None:
    """The incremental runner when the model traces and agrees with its own forward pass on two
    occluded copies (the first position and the middle one); otherwise None (full forwards)."""
    runner = IncrementalOcclusion.trace(module)
    if runner is None:
        return None
    pick = torch.tensor([0, len(tops) // 2], device=tops.device)
    index = torch.zeros(2, dtype=torch.long, device=image.device)
    incremental.TALLY.checking = True
    try:
        got = runner.logits(image, tops[pick], lefts[pick], window, fill, 2).float()
        want = model_fn(occluded_copies(image, index, tops[pick], lefts[pick], window, fill))
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    finally:
        incremental.TALLY.checking = False
    want = want.float()
    scale = max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        return None
    return runner


def occlusion_maps(
    model_fn: ModelFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    window: int,
    stride: int,
    fill: torch.Tensor,
    batch_size: int = 64,
    channels_last: bool = False,
    progress: Callable[..., Iterator[int]] | None = None,
    module: nn.Module | None = None,
    *,
    head: Head = MULTICLASS,
) -> OcclusionMaps:
    """Target-class probability for every occluder position of every image (batched, no grad);
    the probability is the head's (:meth:`Head.explained_probability`).

    ``model_fn`` maps a batch of inputs to logits. Jobs (image, row, col) run in order, at most
    ``batch_size`` per forward pass. ``module``: the model itself (``model_fn`` being its plain
    forward), for incremental inference — used when it traces and agrees with ``model_fn`` on
    two copies (1e-4), four batches' worth of copies at a time (a copy costs less); else full
    forwards.
    """
    q, c, h, w = inputs.shape
    rows, cols = grid_shape(h, w, window, stride)
    if rows < 1 or cols < 1:
        raise ValueError(f"occluder window {window} does not fit a {h}×{w} input")
    per_image = rows * cols
    total = q * per_image
    device = inputs.device
    prob = torch.empty(total, device=device)
    predicted = torch.empty(total, dtype=torch.long, device=device)
    fill = fill.to(device)
    targets = targets.to(device)
    with torch.inference_mode():
        base_logits = model_fn(inputs).float()
        base_prob = head.explained_probability(base_logits, targets)
        cell_all = torch.arange(per_image, device=device)
        all_tops, all_lefts = (cell_all // cols) * stride, (cell_all % cols) * stride
        runner = (
            _checked_runner(module, model_fn, inputs[:1], all_tops, all_lefts, window, fill)
            if module is not None and q
            else None
        )
        if runner is not None:
            images: Iterable[int] = range(q)
            if progress is not None:
                images = progress(images, desc="occlusion", total=q)
            for i in images:
                logits = runner.logits(
                    inputs[i : i + 1], all_tops, all_lefts, window, fill, 4 * batch_size
                ).float()
                cut = slice(i * per_image, (i + 1) * per_image)
                prob[cut], predicted[cut] = _scored(head, logits, targets[i].expand(per_image))
            return OcclusionMaps(
                prob.view(q, rows, cols),
                predicted.view(q, rows, cols),
                base_prob,
                window,
                stride,
                incremental=True,
            )
        buffer = torch.empty((min(batch_size, total), c, h, w), dtype=inputs.dtype, device=device)
        if channels_last:
            # Filled in place by torch.where(out=...), so every batch is channels_last for free.
            buffer = buffer.contiguous(memory_format=torch.channels_last)
        starts: Iterable[int] = range(0, total, batch_size)
        if progress is not None:
            starts = progress(starts, desc="occlusion", total=-(-total // batch_size))
        for start in starts:
            job = torch.arange(start, min(start + batch_size, total), device=device)
            image_index = job // per_image
            cell = job % per_image
            tops = (cell // cols) * stride
            lefts = (cell % cols) * stride
            batch = occluded_copies(
                inputs, image_index, tops, lefts, window, fill, out=buffer[: len(job)]
            )
            logits = model_fn(batch).float()
            cut = slice(start, start + len(job))
            prob[cut], predicted[cut] = _scored(head, logits, targets[image_index])
    return OcclusionMaps(
        prob.view(q, rows, cols), predicted.view(q, rows, cols), base_prob, window, stride
    )


def _scored(
    head: Head, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(explained probability, prediction) of occluded copies: the predicted class, or for a
    multi-label head whether the explained label is still predicted (1/0)."""
    prob = head.explained_probability(logits, targets)
    if head.single_label:
        return prob, head.predictions(logits)
    return prob, (head.explained_score(logits, targets).double() >= head.logit_threshold).long()


def pixel_probability(
    prob: torch.Tensor, height: int, width: int, window: int, stride: int
) -> torch.Tensor:
    """Q×rows×cols window values -> Q×H×W: per pixel, the mean over the windows covering it."""
    q, rows, cols = prob.shape
    # fold sums each window's value over the pixels it covers; folding ones counts the windows.
    # The last windows may stick out of the image: fold onto the padded canvas, then crop.
    cover_h = (rows - 1) * stride + window
    cover_w = (cols - 1) * stride + window
    values = prob.reshape(q, 1, rows * cols).expand(q, window * window, rows * cols).float()
    summed = F.fold(values, (cover_h, cover_w), kernel_size=window, stride=stride)
    counts = F.fold(
        torch.ones_like(values[:1]), (cover_h, cover_w), kernel_size=window, stride=stride
    )
    return (summed / counts)[:, 0, :height, :width]
