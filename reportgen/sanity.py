"""Can these attribution maps be trusted? Compute only: tensors in, NumPy out, explicit arguments.

Two families of checks, both from the literature (see "Trusting attribution maps" in the field notes):

* **Model-parameter randomisation** (Adebayo et al., NeurIPS 2018). The model's parameterised
  stages are re-initialised from the logits downwards (cascading; optionally one stage at a time,
  "independent"), every attribution method is recomputed after each step, and each map is compared
  with the original one by the Spearman rank correlation of the absolute maps and by SSIM of the
  absolute maps min-max scaled to [0, 1]. A map that stays similar after the whole network has been
  re-initialised depends on the image, not on what the model learnt.
* **Faithfulness** (Petsiuk et al., BMVC 2018). Pixels are deleted (replaced by a fill, the dataset's
  mean pixel by default) or inserted (into a blurred copy of the image) most-important-first, and the
  explained class's softmax probability is recorded; the area under each curve over the fraction of
  pixels changed, in [0, 1], summarises it (deletion: lower is better; insertion: higher is better).
  A seeded uniform random map is the control. ROAD's noisy linear imputation (Rong et al., ICML 2022)
  can replace the constant fill, so that removed pixels do not form an out-of-distribution pattern.

Randomisation always works on a deep copy of the model: the caller's model is never modified.
Re-initialisation runs each module's own ``reset_parameters`` on CPU tensors under a CPU generator
seeded with ``seed`` (inside :func:`torch.random.fork_rng`, so the caller's random state is left as
it was), which makes the random weights the same on every device and in every run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.stats import rankdata
from torch import nn

from reportgen import attribution
from reportgen.attribution_names import METHODS, RANDOM
from reportgen.errors import LayerError, ReportgenError, did_you_mean
from reportgen.hooks import hooks
from reportgen.loading.models import extract_logits, find_layer
from reportgen.perturbation import occlusion_maps, pixel_probability, resolve_geometry

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""An attribution method: (model, Q×C×H×W inputs, Q targets) -> Q×H×W map on the inputs' device."""

ProgressFn = Callable[..., Iterator[Any]]
Imputation = Literal["constant", "road"]
CurveKind = Literal["deletion", "insertion"]


MIN_AUTO_STAGES = 5
"""Automatic stage discovery splits containers until it has at least this many stages (or cannot)."""
MAX_AUTO_STAGES = 10
"""... and merges neighbouring stages (smallest first) when it found more than this."""

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

# Errors that mean "this method cannot explain this model" rather than a bug in the caller's data.
_METHOD_ERRORS = (RuntimeError, ValueError, NotImplementedError, ReportgenError)


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """One step of the randomisation cascade."""

    name: str
    """What the report calls it: a module name (``layer4``), or several joined (``conv1+bn1``)."""
    modules: tuple[str, ...]
    """Modules whose own parameters (``recurse=False``) and buffers the step re-initialises."""


@dataclass
class _CallRecord:
    order: dict[str, int] = field(default_factory=dict)
    """Module name -> index of its first call (forward pre-hook) in the sample forward pass."""
    spatial: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    """Module name -> H×W of its (last) output when that is a 4-D map, else None."""


def _record_calls(model: nn.Module, sample: torch.Tensor) -> _CallRecord:
    record = _CallRecord()

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any) -> None:
            record.order.setdefault(name, len(record.order))

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            record.spatial[name] = (
                (int(t.shape[2]), int(t.shape[3]))
                if isinstance(t, torch.Tensor) and t.ndim == 4
                else None
            )

        return hook

    def register() -> list[Any]:
        handles = []
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name)))
        return handles

    with torch.inference_mode(), hooks(register):
        model(sample)
    return record


def _owns_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _units_under(model: nn.Module, name: str) -> list[str]:
    """Names of the modules at or below ``name`` that own parameters directly (registration order)."""
    root = model.get_submodule(name) if name else model
    prefix = f"{name}." if name else ""
    return [
        (prefix + sub).rstrip(".") if sub else name
        for sub, m in root.named_modules()
        if _owns_parameters(m)
    ]


