"""Can these maps be trusted? Model-parameter randomisation (Adebayo et al. 2018) and
deletion/insertion faithfulness (Petsiuk et al. 2018) with a random-map control, for every
attribution method the report draws, on the query images.

The compute lives in :mod:`reportgen.sanity` (torch in, numpy out); the section in
:mod:`reportgen.analyses.attribution_checks_present`. The maps are computed with the same
reductions as the saliency and occlusion sections; the settings below default to theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from reportgen import methods
from reportgen.analyses.attribution_checks_present import (
    NAME,
    TITLE,
    attribution_checks_section,
)
from reportgen.contract import Analysis, Cost, Metric, Needs, Result, SkipSection
from reportgen.methods.names import LABELS, METHODS
from reportgen.params import (
    AnalysisParams,
    at_least,
    between,
    each,
    either,
    in_range,
    layer_ref,
    literal,
    non_empty,
    one_of,
    rule,
)
from reportgen.report.section import Text
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext
    from reportgen.heads import Head

DEFAULT_METHODS = list(METHODS)


@dataclass(frozen=True)
class AttributionChecksParams(AnalysisParams):
    """``analyses.attribution_checks``. The map settings default to the saliency and occlusion
    sections' defaults, so the checks judge the maps the report shows; change both together."""

    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=rule(
            non_empty("needs at least one method"),
            each(
                one_of(*METHODS),
                f"every entry must be one of {', '.join(METHODS)}",
            ),
        ),
    )
    """Maps to check, from: gradient, smoothgrad, guided_backprop, gradcam, integrated_gradients,
    occlusion."""
    stages: Literal["auto"] | list[str] = field(
        default="auto",
        metadata=layer_ref(
            auto="auto",
            parameters=True,
            also=(
                non_empty(
                    "needs at least one stage (an empty list would randomise nothing and "
                    "pass every method); use auto or name modules"
                ),
            ),
        ),
    )
    """Randomisation stages: ``auto`` (blocks found from the model's call order, logits first:
    fc, layer4, …, conv1+bn1 on a ResNet) or a list of module names, one stage each."""
    max_images: int = field(default=8, metadata=rule(between(1, 256)))
    """Query images in the deletion/insertion curves (the first ones)."""
    randomization_images: int = field(default=3, metadata=rule(between(1, 256)))
    """Query images re-explained after each randomisation stage (the first ones). Each costs
    every method's map once per stage: 3 keeps the default report within minutes on a CPU."""
    grid_images: int = field(default=2, metadata=rule(between(0, 8)))
    """Queries drawn in the randomisation grid (rows: methods; columns: original → randomised)."""
    steps: int = field(default=12, metadata=rule(between(2, 256)))
    """Points on each deletion/insertion curve after the start (equal fractions of the pixels);
    every point costs a forward per method and image, for both curves."""
    threshold: float = field(default=0.5, metadata=rule(in_range(-1, 1)))
    """A method fails randomisation when its mean Spearman rank correlation with the original
    (absolute maps) is still at least this after the whole network is re-initialised."""
    insertion_blur_sigma: float = field(default=0.0, metadata=rule(at_least(0)))
    """Gaussian blur σ (input pixels) of the image insertion starts from; 0 = 1/8 of the side."""
    deletion_fill: Literal["mean"] | float = field(
        default="mean",
        metadata=rule(
            either(literal("mean"), in_range(0, 1), text="must be 'mean' or a number in [0, 1]")
        ),
    )
    """What deleted pixels become: ``mean`` (the dataset's mean pixel) or a gray value in [0, 1]."""
    imputation: Literal["constant", "road"] = "constant"
    """``constant``: deleted pixels take the fill, not-yet-inserted ones the blurred image;
    ``road``: both imputed from their neighbours (ROAD's noisy linear imputation)."""
    road_noise: float = field(default=0.01, metadata=rule(in_range(0, 1)))
    """σ of the noise ROAD adds to imputed pixels (model input units)."""
    independent: bool = False
    """Also re-initialise each stage alone (the independent test): one more pass per stage."""
    batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata=rule(
            either(literal("auto"), at_least(1), text="must be 'auto' or a positive whole number")
        ),
    )
    """Perturbed images per forward pass in the curves and occlusion (``auto``: measured for this
    model and machine, ``run.memory_format``); the gradient methods take the measured
    forward+backward batch."""
    smoothgrad_samples: int = field(default=25, metadata=rule(between(1, 1000)))
    smoothgrad_noise: float = field(default=0.15, metadata=rule(in_range(0, 1, lo_open=True)))
    ig_steps: int = field(default=32, metadata=rule(between(1, 1000)))
    ig_method: Literal["gausslegendre", "riemann_middle"] = "gausslegendre"
    gradcam_layer: str = field(default="auto", metadata=layer_ref(auto="auto", spatial=True))
    occlusion_window: int = field(default=0, metadata=rule(at_least(0)))
    """0 = a quarter of the shorter side (as the occlusion section)."""
    occlusion_stride: int = field(default=0, metadata=rule(at_least(0)))
    randomization_occlusion_stride: int = field(default=0, metadata=rule(at_least(0)))
    """Occluder stride inside the randomisation test (0 = twice the occlusion stride, capped at
    the window): occlusion costs one forward per window position per image per stage, so the
    test re-explains on a coarser grid (about a quarter of the positions); the original map it
    compares with uses the same grid, and the faithfulness curves keep the full one."""
    randomization_smoothgrad_samples: int = field(default=8, metadata=rule(between(1, 1000)))
    """SmoothGrad's noisy copies inside the randomisation test (at most ``smoothgrad_samples``).
    Each costs a backward pass per image per stage; the original and the randomised maps use the
    same seeded noise, so fewer copies do not decorrelate them by themselves."""
    randomization_ig_steps: int = field(default=8, metadata=rule(between(1, 1000)))
    """Integrated gradients' path points inside the randomisation test (at most ``ig_steps``;
    Gauss–Legendre points stay close to the integral at a few points on a smooth path)."""
    image_size: int = field(default=64, metadata=rule(between(32, 256)))
    """On-screen size of each panel of the randomisation grid, in pixels."""


