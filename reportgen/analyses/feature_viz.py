"""What does a class or a unit respond to most? Feature visualisation by optimisation.

Per objective — a class's logit (by default the query images' classes) or a channel of the
layers the maximally activating patches show (by default their first rows, the same channel
numbers) — one image optimised to raise it (:mod:`reportgen.methods.feature_viz`: MACO by
default, Lucid's Fourier parameterisation on request), all objectives in one batch.
MACO's amplitude spectrum is the mean spectrum of the user's own images, measured on the model
inputs during the dataset pass by this section's collector (which also keeps the per-channel
peak statistics the patches section ranks its channels by, so both pick the same channels).
The channel images are offered to the maximally activating patches section, which runs next and
draws each one in the row of its channel. Presentation: :mod:`.feature_viz_present`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from reportgen import loading, methods
from reportgen.analyses.common import TopKCollector, as_map, layer_channels, patch_layers
from reportgen.analyses.feature_viz_present import (
    Outcome,
    how_to_read,
    outcome_arrays,
    outcome_record,
    present_section,
)
from reportgen.contract import (
    MODEL_INPUT,
    Analysis,
    Cost,
    Metric,
    Needs,
    Result,
    SkipSection,
    UnitImage,
)
from reportgen.errors import ConfigError, did_you_mean
from reportgen.params import (
    AnalysisParams,
    Rule,
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
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext, Collector, SetupContext
    from reportgen.methods.spectra import PixelStatistics
    from reportgen.methods.vit import TokenLayout

OBJECTIVES = ("classes", "channels")
OUTPUT = "output"
"""The "layer" of class objectives (the model's output)."""
GPU_STEPS, GPU_CROPS, GPU_CHANNELS = 256, 6, 16
CPU_CROPS, CPU_CHANNELS = 2, 2
CPU_STEPS_MAX, CPU_STEPS_MIN, CPU_FULL_PIXELS = 48, 16, 64 * 64
"""On the CPU, ``steps: auto`` is 48 for inputs of up to 64×64 px and falls with the input's
pixels (48 · 64² / pixels) to at least 16: a 224-px ResNet-50 gets 16. (The demo's 32-px
digits need about 32 for every class image to be recognised with p ≥ 0.9.)"""
LR = {"maco": 1.0, "fourier": 0.05}
"""``lr: auto``: MACO's phase learning rate (radians) and Lucid's."""


def _class_entry(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and bool(value))


def _auto_or(inner: Rule, what: str) -> dict[str, Any]:
    return rule(either(literal("auto"), inner, text=f"must be 'auto' or {what}"))


@dataclass(frozen=True)
class FeatureVizParams(AnalysisParams):
    objectives: list[str] = field(
        default_factory=lambda: list(OBJECTIVES),
        metadata=rule(
            non_empty("needs at least one kind of objective"),
            each(one_of(*OBJECTIVES), "every entry must be 'classes' or 'channels'"),
        ),
    )
    """What to visualise: class logits, channels, or both."""
    classes: list[int | str] = field(
        default_factory=list,
        metadata=rule(
            each(Rule(_class_entry, ""), "every entry must be a class index ≥ 0 or a class name")
        ),
    )
    """Classes (indices or names); empty = the query images' classes (the explained class of
    each query, in query order), at most ``max_classes``."""
    max_classes: int = field(default=8, metadata=rule(between(1, 64)))
    layers: list[str] = field(default_factory=list, metadata=layer_ref())
    """Layers whose channels are visualised; empty = the layers the maximally activating
    patches show by default (on a vision transformer: its blocks, tokens on the patch grid)."""
    channels: list[int] = field(
        default_factory=list, metadata=rule(each(at_least(0), "must be channel numbers ≥ 0"))
    )
    """Channel numbers for every layer; empty = the first ``channels_per_layer`` rows of the
    maximally activating patches (the channels whose peak activation varies most)."""
    channels_per_layer: int | Literal["auto"] = field(
        default="auto", metadata=_auto_or(between(1, 256), "a number between 1 and 256")
    )
    """``auto``: 16 on a GPU (every row the patches section shows by default), 2 on the CPU."""
    parameterisation: Literal["maco", "fourier"] = field(
        default="maco", metadata=rule(one_of("maco", "fourier"))
    )
    steps: int | Literal["auto"] = field(
        default="auto", metadata=_auto_or(between(1, 10000), "a number between 1 and 10000")
    )
    """Adam steps; ``auto``: 256 on a GPU; on the CPU 48 for inputs up to 64×64 px, fewer for
    larger inputs (48 · 64² / pixels), at least 16."""
    crops: int | Literal["auto"] = field(
        default="auto", metadata=_auto_or(between(1, 64), "a number between 1 and 64")
    )
    """Views of each image per step (the first is the whole image); ``auto``: 6 on a GPU, 2 on
    the CPU. Each step costs one forward+backward pass per view."""
    lr: float | Literal["auto"] = field(
        default="auto", metadata=_auto_or(in_range(0, 100, lo_open=True), "a number in (0, 100]")
    )
    """Adam's learning rate (cosine schedule to zero); ``auto``: 1.0 for MACO's phases, 0.05 for
    the Fourier coefficients."""
    image_size: int | Literal["auto"] = field(
        default="auto", metadata=_auto_or(between(16, 1024), "a number between 16 and 1024")
    )
    """Side of the optimised image in pixels; ``auto``: the model's input size (views are
    always resampled to the input size)."""
    batch_size: int | Literal["auto"] = field(
        default="auto", metadata=_auto_or(at_least(1), "a positive whole number")
    )
    """Views per forward+backward pass; ``auto``: the measured batch for this model here."""
    transparency: bool = True
    """Also show each class image faded where its accumulated |gradient| is low (MACO's
    transparency map)."""
    tile_size: int = field(default=96, metadata=rule(between(32, 256)))
    """On-screen size of each image, in pixels."""


@dataclass(frozen=True)
class Objective:
    kind: Literal["class", "channel"]
    layer: str
    """``output`` for a class."""
    index: int
    """The class or the channel."""
    label: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.layer}:{self.index}"