@dataclass
class _Member:
    name: str
    subtree: bool
    """True: the module and everything below it; False: only the module's own parameters."""


def _split(model: nn.Module, name: str, record: _CallRecord) -> list[list[_Member]]:
    """A called container -> groups of its called children with parameters, in call order.

    Consecutive children that write maps of the same size form one group, leaves with leaves (a
    conv and its batch norm; a VGG block between two poolings) and containers with containers
    (MobileNet's or EfficientNet's blocks at one resolution); every other child is a group of its
    own. The container's own parameters (a ViT's class token) go with the input-most group.
    """
    module = model.get_submodule(name) if name else model
    prefix = f"{name}." if name else ""
    children = [
        (prefix + child_name, child)
        for child_name, child in module.named_children()
        if prefix + child_name in record.order and _units_under(model, prefix + child_name)
    ]
    children.sort(key=lambda nc: record.order[nc[0]])
    groups: list[list[_Member]] = []
    run_key: tuple[bool, tuple[int, int]] | None = None
    for child_name, child in children:
        is_leaf = not any(_owns_parameters(m) for m in list(child.modules())[1:])
        size = record.spatial.get(child_name)
        key = None if size is None else (is_leaf, size)
        if key is not None and groups and key == run_key:
            groups[-1].append(_Member(child_name, True))
        else:
            groups.append([_Member(child_name, True)])
        run_key = key
    if groups and _owns_parameters(module):
        groups[0].insert(0, _Member(name, False))
    return groups


def _group_units(model: nn.Module, group: list[_Member]) -> list[str]:
    units: list[str] = []
    for member in group:
        units += _units_under(model, member.name) if member.subtree else [member.name]
    return list(dict.fromkeys(units))


def _group_name(group: list[_Member]) -> str:
    names = [m.name or "model" for m in group if m.subtree] or [m.name or "model" for m in group]
    if len(names) <= 3:
        return "+".join(names)
    return f"{names[0]}…{names[-1]}"


def _param_count(model: nn.Module, units: Iterable[str]) -> int:
    modules = dict(model.named_modules())
    return sum(p.numel() for u in units for p in modules[u].parameters(recurse=False))


def _automatic_groups(model: nn.Module, record: _CallRecord) -> list[list[_Member]]:
    """Split the biggest splittable group until there are enough, then tidy up (input first)."""
    modules = dict(model.named_modules())
    groups: list[list[_Member]] = [[_Member("", True)]]

    def splits(group: list[_Member]) -> list[list[_Member]] | None:
        whole = [m for m in group if m.subtree]
        own = [m for m in group if not m.subtree]
        parts: list[list[_Member]] = []
        if len(whole) == 1:
            name = whole[0].name
            if any(_owns_parameters(m) for m in list(modules[name].modules())[1:]):
                parts = _split(model, name, record)
        elif len(whole) >= 2:
            parts = [[m] for m in whole]
        if len(parts) < 2:
            return None
        parts[0] = own + parts[0]
        return parts

    while len(groups) < MIN_AUTO_STAGES:
        candidates = [(i, s) for i, g in enumerate(groups) if (s := splits(g)) is not None]
        if not candidates:
            break
        # Open containers (the model's own structure) before cutting runs of layers apart;
        # among equals, the one with the most parameters.
        i, parts = max(
            candidates,
            key=lambda c: (
                sum(m.subtree for m in groups[c[0]]) == 1,
                _param_count(model, _group_units(model, groups[c[0]])),
            ),
        )
        groups[i : i + 1] = parts

    # A group holding only normalisation layers belongs with the layer it normalises (before it).
    tidy: list[list[_Member]] = []
    for g in groups:
        only_norm = all(isinstance(modules[m.name], _NORM_TYPES) and m.subtree for m in g)
        if only_norm and tidy:
            tidy[-1] = tidy[-1] + g
        else:
            tidy.append(g)
    return tidy


