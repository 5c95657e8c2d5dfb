"""The whole attribution check: randomisation and faithfulness for every method, and its summary."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen.errors import ReportgenError
from reportgen.heads import MULTICLASS, Head
from reportgen.methods.names import RANDOM
from reportgen.methods.trust.curves import (
    CurveKind,
    Imputation,
    curve_auc,
    deletion_insertion_curves,
    gaussian_blur,
    step_counts,
)
from reportgen.methods.trust.maps import MapFn, random_maps
from reportgen.methods.trust.randomisation import randomized_models
from reportgen.methods.trust.similarity import normalise_maps01, spearman_abs, ssim
from reportgen.methods.trust.stages import Stage, randomization_stages

ProgressFn = Callable[..., Iterator[Any]]

# Errors that mean "this method cannot explain this model" rather than a bug in the caller's data.
_METHOD_ERRORS = (RuntimeError, ValueError, NotImplementedError, ReportgenError)


# --------------------------------------------------------------------------- the whole check


@dataclass(frozen=True)
class ChecksResult:
    """Everything the section and summary.json need, as NumPy arrays and plain values."""

    methods: list[str]
    """Methods that ran, in the order asked for."""
    unavailable: dict[str, str]
    """Method -> why it could not run on this model."""
    stages: list[Stage]
    """Cascade order: the first stage is re-initialised first (logits end)."""
    threshold: float
    """A method fails randomisation when its mean Spearman after the last stage is ≥ this."""
    images: int
    """Images in the faithfulness curves."""
    randomization_images: int
    """Images in the randomisation test (the first ones)."""
    spearman: dict[str, np.ndarray]
    """Method -> R×S Spearman of |map| with the original after each cascade stage."""
    ssim: dict[str, np.ndarray]
    """Method -> R×S SSIM of the [0, 1]-scaled |map| with the original's."""
    independent_spearman: dict[str, np.ndarray] | None
    """As ``spearman``, each stage re-initialised alone (None when not computed)."""
    independent_ssim: dict[str, np.ndarray] | None
    grid_maps: dict[str, np.ndarray]
    """Method -> G×(S+1)×H×W maps of the first G images: original, then after each cascade stage."""
    fractions: np.ndarray
    """steps+1 fractions of pixels changed, 0 to 1."""
    deletion: dict[str, np.ndarray]
    """Method (and ``random``) -> Q×(steps+1) probability of the explained class."""
    insertion: dict[str, np.ndarray]
    deletion_auc: dict[str, np.ndarray]
    """Method (and ``random``) -> Q areas under the deletion curve."""
    insertion_auc: dict[str, np.ndarray]
    base_prob: np.ndarray
    """Q probabilities of the explained class on the unchanged images."""
    steps: int
    insertion_blur_sigma: float
    imputation: Imputation
    seed: int
    notes: list[str] = field(default_factory=list)

    def mean_spearman(self, method: str, independent: bool = False) -> np.ndarray:
        """S mean Spearman per stage over the images where it is defined (NaN if nowhere)."""
        table = self.independent_spearman if independent else self.spearman
        return _nanmean_columns(table[method]) if table else np.array([])

    def mean_ssim(self, method: str, independent: bool = False) -> np.ndarray:
        table = self.independent_ssim if independent else self.ssim
        return _nanmean_columns(table[method]) if table else np.array([])

    def passes_randomization(self, method: str) -> bool | None:
        """True when the maps decorrelate after full randomisation (mean Spearman < threshold)."""
        if method not in self.spearman or not self.stages:
            return None
        last = float(self.mean_spearman(method)[-1])
        return None if math.isnan(last) else last < self.threshold

    def mean_auc(self, name: str, kind: CurveKind) -> float | None:
        table = self.deletion_auc if kind == "deletion" else self.insertion_auc
        return float(np.mean(table[name])) if name in table else None

    def better_than_random(self, method: str) -> tuple[bool, bool] | None:
        """(deletion AUC below the random control's, insertion AUC above it), mean over images."""
        d, i = self.mean_auc(method, "deletion"), self.mean_auc(method, "insertion")
        rd, ri = self.mean_auc(RANDOM, "deletion"), self.mean_auc(RANDOM, "insertion")
        if d is None or i is None or rd is None or ri is None:
            return None
        return d < rd, i > ri


