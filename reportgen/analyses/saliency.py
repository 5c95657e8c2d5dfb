"""Saliency and its family, side by side: gradient, SmoothGrad, guided backprop, Grad-CAM, IG.

The methods live in :mod:`reportgen.attribution` (tensors in, tensors out, on the device); this
module turns their maps into one figure (queries in rows, methods in columns, one colour scale
per method) and agreement tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reportgen import loading, methods
from reportgen.contract import Analysis, Cost, Metric, Needs, Result, SkipSection
from reportgen.errors import ReportgenError
from reportgen.methods.names import LABELS
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
from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.section import Figure, Picture, Section, Table, Text
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext, QueryBatch

Method = Literal[
    "gradient",
    "smoothgrad",
    "guided_backprop",
    "gradcam",
    "integrated_gradients",
    "attention_rollout",
]
METHODS: tuple[Method, ...] = (
    "gradient",
    "smoothgrad",
    "guided_backprop",
    "gradcam",
    "integrated_gradients",
    "attention_rollout",
)
DEFAULT_METHODS: tuple[Method, ...] = METHODS[:5]
"""Attention rollout is added automatically for vision transformers (see ``methods``)."""
NEEDS_HOOKS = ("guided_backprop", "gradcam")
"""Methods that need to see inside the Python forward pass (not TorchScript / exported graphs)."""

HOW_TO_READ = (
    "Each row is one query image; each column one way of asking which pixels the explained "
    "class's score depends on (brighter = more). Gradient: how much each pixel's value changes "
    "the class score (Simonyan et al.; max over colour channels of its absolute value) — sharp but "
    "noisy. SmoothGrad averages that gradient over noisy copies of the image, which removes much "
    "of the noise. Guided backprop only lets positive gradients flow back through ReLUs: crisp, "
    "edge-like maps that are known to depend little on the class. Grad-CAM weights the last "
    "convolutional stage's feature maps by their gradients: coarse blobs at that stage's "
    "resolution, but class-specific. Integrated gradients sums gradients along a straight path "
    "from a baseline (black in model space) to the image; its values add up to the score "
    "difference. Attention rollout (vision transformers only) multiplies the attention matrices "
    "of all blocks, each averaged over heads and mixed with the identity, and shows how much the "
    "class token attends to each patch — it says where the model looks, not which class the "
    "evidence supports. A method that is not defined for a model (guided backprop on GELU "
    "networks, rollout on a CNN) is listed as unavailable with the reason. "
    "Every column has one colour scale shared by all rows, so rows can be compared. "
    "Trust a region when several methods agree on it; the tables give the rank correlation "
    "between methods (1 = same ordering of pixels, 0 = unrelated)."
)


@dataclass(frozen=True)
class SaliencyParams(AnalysisParams):
    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=rule(
            non_empty("needs at least one method"),
            each(one_of(*METHODS), f"every entry must be one of {', '.join(METHODS)}"),
        ),
    )
    """Which methods to run (and columns to draw), from: gradient, smoothgrad, guided_backprop,
    gradcam, integrated_gradients, attention_rollout (vision transformers; added to the default
    list automatically when the model is one)."""
    smoothgrad_samples: int = field(default=25, metadata=rule(between(1, 1000)))
    smoothgrad_noise: float = field(default=0.15, metadata=rule(in_range(0, 1, lo_open=True)))
    """Noise σ as a fraction of each image's value range (model input space)."""
    ig_steps: int = field(default=32, metadata=rule(between(1, 1000)))
    ig_method: Literal["gausslegendre", "riemann_middle"] = "gausslegendre"
    ig_baseline: Literal["zeros"] | float = field(
        default="zeros",
        metadata=rule(
            either(literal("zeros"), in_range(0, 1), text="must be 'zeros' or a number in [0, 1]")
        ),
    )
    """``zeros``: all-zero input in model space; a number: that gray value in [0, 1] pixel space."""
    gradcam_layer: str = field(default="auto", metadata=layer_ref(auto="auto", spatial=True))
    """Module name; ``auto`` = the last module whose output is a spatial map (last conv stage)."""
    batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata=rule(
            either(literal("auto"), at_least(1), text="must be 'auto' or a positive whole number")
        ),
    )
    """Images (noisy copies, path points) per forward/backward pass; ``auto``: the measured
    forward+backward batch for this model on this machine."""
    image_size: int = field(default=150, metadata=rule(between(32, 512)))
    """On-screen size of each panel, in pixels."""