def _stage_position(record: _CallRecord, model: nn.Module, units: Sequence[str]) -> int:
    """Call position of a stage: the first call of any of its modules (or their ancestors)."""
    best = math.inf
    for u in units:
        name = u
        while name not in record.order and name:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        best = min(best, record.order.get(name, math.inf))
    return int(best) if best != math.inf else 1 << 30


def randomization_stages(
    model: nn.Module, sample_input: torch.Tensor, names: Sequence[str] | None = None
) -> list[Stage]:
    """The randomisation cascade's stages, logits first (the order they are re-initialised in).

    Automatic (``names`` None): from one forward pass of ``sample_input`` with temporary hooks,
    the model is cut along its module tree in call order: the biggest container is opened until
    there are at least :data:`MIN_AUTO_STAGES` stages; a container's leaf children that write maps
    of the same size stay together (a conv with its batch norm, a VGG block between poolings),
    normalisation-only groups join the layer before them, more than :data:`MAX_AUTO_STAGES` are
    merged pairwise (smallest first), and the last parameterised module (the logits layer) is
    always a stage of its own. E.g. a torchvision ResNet: ``fc, layer4, layer3, layer2, layer1,
    conv1+bn1``. Modules never called in the forward pass are left out.

    Explicit ``names``: one stage per named module (its whole subtree), ordered by call order.
    Unknown names, names without parameters and overlapping names raise :class:`LayerError`.
    """
    with torch.no_grad():
        record = _record_calls(model, sample_input[:1])
    if names is not None:
        return _explicit_stages(model, record, list(names))

    groups = _automatic_groups(model, record)
    unit_groups = [(_group_name(g), _group_units(model, g)) for g in groups]
    unit_groups = [(n, u) for n, u in unit_groups if u]
    unit_groups.sort(key=lambda nu: _stage_position(record, model, nu[1]))
    # The logits layer alone at the top of the cascade (Adebayo et al. start there).
    called_units = [u for _, us in unit_groups for u in us if u in record.order]
    if called_units:
        last = max(called_units, key=lambda u: record.order[u])
        for i, (n, us) in enumerate(unit_groups):
            if last in us and len(us) > 1:
                rest = [u for u in us if u != last]
                rest_name = "+".join(rest) if len(rest) <= 2 else f"{n} except {last}"
                modules = dict(model.named_modules())
                if i > 0 and all(isinstance(modules[u], _NORM_TYPES) for u in rest):
                    # A final norm (ConvNeXt's head) joins the block it normalises.
                    prev_name, prev_units = unit_groups[i - 1]
                    unit_groups[i - 1 : i + 1] = [
                        (f"{prev_name}+{rest_name}", prev_units + rest),
                        (last, [last]),
                    ]
                else:
                    unit_groups[i : i + 1] = [(rest_name, rest), (last, [last])]
                break
    while len(unit_groups) > MAX_AUTO_STAGES:
        # Never merge the logits stage (the last one).
        sizes = [
            _param_count(model, unit_groups[i][1]) + _param_count(model, unit_groups[i + 1][1])
            for i in range(len(unit_groups) - 2)
        ]
        i = int(np.argmin(sizes))
        (n1, u1), (n2, u2) = unit_groups[i], unit_groups[i + 1]
        first, last_name = n1.split("…")[0].split("+")[0], n2.split("…")[-1].split("+")[-1]
        unit_groups[i : i + 2] = [(f"{first}…{last_name}", u1 + u2)]
    return [Stage(n, tuple(us)) for n, us in reversed(unit_groups)]


def _explicit_stages(model: nn.Module, record: _CallRecord, names: list[str]) -> list[Stage]:
    modules = dict(model.named_modules())
    valid = [n for n in modules if n and _units_under(model, n)]
    stages: list[tuple[int, Stage]] = []
    owner: dict[str, str] = {}
    for name in names:
        if name not in modules or not name:
            shown = ", ".join(valid[:40]) + (
                f", … ({len(valid) - 40} more)" if len(valid) > 40 else ""
            )
            raise LayerError(
                f"randomisation stage '{name}' is not a module of the model"
                f"{did_you_mean(name, valid)}; modules with parameters: {shown}"
            )
        units = _units_under(model, name)
        if not units:
            raise LayerError(
                f"randomisation stage '{name}' has no parameters to re-initialise; "
                f"modules with parameters: {', '.join(valid[:40])}"
            )
        for u in units:
            if u in owner:
                raise LayerError(
                    f"randomisation stages '{owner[u]}' and '{name}' overlap (both contain '{u}')"
                )
            owner[u] = name
        stages.append((_stage_position(record, model, units), Stage(name, tuple(units))))
    stages.sort(key=lambda ps: -ps[0])
    return [s for _, s in stages]


