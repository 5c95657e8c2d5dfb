"""The plan: which analyses run, which are skipped and why, decided before any work.

This is the one place that reads what analyses declare they need (:class:`~reportgen.contract.Needs`)
and turns an unmet need into a skipped section with the reason, and the one place that checks
every layer name the configuration gives (``model.penultimate`` and every layer-valued analysis
parameter, declared with :func:`reportgen.params.layer_ref`) against the model, so that a typo is
an input error before the dataset pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reportgen.config import Config
from reportgen.contract import Analysis, Needs
from reportgen.errors import ConfigError, LayerError
from reportgen.heads import Head
from reportgen.loading.types import LoadedModel
from reportgen.params import layer_fields, needs_parameters
from reportgen.pipeline.summary import TASK_METRICS
from reportgen.report.gates import COMPARE_PREFIX, Gate, known_metric_names, parse_gates
from reportgen.report.section import Section


@dataclass
class Plan:
    analyses: list[tuple[str, Analysis]]
    """Enabled analyses in report order."""
    decided: dict[str, Section] = field(default_factory=dict)
    """Sections already decided before the pass (skipped, with the reason)."""

    @property
    def runnable(self) -> list[tuple[str, Analysis]]:
        return [(n, a) for n, a in self.analyses if n not in self.decided]


def unmet_need(needs: Needs, model: LoadedModel, query_count: int) -> str | None:
    """Why a run cannot give an analysis what it needs, or None when it can."""
    if (needs.hooks or needs.features) and not model.supports_hooks:
        kind = {"torchscript": "a TorchScript", "exported": "an exported (torch.export)"}.get(
            model.kind, "this"
        )
        return (
            f"needs layer hooks, which {kind} model does not support; "
            "load a state dict with --model/--weights for this section"
        )
    if needs.gradients and not model.supports_gradients:
        return f"needs gradients, which a {model.kind.replace('_', ' ')} model does not give"
    if needs.queries and query_count == 0:
        return "no query images (data.queries is 0)"
    return None


def query_count(config: Config) -> int:
    """How many query images the configuration asks for (the pass may read fewer)."""
    spec = config.data.queries
    return len(spec) if isinstance(spec, list) else int(spec)


def check_layers(
    config: Config, model: LoadedModel, registry: Mapping[str, type[Analysis]]
) -> None:
    """Every layer the configuration names exists in the model (LayerError naming the key)."""
    if config.model.penultimate != "auto" and model.supports_hooks:
        try:
            model.layer(config.model.penultimate)
        except LayerError as exc:
            raise LayerError(f"model.penultimate: {exc}") from None
    for name in registry:
        params = config.analyses[name]
        if not params.enabled:
            continue
        for field_name, layers in layer_fields(params):
            for layer in layers:
                try:
                    module = model.layer(layer)
                except LayerError as exc:
                    raise LayerError(f"analyses.{name}.{field_name}: {exc}") from None
                if needs_parameters(params, field_name) and not any(
                    True for _ in module.parameters()
                ):
                    raise LayerError(
                        f"analyses.{name}.{field_name}: {layer} has no parameters to "
                        "re-initialise; name modules that own weights (or use auto)"
                    )


def make_plan(config: Config, model: LoadedModel, registry: Mapping[str, type[Analysis]]) -> Plan:
    """The enabled analyses, the ones skipped for unmet needs, layer names checked."""
    check_layers(config, model, registry)
    analyses = [(name, cls()) for name, cls in registry.items() if config.analyses[name].enabled]
    plan = Plan(analyses)
    count = query_count(config)
    for name, analysis in analyses:
        reason = unmet_need(analysis.needs, model, count)
        if reason:
            plan.decided[name] = Section(name, analysis.title, status="skipped", reason=reason)
    return plan


BASE_METRICS = ("accuracy", "num_labelled", *(k for keys in TASK_METRICS.values() for k in keys))
"""Metrics a run reports whatever analyses it runs (the task's own: binary or multi-label)."""
COMPARE_TASK_KEYS = {
    "binary": ("auroc_baseline", "auroc", "auroc_delta", "auroc_delta_p"),
    "multilabel": (
        "macro_auroc_baseline",
        "macro_auroc",
        "macro_auroc_delta",
        "worst_label_auroc_delta",
    ),
}


def metric_names(registry: Mapping[str, type[Analysis]]) -> list[str]:
    """Every name summary.json's ``metrics`` can hold."""
    return [*BASE_METRICS, *(m.key for cls in registry.values() for m in cls.metrics)]


def config_gates(config: Config, registry: Mapping[str, type[Analysis]]) -> list[Gate]:
    """The run's gates, parsed and checked against the metrics it can report (ConfigError,
    with the nearest names, before any work). ``compare.<key>`` needs a baseline."""
    if not config.gates:
        return []
    for expr in config.gates:
        if expr.strip().startswith(COMPARE_PREFIX) and not config.baseline.enabled:
            raise ConfigError(
                f"gates: {expr.strip()!r} checks the comparison with a baseline, but the run has "
                "none; add --baseline-weights OLD (or baseline.weights), or use "
                "`reportgen compare OLD_DIR NEW_DIR --fail-on ...`"
            )
    known = known_metric_names(metric_names(registry), compare=config.baseline.enabled)
    return parse_gates(config.gates, known, source="gates")


def check_task_gates(gates: list[Gate], head: Head, source: str) -> None:
    """A gate on another task's metric (``auroc`` on a multiclass model) can never pass: an
    input error naming the task, before any work."""
    for g in gates:
        metric = g.metric[len(COMPARE_PREFIX) :] if g.is_compare else g.metric
        table = COMPARE_TASK_KEYS if g.is_compare else TASK_METRICS
        owner = next((task for task, keys in table.items() if metric in keys), None)
        if owner is not None and owner != head.task:
            raise ConfigError(
                f"gates: {g.expr!r} checks {g.metric}, a {owner} model's metric, but this model "
                f"is {head.task} ({source}); gate on "
                + (
                    "accuracy"
                    if head.task == "multiclass"
                    else ", ".join(TASK_METRICS[head.task][:3])
                )
                + ", or set model.task"
            )


def check_spatial_layers(
    config: Config,
    model: LoadedModel,
    registry: Mapping[str, type[Analysis]],
    input_size: tuple[int, int] | None,
) -> None:
    """Layers that must output spatial maps (``layer_ref(spatial=True)``) do, on one probe
    forward pass of a zero image (only when such a layer is named)."""
    wanted = [
        (f"analyses.{name}.{field_name}", layer)
        for name in registry
        if config.analyses[name].enabled
        for field_name, layers in layer_fields(config.analyses[name], spatial_only=True)
        for layer in layers
    ]
    if not wanted or input_size is None or not model.supports_hooks:
        return
    import torch

    from reportgen.methods.attribution import spatial_layers_in_call_order

    device = next(model.module.parameters(), torch.empty(0)).device
    sample = torch.zeros(1, model.in_channels, *input_size, device=device)
    found = spatial_layers_in_call_order(model.module, sample)  # one probe forward pass
    spatial = {name for name, _ in found}
    for key, layer in wanted:
        if layer not in spatial:
            maps = [n for n, hw in found if hw > 1]
            raise LayerError(
                f"{key}: layer '{layer}' does not output a spatial (N×C×H×W) map; choose one "
                f"that does, e.g. {', '.join(repr(n) for n in maps[-3:]) or 'none found'}, "
                "or 'auto'"
            )