@dataclass(frozen=True)
class Settings:
    """The budget, ``auto`` values resolved for this device and input."""

    steps: int
    crops: int
    lr: float
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    batch_size: int
    channels_per_layer: int
    on_gpu: bool


class FeatureVizCollector(TopKCollector):
    """The model inputs' power spectrum and colour moments, and each layer's per-channel peak
    statistics (a top-1 :class:`TopKCollector`: the statistics the patches section ranks
    channels by). Merges across torchrun ranks."""

    def __init__(self, layers: Sequence[str], layout: TokenLayout | None = None) -> None:
        super().__init__(layers, 1, layout)
        self.channel_layers = list(layers)
        self.layers = [MODEL_INPUT, *layers]
        self.spectrum = methods.spectra.SpectrumAccumulator()

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        self.spectrum.update(outputs[MODEL_INPUT])
        for name in self.channel_layers:
            out = as_map(name, outputs[name], self.layout, int(indices.numel()))
            if out is not None:
                self._update(name, indices, out)

    def merge(self, shards: Sequence[Any], positions: Sequence[torch.Tensor]) -> None:
        super().merge(shards, positions)
        for other in shards[1:]:
            self.spectrum.add(other.spectrum)


def resolve_settings(
    p: FeatureVizParams, ctx: AnalysisContext, input_size: tuple[int, int]
) -> Settings:
    on_gpu = ctx.device.type == "cuda"
    h, w = input_size
    cpu_steps = round(CPU_STEPS_MAX * CPU_FULL_PIXELS / (h * w))
    auto_steps = GPU_STEPS if on_gpu else max(CPU_STEPS_MIN, min(CPU_STEPS_MAX, cpu_steps))
    side = p.image_size
    image_size = input_size if side == "auto" else (int(side), max(1, round(int(side) * w / h)))
    return Settings(
        steps=auto_steps if p.steps == "auto" else int(p.steps),
        crops=(GPU_CROPS if on_gpu else CPU_CROPS) if p.crops == "auto" else int(p.crops),
        lr=LR[p.parameterisation] if p.lr == "auto" else float(p.lr),
        image_size=image_size,
        input_size=input_size,
        batch_size=ctx.batch(p.batch_size, backward=True),
        channels_per_layer=(GPU_CHANNELS if on_gpu else CPU_CHANNELS)
        if p.channels_per_layer == "auto"
        else int(p.channels_per_layer),
        on_gpu=on_gpu,
    )


def resolve_class(entry: int | str, names: Sequence[str], outputs: int) -> int:
    """A class index from an index or a name (ConfigError naming the nearest)."""
    if isinstance(entry, int):
        if entry >= outputs:
            raise ConfigError(
                f"analyses.feature_viz.classes: the model has {outputs} outputs (0–"
                f"{outputs - 1}), no class {entry}"
            )
        return entry
    if entry in names:
        return list(names).index(entry)
    raise ConfigError(
        f"analyses.feature_viz.classes: no class named {entry!r}{did_you_mean(entry, names)}"
    )