# --------------------------------------------------------------------------- randomised copies


def _reinit_module(module: nn.Module) -> None:
    """Re-initialise ``module``'s own parameters and buffers from the default CPU generator.

    ``reset_parameters`` runs on CPU tensors (so the draws do not depend on the device); any
    parameter below the module that it touched is restored, because it belongs to another stage.
    Modules without ``reset_parameters`` get their own parameters redrawn from a normal with each
    tensor's mean and standard deviation.
    """
    own = list(module.named_parameters(recurse=False)) + [
        (n, b) for n, b in module.named_buffers(recurse=False) if b is not None
    ]
    own_names = {n for n, _ in own}
    below = {
        n: t.detach().clone()
        for n, t in [*module.named_parameters(), *module.named_buffers()]
        if n not in own_names
    }
    reset = getattr(module, "reset_parameters", None)
    with torch.no_grad():
        if callable(reset):
            devices = {n: t.device for n, t in own}
            for _, t in own:
                t.data = t.data.cpu()
            try:
                reset()
            finally:
                # Look the tensors up again: a reset may have replaced them.
                for n, dev in devices.items():
                    cur = module._parameters.get(n, module._buffers.get(n))
                    if cur is not None:
                        cur.data = cur.data.to(dev)
            for n, saved in below.items():
                path, _, leaf = n.rpartition(".")
                owner = module.get_submodule(path)
                current = owner._parameters.get(leaf, owner._buffers.get(leaf))
                if current is not None:
                    current.copy_(saved)
        else:
            for _, p in module.named_parameters(recurse=False):
                mean = float(p.float().mean())
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                scale = std if std > 0 else (abs(mean) or 1.0)
                draw = torch.randn(p.shape, generator=torch.default_generator) * scale + mean
                p.copy_(draw.to(p.device, p.dtype))


def randomize_stage(model: nn.Module, stage: Stage, seed: int) -> None:
    """Re-initialise one stage of ``model`` in place, from a CPU generator seeded with ``seed``.

    The caller's global random state is restored afterwards. Every stage starts from the same seed
    (as Quantus' MPRT does), so a stage gets the same random weights in the cascading and the
    independent variant. An untrained model built right after ``torch.manual_seed(seed)`` would
    get its own initial weights back at its first stage: test models need another seed.
    """
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for name in stage.modules:
            _reinit_module(modules[name])


def randomized_models(
    model: nn.Module, stages: Sequence[Stage], *, seed: int, cascade: bool = True
) -> Iterator[tuple[Stage, nn.Module]]:
    """Yield (stage, randomised copy) for each stage, in the order given (logits first).

    ``cascade``: stage k's copy has stages 0..k re-initialised (Adebayo's cascading test);
    otherwise only stage k (independent). One deep copy is made and changed between yields, so use
    each yielded model before asking for the next. ``model`` itself is never modified.
    """
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for stage in stages:
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not cascade:
            for name in stage.modules:
                m = modules[name]
                for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                    saved.append((t, t.detach().clone()))
        randomize_stage(work, stage, seed)
        yield stage, work
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)


# --------------------------------------------------------------------------- methods