def _nanmean_columns(table: np.ndarray) -> np.ndarray:
    out = np.full(table.shape[1], np.nan)
    for j in range(table.shape[1]):
        col = table[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            out[j] = col.mean()
    return out


def _similarities(original: np.ndarray, randomised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image (Spearman of |maps|, SSIM of [0, 1]-scaled |maps|).

    Spearman is undefined (NaN) when the original map is constant: there is no ordering to
    preserve. A randomised map that became constant while the original was not (Grad-CAM often
    ends all-zero) has lost every ranking: it counts as 0, so that it is not left out of the mean.
    """
    rho = spearman_abs(original, randomised)
    orig_const = np.ptp(np.abs(original).reshape(len(original), -1), axis=1) == 0
    rand_const = np.ptp(np.abs(randomised).reshape(len(randomised), -1), axis=1) == 0
    rho = np.where(rand_const & ~orig_const, 0.0, rho)
    s = ssim(normalise_maps01(np.abs(original)), normalise_maps01(np.abs(randomised)))
    return rho, s


def default_blur_sigma(height: int, width: int) -> float:
    """Insertion's starting blur when none is given: σ = 1/8 of the shorter side (≥ 1 px).

    Strong enough that the blurred image has lost most of its class evidence on small inputs
    (on 32-px digits σ = 2 still leaves the class at p ≈ 0.97, σ = 4 brings it to ≈ 0.5), so the
    insertion curve has somewhere to rise from.
    """
    return max(1.0, min(height, width) / 8.0)


def run_attribution_checks(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    methods: Mapping[str, MapFn],
    *,
    stages: Sequence[Stage] | None = None,
    mean_fill: torch.Tensor,
    steps: int = 16,
    threshold: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
    randomization_images: int | None = None,
    grid_images: int = 2,
    independent: bool = False,
    insertion_blur_sigma: float | None = None,
    imputation: Imputation = "constant",
    road_noise: float = 0.01,
    original_maps: Mapping[str, torch.Tensor] | None = None,
    randomization_methods: Mapping[str, MapFn] | None = None,
    progress: ProgressFn | None = None,
    head: Head = MULTICLASS,
) -> ChecksResult:
    """Randomisation test and deletion/insertion faithfulness for each method on these images.

    ``model`` (eval mode) is never modified: randomisation uses a deep copy. ``inputs``: Q×C×H×W
    on the model's device; ``targets``: the explained classes. ``methods``: from
    :func:`attribution_methods` (or any :data:`MapFn`); one that raises on the original model is
    reported in ``unavailable`` and the others go on. ``stages``: default
    :func:`randomization_stages`. ``mean_fill``: C values in model input space (the dataset's mean
    pixel), deletion's fill. ``randomization_images``: the first R images are re-explained after
    each stage (default all); ``grid_images``: how many keep every stage's maps for the figure.
    ``insertion_blur_sigma``: in pixels (None: :func:`default_blur_sigma`). ``batch_size``: jobs per
    forward pass in the curves. ``original_maps``: method -> Q×H×W maps already computed on
    ``model`` with the same functions (the saliency section's), not recomputed. ``progress``: an
    optional wrapper of iterables (the report's bar). ``randomization_methods``: method -> the
    function the randomisation test uses instead (its original map is then computed with it too),
    e.g. occlusion on a coarser grid, which costs a forward per window per image per stage; the
    faithfulness curves always use ``methods``. ``head``: whose explained probability the
    curves record (bind the same head into ``methods``).
    """
    q, c, h, w = inputs.shape
    device = inputs.device
    # Plain copies: tensors made under inference_mode (a query batch) cannot enter autograd.
    inputs = inputs.detach().clone()
    targets = targets.detach().to(device).clone()
    r = q if randomization_images is None else max(0, min(q, randomization_images))
    g = max(0, min(r, grid_images))
    notes: list[str] = []
    unavailable: dict[str, str] = {}
    original: dict[str, np.ndarray] = {}
    original_t: dict[str, torch.Tensor] = {}

    def wrap(items: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
        return progress(items, desc=desc, total=total) if progress is not None else items

    for name in wrap(list(methods), "attribution checks: maps", len(methods)):
        try:
            given = None if original_maps is None else original_maps.get(name)
            m = given if given is not None else methods[name](model, inputs, targets)
            m = m.detach().float().to(device)
        except _METHOD_ERRORS as exc:
            unavailable[name] = str(exc) or type(exc).__name__
            continue
        original_t[name] = m
        original[name] = m.cpu().numpy()
    ran = [n for n in methods if n in original]

    if stages is None:
        stages = randomization_stages(model, inputs[:1])
    stages = list(stages)
    s = len(stages)
    spearman = {n: np.full((r, s), np.nan) for n in ran}
    ssim_t = {n: np.full((r, s), np.nan) for n in ran}
    grid = {n: np.zeros((g, s + 1, h, w), np.float32) for n in ran}
    x_r, t_r = inputs[:r], targets[:r]
    rand_fns = {n: (randomization_methods or {}).get(n, methods[n]) for n in ran}
    # The randomisation test compares like with like: a method it runs with other settings has
    # its original map computed with those settings as well.
    original_r: dict[str, np.ndarray] = {}
    for n in ran:
        if rand_fns[n] is methods[n] or r == 0:
            original_r[n] = original[n][:r]
        else:
            original_r[n] = rand_fns[n](model, x_r, t_r).detach().float().cpu().numpy()
        grid[n][:, 0] = original_r[n][:g]

    def randomisation(cascade: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        rho_out = {n: np.full((r, s), np.nan) for n in ran}
        ssim_out = {n: np.full((r, s), np.nan) for n in ran}
        if r == 0 or not ran:
            return rho_out, ssim_out
        failed: set[str] = set()
        copies = randomized_models(model, stages, seed=seed, cascade=cascade)
        label = "attribution checks: randomisation" + ("" if cascade else " (independent)")
        # The copies are made one after another on one deep copy: consume them lazily.
        for j, (stage, copy_model) in enumerate(wrap(copies, label, s)):
            for n in ran:
                if n in failed:
                    continue
                try:
                    m = rand_fns[n](copy_model, x_r, t_r).detach().float().cpu().numpy()
                except _METHOD_ERRORS as exc:
                    failed.add(n)
                    notes.append(
                        f"{n} failed on the model randomised down to stage {stage.name}: {exc}"
                    )
                    continue
                rho_out[n][:, j], ssim_out[n][:, j] = _similarities(original_r[n], m)
                if cascade and g:
                    grid[n][:, j + 1] = m[:g]
        return rho_out, ssim_out

    spearman, ssim_t = randomisation(True)
    ind_rho: dict[str, np.ndarray] | None = None
    ind_ssim: dict[str, np.ndarray] | None = None
    if independent:
        ind_rho, ind_ssim = randomisation(False)

    # Faithfulness: every method's map and the random control, both curves, batched jobs.
    names = [*ran, RANDOM]
    stacked = torch.stack([*(original_t[n] for n in ran), random_maps((q, h, w), seed).to(device)])
    sigma = default_blur_sigma(h, w) if insertion_blur_sigma is None else insertion_blur_sigma
    fill = mean_fill.to(device, inputs.dtype).reshape(1, c, 1, 1)
    blurred = gaussian_blur(inputs, sigma)
    deletion, insertion, base = deletion_insertion_curves(
        model,
        inputs,
        targets,
        stacked,
        fill=fill,
        blurred=blurred,
        steps=steps,
        batch_size=batch_size,
        imputation=imputation,
        road_noise=road_noise,
        seed=seed,
        head=head,
    )
    fractions = step_counts(h * w, steps) / float(h * w)
    return ChecksResult(
        methods=ran,
        unavailable=unavailable,
        stages=stages,
        threshold=threshold,
        images=q,
        randomization_images=r,
        spearman=spearman,
        ssim=ssim_t,
        independent_spearman=ind_rho,
        independent_ssim=ind_ssim,
        grid_maps=grid,
        fractions=fractions,
        deletion={n: deletion[i] for i, n in enumerate(names)},
        insertion={n: insertion[i] for i, n in enumerate(names)},
        deletion_auc={n: curve_auc(fractions, deletion[i]) for i, n in enumerate(names)},
        insertion_auc={n: curve_auc(fractions, insertion[i]) for i, n in enumerate(names)},
        base_prob=base,
        steps=steps,
        insertion_blur_sigma=float(sigma),
        imputation=imputation,
        seed=seed,
        notes=notes,
    )


# --------------------------------------------------------------------------- summary


def _float_or_none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def summary_dict(result: ChecksResult) -> dict[str, Any]:
    """summary.json's ``attribution_checks`` entry (JSON-safe; None where not computed)."""
    methods: dict[str, Any] = {}
    for name in [*result.methods, *result.unavailable]:
        if name in result.unavailable:
            methods[name] = {
                "randomization": {"spearman": None, "ssim": None},
                "passes_randomization": None,
                "deletion_auc": None,
                "insertion_auc": None,
            }
            continue
        methods[name] = {
            "randomization": {
                "spearman": [_float_or_none(v) for v in result.mean_spearman(name)],
                "ssim": [_float_or_none(v) for v in result.mean_ssim(name)],
            },
            "passes_randomization": result.passes_randomization(name),
            "deletion_auc": result.mean_auc(name, "deletion"),
            "insertion_auc": result.mean_auc(name, "insertion"),
        }
    return {
        "images": result.images,
        "stages": [st.name for st in result.stages],
        "stage_parameters": [st.parameters for st in result.stages],
        "threshold": result.threshold,
        "methods": methods,
        "random": {
            "deletion_auc": result.mean_auc(RANDOM, "deletion"),
            "insertion_auc": result.mean_auc(RANDOM, "insertion"),
        },
    }


def headline_metrics(result: ChecksResult) -> dict[str, float | int | None]:
    """A few numbers for gates: counts of methods failing a check, best and random AUCs."""
    ran = result.methods
    fails = [m for m in ran if result.passes_randomization(m) is False]
    not_better = [m for m in ran if result.better_than_random(m) != (True, True)]
    deletion = [a for m in ran if (a := result.mean_auc(m, "deletion")) is not None]
    insertion = [a for m in ran if (a := result.mean_auc(m, "insertion")) is not None]
    return {
        "attribution_checks_methods": len(ran),
        "attribution_checks_methods_unavailable": len(result.unavailable),
        "attribution_checks_methods_failing_randomization": len(fails),
        "attribution_checks_methods_not_better_than_random": len(not_better),
        "attribution_checks_best_deletion_auc": min(deletion) if deletion else None,
        "attribution_checks_best_insertion_auc": max(insertion) if insertion else None,
        "attribution_checks_random_deletion_auc": result.mean_auc(RANDOM, "deletion"),
        "attribution_checks_random_insertion_auc": result.mean_auc(RANDOM, "insertion"),
    }