@dataclass(frozen=True)
class SaliencyResult:
    """Raw attributions per method (on the device) and the 2-D maps drawn for each."""

    raw: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]
    """Method -> Q×H×W non-negative map at input resolution."""
    gradcam_layer: str | None
    notes: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)
    """Method -> why it is not shown."""


def _method_maps(
    method: str, ctx: AnalysisContext, p: SaliencyParams, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """(raw attribution, 2-D map, Grad-CAM layer or None) of one method; raises NotApplicable
    when the method is not defined for this model."""
    model = ctx.model.module
    h, w = x.shape[2:]
    bs = ctx.batch(p.batch_size, backward=True)
    layout = ctx.token_layout
    head = ctx.head
    if method == "gradient":
        g = methods.attribution.input_gradients(model, x, t, bs, head=head)
        return methods.attribution.saliency_map(g), methods.attribution.saliency_map(g), None
    if method == "smoothgrad":
        g = methods.attribution.smoothgrad(
            model, x, t, p.smoothgrad_samples, p.smoothgrad_noise, ctx.seed, bs, head=head
        )
        return g, methods.attribution.saliency_map(g), None
    if method == "guided_backprop":
        g = methods.attribution.guided_backprop(model, x, t, bs, head=head)
        return g, methods.attribution.saliency_map(g), None
    if method == "gradcam":
        if layout is not None and p.gradcam_layer == "auto":
            # Tokens reshaped to their patch grid (class/register tokens dropped) at the last block.
            layer = methods.vit_maps.default_vit_gradcam_layer(layout)
            cam = methods.vit_maps.vit_grad_cam(model, x, t, layer, layout, bs, head=head)
        else:
            try:
                layer = (
                    methods.attribution.default_gradcam_layer(model, x[:1])
                    if p.gradcam_layer == "auto"
                    else p.gradcam_layer
                )
            except ValueError as exc:
                raise methods.attribution.NotApplicable(f"not applicable: {exc}") from None
            cam = methods.attribution.grad_cam(
                model, x, t, loading.types.find_layer(model, layer), bs, head=head
            )
        up = methods.attribution.upsample_maps(cam, (h, w))
        return up, up, layer
    if method == "attention_rollout":
        if layout is None:
            raise methods.attribution.NotApplicable(
                "not applicable: the model has no attention layers (not a vision transformer)"
            )
        rolled = methods.vit_maps.attention_rollout(model, x, layout, bs)
        if isinstance(rolled, methods.vit.Unavailable):
            raise methods.attribution.NotApplicable(str(rolled))
        up = methods.attribution.upsample_maps(rolled, (h, w))
        return up, up, None
    baseline = None
    if not isinstance(p.ig_baseline, str):
        gray = torch.full((x.shape[1], 1, 1), float(p.ig_baseline))
        baseline = ctx.preprocessor.normalise(gray).to(x.device)[None]
    ig = methods.attribution.integrated_gradients(
        model, x, t, baseline, p.ig_steps, p.ig_method, bs, head=head
    )
    # Sum over channels (signed contributions add), then magnitude, as IG is usually drawn.
    return ig, ig.sum(dim=1).abs(), None


def compute_saliency(ctx: AnalysisContext, p: SaliencyParams, batch: QueryBatch) -> SaliencyResult:
    """Run the configured methods on the query batch (everything stays on the device).

    One method failing is one method failing: a method that is not defined for this model, or
    that errs, is listed as unavailable with the reason and the others still run.
    """
    x, t = batch.inputs, batch.targets
    wanted = [m for m in METHODS if m in p.methods]
    notes: list[str] = []
    unavailable: dict[str, str] = {}
    if not ctx.model.supports_hooks:
        for m in [m for m in wanted if m in NEEDS_HOOKS]:
            unavailable[m] = (
                f"needs the model's Python forward pass, which a "
                f"{ctx.model.kind.replace('_', ' ')} model does not expose"
            )
    raw: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    layer_name: str | None = None
    runnable = [m for m in wanted if m not in unavailable]
    for method in ctx.iterate(runnable, desc="saliency", total=len(runnable), label=str):
        try:
            raw[method], maps[method], layer = _method_maps(method, ctx, p, x, t)
        except methods.attribution.NotApplicable as exc:
            unavailable[method] = str(exc)
            continue
        except (RuntimeError, ValueError, ReportgenError) as exc:
            unavailable[method] = f"failed: {type(exc).__name__}: {exc}"
            continue
        layer_name = layer or layer_name
    for method in wanted:
        if method in unavailable:
            notes.append(f"{LABELS[method]}: unavailable — {unavailable[method]}.")
    return SaliencyResult(raw, maps, layer_name, notes, unavailable)


# --------------------------------------------------------------------------- presentation


def column_scale(maps: np.ndarray) -> float:
    """One colour scale for a method's column: its 99.5th percentile over all rows.

    A percentile rather than the maximum, so one extreme pixel does not darken every panel.
    """
    if maps.size == 0:
        return 1.0
    v = float(np.percentile(maps, 99.5))
    return v if v > 0 else max(float(maps.max()), 1e-12)


def saliency_figure(
    images: list[np.ndarray],
    maps: dict[str, np.ndarray],
    titles: list[str],
    panel_px: int,
    signed: frozenset[str] = frozenset(),
) -> Picture:
    """Rows: queries. Columns: the image, then one map per method on the method's shared scale;
    a ``signed`` method's column is drawn on a diverging scale centred on 0 (red: evidence for
    the explained class, blue: against)."""
    shown = list(maps)
    q, n = len(images), len(shown) + 1
    panel = panel_px / 100.0
    fig = new_figure(n * panel + 0.4, q * (panel + 0.25) + 0.9)
    axes = fig.subplots(q, n, squeeze=False)
    for i in range(q):
        axes[i, 0].imshow(images[i], interpolation="nearest")
        axes[i, 0].set_ylabel(titles[i], fontsize=7)
    axes[0, 0].set_title("input", fontsize=8)
    for j, m in enumerate(shown, start=1):
        vmax = column_scale(np.abs(maps[m]) if m in signed else maps[m])
        vmin, cmap = (-vmax, "RdBu_r") if m in signed else (0.0, "inferno")
        artist = None
        for i in range(q):
            artist = axes[i, j].imshow(maps[m][i], cmap=cmap, vmin=vmin, vmax=vmax)
        axes[0, j].set_title(LABELS[m], fontsize=8)
        if artist is not None:
            bar = fig.colorbar(artist, ax=axes[:, j].tolist(), location="bottom", aspect=12)
            bar.ax.tick_params(labelsize=6)
            bar.formatter.set_powerlimits((-2, 3))  # type: ignore[attr-defined]
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return figure_to_picture(fig, dpi=100)


ARRAY_NAMES = {
    "attention_rollout": "attention_rollout",
    "gradient": "saliency_gradient",
    "smoothgrad": "smoothgrad",
    "guided_backprop": "guided_backprop",
    "gradcam": "gradcam",
    "integrated_gradients": "integrated_gradients",
}
"""Method -> its key in arrays.npz."""


def saliency_key(method: str, p: SaliencyParams, seed: int) -> methods.trust.MapKey:
    """The key under which this section offers its map of ``method`` to the attribution checks."""
    return methods.trust.map_key(
        method,
        smoothgrad_samples=p.smoothgrad_samples,
        smoothgrad_noise=p.smoothgrad_noise,
        ig_steps=p.ig_steps,
        ig_method=p.ig_method,
        ig_baseline=p.ig_baseline,
        gradcam_layer=p.gradcam_layer,
        seed=seed,
    )


class SaliencyAnalysis(Analysis[SaliencyParams]):
    name = "saliency"
    title = "Saliency: gradient, SmoothGrad, guided backprop, Grad-CAM, integrated gradients"
    Params = SaliencyParams
    needs = Needs(gradients=True, queries=True)
    metrics = (
        Metric("saliency_mean_rank_agreement", "mean rank agreement between saliency methods"),
        Metric("gradcam_layer", "Grad-CAM layer", kind="text"),
    )
    order = 70

    @staticmethod
    def _params(ctx: AnalysisContext, p: SaliencyParams) -> SaliencyParams:
        """Attention rollout joins the default methods on a vision transformer."""
        if ctx.token_layout is not None and list(p.methods) == list(DEFAULT_METHODS):
            return dataclasses.replace(p, methods=[*p.methods, "attention_rollout"])
        return p

    def _runnable(self, ctx: AnalysisContext, p: SaliencyParams) -> list[str]:
        wanted: list[str] = [m for m in METHODS if m in self._params(ctx, p).methods]
        if ctx.model.supports_hooks:
            return wanted
        return [m for m in wanted if m not in NEEDS_HOOKS]

    def shares(self, ctx: AnalysisContext, p: SaliencyParams) -> tuple[Any, ...]:
        return tuple(
            saliency_key(m, p, ctx.seed)
            for m in self._runnable(ctx, p)
            if m in methods.trust.METHODS
        )

    def cost(self, ctx: AnalysisContext, p: SaliencyParams) -> Cost:
        q = ctx.explained_rows
        h, w = ctx.input_size
        total = Cost()
        for m in self._runnable(ctx, p):
            if m == "attention_rollout":
                total += Cost(forward=q)
                continue
            f, b = methods.trust.passes_per_image(
                m, h, w, smoothgrad_samples=p.smoothgrad_samples, ig_steps=p.ig_steps
            )
            total += Cost(q * f, q * b)
        if (
            "gradcam" in self._runnable(ctx, p)
            and p.gradcam_layer == "auto"
            and not ctx.token_layout
        ):
            total += Cost(forward=1)  # the probe that finds the last spatial layer
        return total

    def run(self, ctx: AnalysisContext, p: SaliencyParams) -> Result:
        batch = ctx.query_batch()
        p = self._params(ctx, p)
        result = compute_saliency(ctx, p, batch)
        if not result.maps:
            raise SkipSection(" ".join(result.notes) or "no saliency method could run")

        for method, m in result.maps.items():
            if method in methods.trust.METHODS:
                ctx.share_maps(saliency_key(method, p, ctx.seed), batch.rows, m)
        arrays = batch.arrays()
        for method, tensor in result.raw.items():
            arrays[ARRAY_NAMES[method]] = tensor.detach().float().cpu().numpy()
        metrics: dict[str, Any] = {}
        section = self._section(ctx, p, batch, result, metrics)
        return Result(section, arrays=arrays, metrics=metrics)

    def _section(
        self,
        ctx: AnalysisContext,
        p: SaliencyParams,
        batch: QueryBatch,
        result: SaliencyResult,
        metrics: dict[str, Any],
    ) -> Section:
        section = self.section(HOW_TO_READ)
        # The heading names the methods actually shown.
        section.title = "Saliency: " + ", ".join(LABELS[m] for m in result.maps)
        maps = {m: v.detach().float().cpu().numpy() for m, v in result.maps.items()}
        shown = list(maps)
        targets = batch.targets.cpu().tolist()
        logits = ctx.pass_result.logits[batch.positions].float()
        probs = ctx.head.explained_probability(logits, batch.targets)
        preds = [ctx.prediction_text(q) for q in batch.positions]
        images = ctx.display_images(batch.positions)
        # A binary model's maps explain its one logit: integrated gradients is drawn signed
        # (it adds up to the score's change), so evidence for and against positive both show.
        drawn = dict(maps)
        signed: frozenset[str] = frozenset()
        if ctx.head.task == "binary" and "integrated_gradients" in result.raw:
            drawn["integrated_gradients"] = (
                result.raw["integrated_gradients"].sum(dim=1).detach().float().cpu().numpy()
            )
            signed = frozenset({"integrated_gradients"})
        titles = [
            f"{ctx.relpath(q)}\n{ctx.class_name(c)}"
            for q, c in zip(batch.positions, targets, strict=True)
        ]
        layer_text = f" Grad-CAM at layer {result.gradcam_layer}." if result.gradcam_layer else ""
        section.add(
            Figure(
                saliency_figure(images, drawn, titles, p.image_size, signed),
                caption=(
                    f"Attribution maps for {ctx.explained_words} (rows: query "
                    "images; columns: methods, each with one colour scale for the whole column, "
                    "0 to its 99.5th percentile"
                    + (
                        "; integrated gradients signed, red = evidence for the positive class, "
                        "blue = against, ± its 99.5th percentile of |value|"
                        if signed
                        else ""
                    )
                    + f"). SmoothGrad: {p.smoothgrad_samples} samples, noise "
                    f"{p.smoothgrad_noise:g} of the value range; integrated gradients: "
                    f"{p.ig_steps} steps ({p.ig_method}), baseline "
                    f"{'zeros in model space' if isinstance(p.ig_baseline, str) else f'gray {p.ig_baseline:g}'}."
                    + layer_text
                ),
                alt="Grid of saliency maps: query images in rows, attribution methods in columns",
                wide=True,
            )
        )
        for note in result.notes:
            section.add(Text(note, kind="note"))

        others = [m for m in shown if m != "gradient"]
        rows: list[list[Any]] = []
        rho_all: dict[tuple[str, str], list[float]] = {}
        for i, q in enumerate(batch.positions):
            row: list[Any] = [
                ctx.relpath(q),
                ctx.class_name(targets[i]),
                float(probs[i]),
                preds[i],
            ]
            if "gradient" in maps:
                row += [
                    methods.attribution.spearman(maps[m][i], maps["gradient"][i]) for m in others
                ]
            rows.append(row)
            for a in shown:
                for b in shown:
                    rho_all.setdefault((a, b), []).append(
                        methods.attribution.spearman(maps[a][i], maps[b][i])
                    )
        what = self._explained(ctx)
        columns = ["image", f"explained {what}", f"p (explained {what})", "prediction"]
        if "gradient" in maps:
            columns += [f"ρ({LABELS[m]}, gradient)" for m in others]
        section.add(
            Table(
                caption=(
                    f"Per query: the explained {what}, its probability ({self._probability(ctx)}), "
                    "the prediction, and each method's Spearman rank correlation with the plain "
                    "gradient map."
                ),
                columns=columns,
                rows=rows,
            )
        )
        if len(shown) > 1:
            section.add(
                Table(
                    caption=(
                        f"Agreement between methods: Spearman rank correlation of their maps, "
                        f"averaged over the {len(batch)} query images."
                    ),
                    columns=["method", *(LABELS[m] for m in shown)],
                    rows=[[LABELS[a], *(_nanmean(rho_all[(a, b)]) for b in shown)] for a in shown],
                )
            )
            pairs = [(a, b) for a in shown for b in shown if a < b]
            metrics["saliency_mean_rank_agreement"] = _nanmean(
                [v for pair in pairs for v in rho_all[pair]]
            )
        if result.gradcam_layer:
            metrics["gradcam_layer"] = result.gradcam_layer
        return section

    @staticmethod
    def _explained(ctx: AnalysisContext) -> str:
        return "label" if not ctx.head.single_label else "class"

    @staticmethod
    def _probability(ctx: AnalysisContext) -> str:
        return {
            "multiclass": "softmax",
            "binary": "sigmoid of the logit",
            "multilabel": "the label's sigmoid",
        }[ctx.head.task]


def _nanmean(values: list[float]) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else None