class FeatureVizAnalysis(Analysis[FeatureVizParams]):
    name = "feature_viz"
    title = "Feature visualisation: what would a class or a unit respond to most?"
    Params = FeatureVizParams
    needs = Needs(gradients=True)
    metrics = (
        Metric(
            "feature_viz_class_images_recognised",
            "class images the model assigns to their class (p ≥ 0.5)",
            headline=True,
            kind="percent",
        ),
    )
    order = 45
    """Before the maximally activating patches, which draw the channel images in their rows."""

    def collector(self, setup: SetupContext, p: FeatureVizParams) -> Collector | None:
        model = setup.model
        for entry in p.classes:  # a wrong class is an input error before the pass
            resolve_class(entry, setup.folder.class_names, setup.head.classes(model.num_classes))
        layers: list[str] = []
        if "channels" in p.objectives and model.supports_hooks:
            layers = patch_layers(self.name, model.module, setup.token_layout, p.layers, p.channels)
        return FeatureVizCollector(layers, setup.token_layout)

    # ------------------------------------------------------------------ what to optimise

    def _objectives(
        self, ctx: AnalysisContext, p: FeatureVizParams, col: FeatureVizCollector, s: Settings
    ) -> tuple[list[Objective], list[str]]:
        """The objectives in batch order (classes, then each layer's channels) and notes on
        what could not be visualised."""
        objectives: list[Objective] = []
        notes: list[str] = []
        if "classes" in p.objectives:
            classes = ctx.pass_result.num_classes
            if p.classes:
                chosen = [resolve_class(e, ctx.folder.class_names, classes) for e in p.classes]
            elif ctx.head.task == "binary":
                chosen = [1, 0]  # what the one logit's two ends look like: z high, z low
            else:
                chosen = [t for _, t in ctx.query_rows()]  # the classes (labels) explained
            unique = list(dict.fromkeys(chosen))[: p.max_classes]
            objectives += [Objective("class", OUTPUT, c, ctx.class_name(c)) for c in unique]
            if not unique:
                notes.append("Classes: none (no query images and no classes listed).")
        if "channels" in p.objectives:
            if not ctx.model.supports_hooks:
                kind = ctx.model.kind.replace("_", " ")
                notes.append(
                    f"Channels: unavailable — they need layer hooks, which a {kind} model does "
                    "not support."
                )
            listed = list(dict.fromkeys(p.channels)) or None
            for name in col.channel_layers:
                st = col.state.get(name)
                if st is None:
                    notes.append(f"{name} has no spatial output map; left out.")
                    continue
                chans = layer_channels(self.name, name, st, listed, s.channels_per_layer)
                objectives += [Objective("channel", name, c, f"ch {c}") for c in chans]
        return objectives, notes

    def _prepare(
        self, ctx: AnalysisContext, p: FeatureVizParams
    ) -> tuple[FeatureVizCollector, Settings, list[Objective], list[str]]:
        col = ctx.collector
        if not isinstance(col, FeatureVizCollector) or col.spectrum.result() is None:
            raise SkipSection("the dataset pass measured no images for this section")
        s = resolve_settings(p, ctx, col.spectrum.size)
        objectives, notes = self._objectives(ctx, p, col, s)
        return col, s, objectives, notes

    def cost(self, ctx: AnalysisContext, p: FeatureVizParams) -> Cost:
        _, s, objectives, _ = self._prepare(ctx, p)
        n = len(objectives)
        # Every step: one forward+backward per view; at the end one forward per whole image.
        return Cost(forward=n, backward=s.steps * s.crops * n)

    # ------------------------------------------------------------------ the work

    def run(self, ctx: AnalysisContext, p: FeatureVizParams) -> Result:
        col, s, objectives, notes = self._prepare(ctx, p)
        if not objectives:
            raise SkipSection(" ".join(notes) or "nothing to visualise")
        spectrum = col.spectrum.result()
        assert spectrum is not None
        pre = ctx.preprocessor
        stats = spectrum.in_pixels(pre.mean, pre.std).resized(s.image_size)
        # Channels of the earliest layers first, classes last: the forward passes of the views
        # of early layers alone stop there.
        order = [o for o in objectives if o.kind == "channel"]
        order += [o for o in objectives if o.kind == "class"]
        outcomes: list[Outcome] = []
        try:
            outcomes = self._optimise(ctx, p, s, stats, order)
        except (RuntimeError, ValueError):
            # One part failing is one part failing: each layer's objectives (and the classes)
            # again on their own, the failing ones said.
            for layer in dict.fromkeys(o.layer for o in order):
                try:
                    outcomes += self._optimise(
                        ctx, p, s, stats, [o for o in order if o.layer == layer]
                    )
                except (RuntimeError, ValueError) as exc:
                    what = "class images" if layer == OUTPUT else layer
                    notes.append(f"{what}: failed — {type(exc).__name__}: {exc}")
        rank = {o.key: i for i, o in enumerate(objectives)}
        outcomes.sort(key=lambda o: rank[o.objective.key])
        if not outcomes:
            raise SkipSection(" ".join(notes))
        self._share(ctx, outcomes)
        classes = [o for o in outcomes if o.objective.kind == "class"]
        recognised = sum(1 for o in classes if o.recognised) / len(classes) if classes else None
        data_slope = methods.spectra.power_slope(stats.amplitude**2, s.image_size[1])
        section = self.section(how_to_read(p.parameterisation))
        return Result(
            present_section(
                section, outcomes, notes, p, s, data_slope, f"{GPU_STEPS} steps × {GPU_CROPS} views"
            ),
            arrays=outcome_arrays(outcomes),
            metrics={"feature_viz_class_images_recognised": recognised},
            record=outcome_record(outcomes, p, s, data_slope),
        )

    def _optimise(
        self,
        ctx: AnalysisContext,
        p: FeatureVizParams,
        s: Settings,
        stats: PixelStatistics,
        members: list[Objective],
    ) -> list[Outcome]:
        """One batch: every objective's image optimised together, then each whole image's
        final value (and a class's probability) from one forward pass each."""
        fv = methods.feature_viz
        model = ctx.model.module
        targets = [
            fv.Target(o.index)
            if o.kind == "class"
            else fv.Target(o.index, loading.types.find_layer(model, o.layer), o.layer)
            for o in members
        ]

        def to_map(name: str, output: Any, batch: int) -> torch.Tensor | None:
            return as_map(name, output, ctx.token_layout, batch)

        score = fv.scorer(model, targets, to_map, ctx.head)
        result = fv.optimise(
            p.parameterisation,
            stats,
            score,
            ctx.preprocessor.normalise,
            [fv.objective_seed(ctx.seed, o.key) for o in members],
            fv.Budget(s.steps, s.crops, s.lr, s.batch_size),
            s.input_size,
            ctx.device,
            steps=lambda r: ctx.iterate(r, desc="feature_viz", total=len(r)),
        )
        # Each whole final image once more: a channel's value, or a class's logit and
        # probability (one forward pass each).
        forward = ctx.batch("auto")
        values: list[float] = [0.0] * len(members)
        probabilities: list[float | None] = [None] * len(members)
        channels = [i for i, o in enumerate(members) if o.kind == "channel"]
        if channels:
            channel_score = fv.scorer(model, [targets[i] for i in channels], to_map, ctx.head)
            got = fv.evaluate(
                channel_score,
                ctx.preprocessor.normalise,
                result.pixels[channels],
                s.input_size,
                forward,
            )
            for i, value in zip(channels, got.tolist(), strict=True):
                values[i] = value
        rows = [i for i, o in enumerate(members) if o.kind == "class"]
        if rows:
            classes = torch.tensor([members[i].index for i in rows], device=ctx.device)
            logits = fv.evaluate(
                lambda x, _owners: loading.models.extract_logits(model(x)),
                ctx.preprocessor.normalise,
                result.pixels[rows],
                s.input_size,
                forward,
            )
            scored = zip(
                rows,
                fv.class_objective(logits, classes, ctx.head).tolist(),
                fv.class_probability(logits, classes, ctx.head).tolist(),
                strict=True,
            )
            for i, value, prob in scored:
                values[i], probabilities[i] = value, prob
        return [
            Outcome(
                objective=o,
                pixels=result.pixels[i].float().cpu().numpy(),
                display=loading.images.to_display(result.pixels[i]),
                transparency=result.transparency[i].float().cpu().numpy(),
                history=result.history[:, i].tolist(),
                value=float(values[i]),
                probability=probabilities[i],
                slope=methods.spectra.spectral_slope(result.pixels[i].cpu()),
            )
            for i, o in enumerate(members)
        ]

    @staticmethod
    def _share(ctx: AnalysisContext, outcomes: list[Outcome]) -> None:
        """Channel images for the patches section, which draws each in its channel's row."""
        by_layer: dict[str, dict[int, UnitImage]] = {}
        for o in outcomes:
            if o.objective.kind == "channel":
                by_layer.setdefault(o.objective.layer, {})[o.objective.index] = UnitImage(
                    o.display, o.value
                )
        for layer, images in by_layer.items():
            ctx.share_unit_images(layer, images)
