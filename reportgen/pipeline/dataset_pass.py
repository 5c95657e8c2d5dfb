"""The one streamed pass over the dataset that feeds every analysis.

Per batch it keeps only what is O(1) per image: the penultimate feature vector, the logits, a
small pixel thumbnail, and whatever the analyses' collectors reduce (e.g. running top-k per
channel). Nothing else of the activations outlives the batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.config import Config
from reportgen.contract import MODEL_INPUT, Collector, PassResult, autocast
from reportgen.contract.passes import label_set_matrix, mean_of_batches, raise_no_images
from reportgen.errors import ConfigError, LayerError
from reportgen.heads import MULTICLASS, Head
from reportgen.loading.images import ImageDataset, Sample, collate_samples
from reportgen.loading.models import extract_logits, last_linear
from reportgen.loading.types import LoadedModel, find_layer
from reportgen.methods.hooks import capture_outputs
from reportgen.runtime.progress import Progress


def resolve_feature_layer(model: LoadedModel, spec: str) -> tuple[str, nn.Module, bool]:
    """(name, module, use_input). ``auto`` = the input of the last nn.Linear."""
    if spec == "auto":
        head = last_linear(model.module)
        if head is not None:
            return head[0], head[1], True
        convs = [(n, m) for n, m in model.module.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise LayerError(
                "no nn.Linear or nn.Conv2d to take features from; set model.penultimate"
            )
        return convs[-1][0], convs[-1][1], False
    return spec, find_layer(model.module, spec), False


def flatten_features(t: torch.Tensor) -> torch.Tensor:
    """Batch×... -> Batch×D: spatial maps are global-average-pooled, the rest flattened."""
    if t.ndim == 4:
        return t.float().mean(dim=(2, 3))
    return t.float().flatten(1)


def loader_workers(spec: int | str, device: torch.device) -> int:
    """DataLoader workers for ``run.workers`` (``auto``: sized to this machine and device)."""
    if spec != "auto":
        return int(spec)
    if device.type != "cuda":
        return 2  # the model's own threads need the remaining cores
    # A GPU outruns JPEG decoding by far: give decoding every core this process may use
    # (torchrun starts LOCAL_WORLD_SIZE processes per node), less one for the main loop.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = (cores or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(16, per_process - 1))


def iterate_batches(
    dataset: ImageDataset, cfg: Config, device: torch.device, indices: Sequence[int] | None = None
) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, list[Sample]]]:
    """Model batches of ``run.batch_size`` consecutive images (undecodable ones left out).

    Each DataLoader worker builds whole loader batches, so with large model batches (a GPU) and
    few of them most workers would sit idle: images are decoded in chunks that divide the model
    batch, and the chunks regrouped, so a model batch holds the same images either way.
    """
    subset: torch.utils.data.Dataset[Sample] = (
        torch.utils.data.Subset(dataset, list(indices)) if indices is not None else dataset
    )
    chunk = math.gcd(cfg.run.batch_size, 16)
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=chunk,
        shuffle=False,
        num_workers=loader_workers(cfg.run.workers, device),
        collate_fn=collate_samples,
        persistent_workers=False,
    )
    per_batch = cfg.run.batch_size // chunk
    group: list[tuple[torch.Tensor | None, torch.Tensor, list[Sample]]] = []
    for part in loader:
        group.append(part)
        if len(group) == per_batch:
            yield _regroup(group, device)
            group = []
    if group:
        yield _regroup(group, device)


def _regroup(
    parts: list[tuple[torch.Tensor | None, torch.Tensor, list[Sample]]], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor, list[Sample]]:
    tensors = [b for b, _, _ in parts if b is not None]
    batch = torch.cat(tensors) if tensors else None
    if batch is not None and device.type == "cuda":
        batch = batch.pin_memory()  # so that the copy to the GPU can overlap (non_blocking)
    idx = torch.cat([i for _, i, _ in parts])
    return batch, idx, [s for _, _, ss in parts for s in ss]


def dataset_pass(
    cfg: Config,
    model: LoadedModel,
    dataset: ImageDataset,
    device: torch.device,
    collectors: Mapping[str, Collector],
    progress: Progress,
    indices: Sequence[int] | None = None,
    allow_empty: bool = False,
    baseline: LoadedModel | None = None,
    head: Head = MULTICLASS,
    baseline_head: Head | None = None,
) -> PassResult:
    """Run the model once over the images (``indices`` selects a shard) and collect.

    ``allow_empty``: a shard may hold no readable image (torchrun ranks); otherwise that raises.
    ``baseline``: a second model fed the same batches (each image is decoded once).
    ``head``/``baseline_head``: what the two models' logits mean (recorded in the result).
    """
    module = model.module
    base_inputs_of: dict[str, nn.Module] = {}
    base_outputs_of: dict[str, nn.Module] = {}
    if baseline is not None and baseline.supports_hooks:
        _, base_module, base_use_input = resolve_feature_layer(baseline, "auto")
        (base_inputs_of if base_use_input else base_outputs_of)["__features__"] = base_module
    base_logits: list[torch.Tensor] = []
    base_feats: list[torch.Tensor] = []
    feature_name: str | None = None
    outputs_of: dict[str, nn.Module] = {}
    inputs_of: dict[str, nn.Module] = {}
    if model.supports_hooks:
        feature_name, feature_module, use_input = resolve_feature_layer(
            model, cfg.model.penultimate
        )
        (inputs_of if use_input else outputs_of)["__features__"] = feature_module
        for col in collectors.values():
            for layer in col.layers:
                if layer != MODEL_INPUT:
                    outputs_of[layer] = find_layer(module, layer)
    elif any(layer != MODEL_INPUT for col in collectors.values() for layer in col.layers):
        raise ConfigError("internal: collectors of layer outputs need a model with hooks")

    feats: list[torch.Tensor] = []
    logits_all: list[torch.Tensor] = []
    pixels: list[torch.Tensor] = []
    order: list[int] = []
    skipped: list[tuple[str, str]] = []
    manifest: list[tuple[str, int, str]] = []
    batch_sums: list[tuple[int, torch.Tensor, int]] = []
    size = cfg.preprocess.pixel_size
    pre = dataset.pre
    items = dataset.folder.items
    total = len(indices) if indices is not None else len(dataset)
    n_batches = (total + cfg.run.batch_size - 1) // cfg.run.batch_size
    position = 0

    with (
        torch.inference_mode(),
        capture_outputs(outputs_of, inputs_of=inputs_of) as captured,
        capture_outputs(base_outputs_of, inputs_of=base_inputs_of) as base_captured,
    ):
        for batch, idx, samples in progress(
            iterate_batches(dataset, cfg, device, indices), desc="dataset pass", total=n_batches
        ):
            for s in samples:
                item = items[s.index]
                manifest.append((item.relpath, s.size if s.size >= 0 else item.size, s.sha256))
                if s.error is not None:
                    skipped.append((item.relpath, s.error))
            if batch is None:
                continue
            x = batch.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            captured.clear()
            with autocast(device, cfg.run.precision):
                out = extract_logits(module(x))
            logits_all.append(out.float())
            if "__features__" in captured:
                feats.append(flatten_features(captured["__features__"]))
            if baseline is not None:
                base_captured.clear()
                with autocast(device, cfg.run.precision):
                    base_logits.append(extract_logits(baseline.module(x)).float())
                if "__features__" in base_captured:
                    base_feats.append(flatten_features(base_captured["__features__"]))
            positions = torch.arange(position, position + len(idx), device=device)
            position += len(idx)
            for col in collectors.values():
                col.update(
                    positions, {k: x if k == MODEL_INPUT else captured[k] for k in col.layers}
                )
            raw = pre.denormalise(x.float())
            batch_sums.append(
                (int(idx[0]), x.float().sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3])
            )
            small = (
                F.interpolate(raw, size=(size, size), mode="area") if raw.shape[-1] != size else raw
            )
            pixels.append((small.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
            order.extend(idx.tolist())
    if not order and not allow_empty:
        raise_no_images(dataset.folder.root, skipped)
    labels = torch.tensor([items[i].label for i in order], dtype=torch.long)
    outputs = int(logits_all[0].shape[1]) if logits_all else 0
    return PassResult(
        item_index=order,
        features=torch.cat(feats) if feats else None,
        feature_layer=feature_name,
        logits=torch.cat(logits_all) if logits_all else torch.empty(0, 0, device=device),
        labels=labels,
        pixels=torch.cat(pixels) if pixels else torch.empty(0, dtype=torch.uint8, device=device),
        skipped=skipped,
        manifest=manifest,
        mean_input=mean_of_batches(batch_sums) if batch_sums else None,
        batch_sums=batch_sums,
        baseline_logits=torch.cat(base_logits) if base_logits else None,
        baseline_features=torch.cat(base_feats) if base_feats else None,
        head=head,
        baseline_head=baseline_head if baseline is not None else None,
        label_sets=label_set_matrix([items[i] for i in order], outputs)
        if dataset.folder.label_sets
        else None,
    )
