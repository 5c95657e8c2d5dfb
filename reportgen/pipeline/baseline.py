"""A baseline model inside a run: loaded with the same safety rules, fed the same dataset pass,
compared with the new model through the same :func:`~reportgen.compare.metrics.build_compare`
that ``reportgen compare`` uses on two archived report folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from reportgen.compare.metrics import ExplanationMaps, build_compare, compare_summary
from reportgen.compare.present import compare_section
from reportgen.config import Config, ModelConfig
from reportgen.contract import DISCOVERED_SLICES, AnalysisContext
from reportgen.errors import ConfigError, ReportgenError
from reportgen.heads import Head
from reportgen.loading.models import first_weight_4d, load_model
from reportgen.loading.types import LoadedModel
from reportgen.methods import trust
from reportgen.pipeline.outputs import run_predictions
from reportgen.report.section import Section

THUMB_SIZE = 72


def load_baseline(cfg: Config) -> LoadedModel | None:
    """The baseline model, or None when the run has none. Errors name the baseline's keys."""
    b = cfg.baseline
    if not b.enabled:
        return None
    arch = b.arch or cfg.model.arch
    if b.weights and not arch:
        raise ConfigError(
            "baseline.arch: the new model is a whole checkpoint, so the baseline's architecture "
            "cannot default to it; name it with --baseline-model"
        )
    spec = ModelConfig(
        arch=arch,
        weights=b.weights,
        checkpoint=b.checkpoint,
        trust_checkpoint=b.trust_checkpoint,
    )
    try:
        return load_model(spec)
    except ReportgenError as exc:
        message = str(exc).replace("--trust-checkpoint", "--trust-baseline-checkpoint")
        raise type(exc)(f"baseline: {message}") from None


def _maps(
    model: LoadedModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    head: Head,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Gradient and Grad-CAM maps (Q×H×W) of one model for the query images, with the reductions
    the saliency section and the attribution checks use, of the score ``head`` explains."""
    wanted = ["gradient", "gradcam"] if model.supports_hooks else ["gradient"]
    maps: dict[str, np.ndarray] = {}
    notes: list[str] = []
    fns = trust.attribution_methods(wanted, batch_size=batch_size, head=head)
    for name, fn in fns.items():
        try:
            maps[name] = fn(model.module, inputs, targets).detach().float().cpu().numpy()
        except (RuntimeError, ValueError, ReportgenError) as exc:
            notes.append(f"{name} of the {model.arch} model unavailable: {exc}")
    return maps, notes


def _discovered(failing: np.ndarray | None) -> dict[str, np.ndarray]:
    """The slices section's flagged discovered clusters as masks over the pass (none when the
    section did not run or flagged none)."""
    if failing is None:
        return {}
    return {f"D{i}": failing == i for i in range(1, int(failing.max(initial=0)) + 1)}


def compare_with_baseline(
    ctx: AnalysisContext, baseline: LoadedModel, cfg: Config
) -> tuple[Section, dict[str, Any]]:
    """The "Changes against the baseline" section and summary.json's ``compare`` object."""
    res = ctx.pass_result
    if res.baseline_logits is None:
        raise ReportgenError("the dataset pass produced no baseline predictions")
    new = run_predictions(res, ctx.folder, res.logits, "this model")
    old = run_predictions(res, ctx.folder, res.baseline_logits, "the baseline", res.baseline_head)
    paths = new.paths
    notes: list[str] = []
    left_out: dict[str, str] = {}
    maps = None
    if ctx.queries:
        batch = ctx.query_batch()
        old_head = res.baseline_head or res.head
        old_maps, old_notes = _maps(baseline, batch.inputs, batch.targets, ctx.batch_size, old_head)
        new_maps, new_notes = _maps(
            ctx.model, batch.inputs, batch.targets, ctx.batch_size, res.head
        )
        common = [m for m in new_maps if m in old_maps]
        maps = ExplanationMaps(
            list(batch.positions),
            {m: old_maps[m] for m in common},
            {m: new_maps[m] for m in common},
        )
        notes += old_notes + new_notes
    else:
        left_out["explanations"] = "no query images (data.queries is 0)"
    filters = None
    ours, theirs = first_weight_4d(ctx.model.module), first_weight_4d(baseline.module)
    if ours is not None and theirs is not None and ours[1].shape == theirs[1].shape:
        filters = (
            theirs[1].detach().float().cpu().numpy(),
            ours[1].detach().float().cpu().numpy(),
        )
    elif ours is not None and theirs is not None:
        left_out["filters"] = (
            f"the first convolutions differ in shape ({tuple(theirs[1].shape)} in the baseline, "
            f"{tuple(ours[1].shape)} now)"
        )

    def features(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.float().cpu().numpy()

    result = build_compare(
        old,
        new,
        features_old=features(res.baseline_features),
        features_new=features(res.features),
        maps=maps,
        filters=filters,
        seed=cfg.run.seed,
        left_out=left_out,
        notes=notes,
        device=ctx.device,
        discovered=_discovered(ctx.shared_array(DISCOVERED_SLICES)),
    )
    position = {p: i for i, p in enumerate(paths)}

    def thumbnails(wanted: Sequence[str]) -> list[np.ndarray | None]:
        known = [position[p] for p in wanted if p in position]
        images = iter(ctx.display_images(known, THUMB_SIZE))
        return [next(images) if p in position else None for p in wanted]

    section = compare_section(result, thumbnails=thumbnails)
    summary = compare_summary(result)
    summary["baseline"] = {
        "arch": baseline.arch,
        "sha256": baseline.sha256,
        "checkpoint_file": baseline.source,
        "checkpoint_kind": baseline.kind,
        "num_classes": baseline.num_classes,
    }
    return section, summary