def attribution_methods(
    names: Sequence[str],
    *,
    smoothgrad_samples: int = 25,
    smoothgrad_noise: float = 0.15,
    ig_steps: int = 32,
    ig_method: attribution.IGMethod = "gausslegendre",
    ig_baseline: torch.Tensor | None = None,
    gradcam_layer: str | None = None,
    occlusion_window: int = 0,
    occlusion_stride: int = 0,
    occlusion_fill: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
    occlusion_batch_size: int = 64,
) -> dict[str, MapFn]:
    """Method name -> function (model, inputs, targets) -> Q×H×W map, with the parameters bound.

    The maps are the ones the saliency and occlusion sections draw: gradient, SmoothGrad and
    guided backprop: max over channels of |gradient|; Grad-CAM: upsampled to the input size;
    integrated gradients: |sum over channels|; occlusion: the probability drop per pixel
    (unoccluded minus the mean over the windows covering the pixel; signed).
    ``ig_baseline``: model input space, broadcastable to the inputs (None: zeros).
    ``gradcam_layer``: module name (None: the last spatial layer of the model it is called with).
    ``occlusion_fill``: C values in model input space (None: zeros). A function raises (and the
    checks report the method as unavailable) when the method cannot run on the model.
    """
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; known: {', '.join(METHODS)}")

    def gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return attribution.saliency_map(attribution.input_gradients(model, x, t, batch_size))

    def smoothgrad(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = attribution.smoothgrad(
            model, x, t, smoothgrad_samples, smoothgrad_noise, seed, batch_size
        )
        return attribution.saliency_map(g)

    def guided(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return attribution.saliency_map(attribution.guided_backprop(model, x, t, batch_size))

    def gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        layer = gradcam_layer or attribution.default_gradcam_layer(model, x[:1])
        cam = attribution.grad_cam(model, x, t, find_layer(model, layer), batch_size)
        return attribution.upsample_maps(cam, (x.shape[2], x.shape[3]))

    def integrated(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ig = attribution.integrated_gradients(
            model, x, t, ig_baseline, ig_steps, ig_method, batch_size
        )
        return ig.sum(dim=1).abs()

    def occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        window, stride = resolve_geometry(h, w, occlusion_window, occlusion_stride)
        fill = (
            torch.zeros(x.shape[1], device=x.device)
            if occlusion_fill is None
            else occlusion_fill.to(x.device).flatten()
        )
        maps = occlusion_maps(
            lambda b: extract_logits(model(b)), x, t, window, stride, fill, occlusion_batch_size
        )
        pixel = pixel_probability(maps.prob, h, w, window, stride)
        return maps.base_prob[:, None, None] - pixel

    table: dict[str, MapFn] = {
        "gradient": gradient,
        "smoothgrad": smoothgrad,
        "guided_backprop": guided,
        "gradcam": gradcam,
        "integrated_gradients": integrated,
        "occlusion": occlusion,
    }
    return {n: table[n] for n in names}


def random_maps(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Q×H×W uniform [0, 1) maps from a CPU generator seeded with ``seed`` (the control)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen)


# --------------------------------------------------------------------------- similarity


def spearman_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of |a| and |b| per map (over the last two axes).

    ``a``, ``b``: (..., H, W). Ties share their average rank. NaN where a map is constant (the
    correlation is undefined there, as in :func:`scipy.stats.spearmanr`).
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    lead = a.shape[:-2]
    fa = np.abs(a.reshape(-1, a.shape[-2] * a.shape[-1]).astype(np.float64))
    fb = np.abs(b.reshape(-1, b.shape[-2] * b.shape[-1]).astype(np.float64))
    ra = rankdata(fa, axis=1)
    rb = rankdata(fb, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return rho.reshape(lead)


def normalise_maps01(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map (last two axes) to [0, 1]; a constant map becomes all zeros."""
    m = maps.astype(np.float64)
    lo = m.min(axis=(-2, -1), keepdims=True)
    hi = m.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    window: Literal["gaussian", "uniform"] = "gaussian",
    sigma: float = 1.5,
    win_size: int = 7,
) -> np.ndarray:
    """Mean structural similarity per map (last two axes) of maps already scaled to [0, 1].

    Wang et al. (2004) with data range 1, K1 = 0.01, K2 = 0.03, as scikit-image computes it:
    ``gaussian``: Gaussian-weighted window (σ = ``sigma``, truncated at 3.5σ) with population
    covariances; ``uniform``: a ``win_size`` box with sample covariances (scikit-image's default).
    Local statistics use reflected borders; the mean leaves out the half-window border. A map
    smaller than the window is compared with the largest odd box that fits.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    h, w = a.shape[-2:]
    x = a.reshape(-1, h, w).astype(np.float64)
    y = b.reshape(-1, h, w).astype(np.float64)
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    if window == "gaussian" and 2 * radius + 1 <= min(h, w):
        size = 2 * radius + 1

        def filt(v: np.ndarray) -> np.ndarray:
            return np.asarray(
                ndimage.gaussian_filter(
                    v, sigma=(0, sigma, sigma), truncate=truncate, mode="reflect"
                )
            )

        cov_norm = 1.0
    else:
        size = min(win_size, min(h, w) - (1 - min(h, w) % 2))
        if window == "gaussian":
            size = min(h, w) - (1 - min(h, w) % 2)

        def filt(v: np.ndarray) -> np.ndarray:
            return np.asarray(ndimage.uniform_filter(v, size=(1, size, size), mode="reflect"))

        n = size * size
        cov_norm = n / (n - 1) if n > 1 else 1.0
    c1, c2 = 0.01**2, 0.03**2
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (size - 1) // 2
    inner = s[:, pad : h - pad, pad : w - pad]
    return inner.mean(axis=(1, 2)).reshape(a.shape[:-2])


# --------------------------------------------------------------------------- deletion / insertion


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B×C×H×W images (σ in pixels, kernel radius 4σ, mirrored borders).

    Mirrored as :func:`torch.nn.functional.pad`'s ``reflect`` (scipy's ``mirror``); the radius is
    capped at the image size minus one, which that padding needs.
    """
    if sigma <= 0:
        return images.clone()
    _, c, h, w = images.shape
    radius = min(int(4.0 * sigma + 0.5), h - 1, w - 1)
    if radius < 1:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_ROAD_STENCIL = (
    (1 / 12, 1 / 6, 1 / 12),
    (1 / 6, 0.0, 1 / 6),
    (1 / 12, 1 / 6, 1 / 12),
)


def noisy_linear_imputation(
    images: torch.Tensor,
    unknown: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022), batched on the images' device.

    Each unknown pixel (``unknown``: B×H×W, True = impute) is set to the weighted mean of its eight
    neighbours (weights 1/6 side, 1/12 diagonal, normalised over the neighbours inside the image),
    the known pixels fixed, per channel; then Gaussian noise of σ = ``noise`` is added to the
    imputed pixels (drawn from ``generator`` on the CPU). The linear system is symmetric positive
    (semi-)definite and is solved by conjugate gradients, one system per image and channel, all in
    the same batched convolutions. Pixels cut off from every known pixel keep ``init`` (default:
    the image itself), which is where the solver starts.
    """
    b, c, h, w = images.shape
    dtype, device = images.dtype, images.device
    kernel = torch.tensor(_ROAD_STENCIL, dtype=dtype, device=device).view(1, 1, 3, 3)

    def conv(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, padding=1)

    m = unknown[:, None].to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    x = images.reshape(b * c, 1, h, w)
    z = conv(torch.ones(1, 1, h, w, dtype=dtype, device=device))
    rhs = m * conv(x * (1 - m))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return m * (z * v - conv(m * v))

    start = x if init is None else init.to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    u = m * start
    r = rhs - apply(u)
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    target = (tol * tol) * torch.clamp((rhs * rhs).sum(dim=(1, 2, 3), keepdim=True), min=1e-30)
    iterations = max_iter if max_iter is not None else 4 * (h + w) + 50
    for _ in range(iterations):
        if bool((rs <= target).all()):
            break
        ap = apply(p)
        den = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(den > 0, rs / torch.where(den > 0, den, 1.0), torch.zeros_like(den))
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1.0), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    out = x * (1 - m) + u
    if noise > 0:
        eps = torch.randn((b * c, 1, h, w), generator=generator, dtype=torch.float32)
        out = out + m * noise * eps.to(device, dtype)
    return out.view(b, c, h, w)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """N×H×W maps -> N×(H·W) rank of each pixel, 0 = most important (largest value).

    Ties are broken by pixel index (row-major), lowest first, so the order is deterministic.
    """
    flat = torch.nan_to_num(maps.flatten(1).double(), nan=-math.inf)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels changed after each of ``steps`` equal steps: round(k · pixels / steps), k = 0..steps."""
    return np.rint(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def perturbation_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    kind: CurveKind,
    baseline: torch.Tensor,
    steps: int = 16,
    batch_size: int = 64,
    imputation: Imputation = "constant",
    road_noise: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """K×Q×(steps+1) probabilities of the target class along deletion or insertion curves.

    ``maps``: K×Q×H×W (K maps per image: methods and the random control). Pixels are taken in
    :func:`pixel_ranks` order; after step s the first ``step_counts(H·W, steps)[s]`` pixels are
    changed. Deletion replaces them by ``baseline`` (broadcastable to Q×C×H×W: the fill); insertion
    starts from ``baseline`` (the blurred images) and puts them back. With ``imputation="road"``
    the pixels not taken from the image are imputed from those that are (:func:`noisy_linear_imputation`,
    noise σ ``road_noise``, seeded) starting from ``baseline``. Every (map, image, step) is one job;
    jobs run ``batch_size`` at a time under :func:`torch.inference_mode`.
    """
    k, q, h, w = maps.shape
    device = inputs.device
    counts = torch.as_tensor(step_counts(h * w, steps), device=device)
    ranks = pixel_ranks(maps.reshape(k * q, h, w).to(device)).view(k, q, h * w)
    base = baseline.to(device, inputs.dtype).expand_as(inputs)
    targets = targets.to(device)
    per_map = q * (steps + 1)
    total = k * per_map
    probs = torch.empty(total, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            job = torch.arange(start, min(start + batch_size, total), device=device)
            km, rem = job // per_map, job % per_map
            qi, si = rem // (steps + 1), rem % (steps + 1)
            taken = (ranks[km, qi] < counts[si][:, None]).view(-1, 1, h, w)
            image, other = inputs[qi], base[qi]
            if kind == "deletion":
                batch = torch.where(taken, other, image)
                unknown = taken[:, 0]
            else:
                batch = torch.where(taken, image, other)
                unknown = ~taken[:, 0]
            if imputation == "road":
                batch = noisy_linear_imputation(
                    batch, unknown, init=other, noise=road_noise, generator=gen
                )
            logits = extract_logits(model(batch)).float()
            probs[job] = logits.softmax(1).gather(1, targets[qi][:, None])[:, 0]
    return probs.view(k, q, steps + 1).cpu().numpy()


def curve_auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve (last axis) over ``fractions`` (0 to 1)."""
    widths = np.diff(fractions)
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * widths).sum(axis=-1)


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
    progress: ProgressFn | None = None,
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
    optional wrapper of iterables (the report's bar).
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
    for n in ran:
        grid[n][:, 0] = original[n][:g]
    x_r, t_r = inputs[:r], targets[:r]

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
                    m = methods[n](copy_model, x_r, t_r).detach().float().cpu().numpy()
                except _METHOD_ERRORS as exc:
                    failed.add(n)
                    notes.append(
                        f"{n} failed on the model randomised down to stage {stage.name}: {exc}"
                    )
                    continue
                rho_out[n][:, j], ssim_out[n][:, j] = _similarities(original[n][:r], m)
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
    common: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "imputation": imputation,
        "road_noise": road_noise,
        "seed": seed,
    }
    deletion = perturbation_curves(
        model, inputs, targets, stacked, kind="deletion", baseline=fill, **common
    )
    insertion = perturbation_curves(
        model, inputs, targets, stacked, kind="insertion", baseline=blurred, **common
    )
    fractions = step_counts(h * w, steps) / float(h * w)
    with torch.inference_mode():
        base = extract_logits(model(inputs)).float().softmax(1).gather(1, targets[:, None])[:, 0]
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
        base_prob=base.cpu().numpy(),
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