@dataclass(frozen=True)
class _CheckMaps:
    """The map functions the checks use, and where the randomisation test's differ."""

    window: int
    stride: int
    maps: dict[str, methods.trust.KeyedMap]
    """Originals and faithfulness curves: the sections' settings."""
    randomization: dict[str, methods.trust.KeyedMap]
    """Method -> the randomisation test's own function where its settings are cheaper."""
    changes: list[str]
    """What the randomisation test does differently, in words."""


HEADLINES = {
    "attribution_checks_methods": "attribution methods checked",
    "attribution_checks_methods_unavailable": "attribution methods unavailable",
    "attribution_checks_methods_failing_randomization": "maps that survive randomisation",
    "attribution_checks_methods_not_better_than_random": "maps not better than a random map",
    "attribution_checks_best_deletion_auc": "best deletion AUC",
    "attribution_checks_best_insertion_auc": "best insertion AUC",
    "attribution_checks_random_deletion_auc": "random-map deletion AUC",
    "attribution_checks_random_insertion_auc": "random-map insertion AUC",
}


def _vit_gradcam(
    layout: methods.vit.TokenLayout, batch_size: int, head: Head
) -> methods.trust.MapFn:
    """Grad-CAM on a vision transformer's token grid (the saliency section's choice)."""

    def gradcam(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        layer = methods.vit_maps.default_vit_gradcam_layer(layout)
        cam = methods.vit_maps.vit_grad_cam(model, x, t, layer, layout, batch_size, head=head)
        return torch.nn.functional.interpolate(
            cam[:, None].float(), size=tuple(x.shape[2:]), mode="bilinear", align_corners=False
        )[:, 0]

    return gradcam


class AttributionChecksAnalysis(Analysis[AttributionChecksParams]):
    name = NAME
    title = TITLE
    Params = AttributionChecksParams
    needs = Needs(hooks=True, gradients=True, queries=True)
    """Hooks: the randomisation stages are found by hooking the model's modules and
    re-initialised through them (not possible on TorchScript or exported graphs)."""
    metrics = (
        Metric(
            "attribution_checks_methods_failing_randomization",
            HEADLINES["attribution_checks_methods_failing_randomization"],
            headline=True,
            kind="count",
        ),
        *(
            Metric(key, label, kind="count" if "auc" not in key else "number")
            for key, label in HEADLINES.items()
            if key != "attribution_checks_methods_failing_randomization"
        ),
    )
    order = 80

    @staticmethod
    def _maps(ctx: AnalysisContext, p: AttributionChecksParams, h: int, w: int) -> _CheckMaps:
        window, stride = methods.perturbation.resolve_geometry(
            h, w, p.occlusion_window, p.occlusion_stride
        )
        settings = {
            "smoothgrad_samples": p.smoothgrad_samples,
            "smoothgrad_noise": p.smoothgrad_noise,
            "ig_steps": p.ig_steps,
            "ig_method": p.ig_method,
            "gradcam_layer": None if p.gradcam_layer == "auto" else p.gradcam_layer,
            "occlusion_window": window,
            "occlusion_stride": stride,
            "occlusion_fill": ctx.pass_result.mean_input,
            "occlusion_fill_name": "mean",
            "seed": ctx.seed,
            "batch_size": ctx.batch("auto", backward=True),
            "occlusion_batch_size": ctx.batch(p.batch_size),
            "head": ctx.head,
        }
        map_fns = methods.trust.attribution_methods(p.methods, **settings)  # type: ignore[arg-type]
        cheaper = dict(settings)
        changes: list[str] = []
        samples = min(p.randomization_smoothgrad_samples, p.smoothgrad_samples)
        if "smoothgrad" in map_fns and samples != p.smoothgrad_samples:
            cheaper["smoothgrad_samples"] = samples
            changes.append(f"SmoothGrad {samples} noisy copies instead of {p.smoothgrad_samples}")
        steps = min(p.randomization_ig_steps, p.ig_steps)
        if "integrated_gradients" in map_fns and steps != p.ig_steps:
            cheaper["ig_steps"] = steps
            changes.append(f"integrated gradients {steps} path points instead of {p.ig_steps}")
        coarse = p.randomization_occlusion_stride or min(window, 2 * stride)
        if "occlusion" in map_fns and coarse != stride:
            cheaper["occlusion_stride"] = coarse
            rows, cols = methods.perturbation.grid_shape(h, w, window, coarse)
            full = methods.perturbation.grid_shape(h, w, window, stride)
            changes.append(
                f"occlusion at stride {coarse} px instead of {stride} px ({rows}×{cols} instead "
                f"of {full[0]}×{full[1]} window positions)"
            )
        rand = methods.trust.attribution_methods(p.methods, **cheaper)  # type: ignore[arg-type]
        differ = {n: f for n, f in rand.items() if f.key != map_fns[n].key}
        return _CheckMaps(window, stride, map_fns, differ, changes)

    def cost(self, ctx: AnalysisContext, p: AttributionChecksParams) -> Cost:
        """Originals not shared by another section, the randomisation test (R images per stage,
        twice with ``independent``) and both curves for every map and the random control."""
        q = min(ctx.explained_rows, p.max_images)
        r = min(q, p.randomization_images)
        h, w = ctx.input_size
        plan = self._maps(ctx, p, h, w)
        map_fns, rand_fns = plan.maps, plan.randomization
        stage_names = None if p.stages == "auto" else list(p.stages)
        x = ctx.query_batch().inputs[:1]
        stages = len(methods.trust.randomization_stages(ctx.model.module, x, stage_names))
        rounds = stages * (2 if p.independent else 1)
        total = Cost(forward=1)  # the stage probe
        for name, fn in map_fns.items():
            f, b = fn.passes(h, w)
            if not ctx.will_share(fn.key):
                total += Cost(q * f, q * b)
            rand = rand_fns.get(name)
            if rand is not None:
                f, b = rand.passes(h, w)
                total += Cost(r * f, r * b)  # its original on the randomisation test's grid
            total += Cost(rounds * r * f, rounds * r * b)
            if name == "gradcam" and p.gradcam_layer == "auto" and ctx.token_layout is None:
                # Each call finds the last spatial layer of the model it is given: one probe.
                total += Cost(forward=rounds + (0 if ctx.will_share(fn.key) else 1))
        curves = methods.trust.curve_passes(len(map_fns) + 1, q, p.steps, p.imputation)
        total += Cost(forward=curves)
        return total

    def run(self, ctx: AnalysisContext, p: AttributionChecksParams) -> Result:
        batch = ctx.query_batch()
        q = min(len(batch), p.max_images)
        x, t = batch.inputs[:q], batch.targets[:q]
        if p.deletion_fill == "mean":
            if ctx.pass_result.mean_input is None:
                raise SkipSection("the dataset pass recorded no mean input for deletion's fill")
            fill = ctx.pass_result.mean_input.detach().float().to(ctx.device)
            fill_text = "the dataset's mean pixel"
        else:
            gray = torch.full((ctx.model.in_channels, 1, 1), float(p.deletion_fill))
            fill = ctx.preprocessor.normalise(gray).flatten().to(ctx.device)
            fill_text = f"gray {float(p.deletion_fill):g}"
        h, w = int(x.shape[2]), int(x.shape[3])
        plan = self._maps(ctx, p, h, w)
        map_fns = plan.maps
        rand_fns: dict[str, methods.trust.MapFn] = dict(plan.randomization)
        fns: dict[str, methods.trust.MapFn] = dict(map_fns)
        if ctx.token_layout is not None and "gradcam" in fns and p.gradcam_layer == "auto":
            fns["gradcam"] = _vit_gradcam(
                ctx.token_layout, ctx.batch("auto", backward=True), ctx.head
            )
        # The maps the saliency and occlusion sections drew with the same settings are the
        # originals (not computed twice); the rest are computed here.
        rows = batch.rows[:q]
        reused = {
            n: m for n, fn in map_fns.items() if (m := ctx.shared_maps(fn.key, rows)) is not None
        }
        model = ctx.model.module
        stage_names = None if p.stages == "auto" else list(p.stages)
        stages = methods.trust.randomization_stages(model, x[:1], stage_names)
        result = methods.trust.run_attribution_checks(
            model,
            x,
            t,
            fns,
            stages=stages,
            mean_fill=fill,
            steps=p.steps,
            threshold=p.threshold,
            seed=ctx.seed,
            batch_size=ctx.batch(p.batch_size),
            randomization_images=p.randomization_images,
            grid_images=p.grid_images,
            independent=p.independent,
            insertion_blur_sigma=p.insertion_blur_sigma or None,
            imputation=p.imputation,
            road_noise=p.road_noise,
            randomization_methods=rand_fns,
            original_maps=reused,
            progress=ctx.progress,
            head=ctx.head,
        )
        shown = min(p.grid_images, q)
        images = ctx.display_images(batch.positions[:shown])
        titles = [
            f"{ctx.relpath(pos)} · {ctx.class_name(int(c))}"
            for pos, c in zip(batch.positions[:shown], t[:shown].tolist(), strict=True)
        ]
        section = attribution_checks_section(
            result, images, titles, fill_text=fill_text, panel_px=p.image_size
        )
        if reused:
            section.add(
                Text(
                    "Original maps reused from the sections that drew them (same images and "
                    "settings, computed once): " + ", ".join(LABELS[n] for n in reused) + "."
                )
            )
        if plan.changes:
            section.add(
                Text(
                    "The randomisation test re-explains the images after every stage, so it runs "
                    "the costlier methods at cheaper settings than the curves and the sections: "
                    + "; ".join(plan.changes)
                    + " — for the randomised and the original map alike, so like is compared "
                    "with like (analyses.attribution_checks.randomization_smoothgrad_samples, "
                    "randomization_ig_steps, randomization_occlusion_stride)."
                )
            )
        return Result(
            section,
            metrics=methods.trust.headline_metrics(result),
            record=methods.trust.summary_dict(result),
        )
