"""Randomisation stages: which modules the cascade re-initialises, in which order."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen.errors import LayerError, ReportgenError, did_you_mean
from reportgen.methods.hooks import hooks

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


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """One step of the randomisation cascade."""

    name: str
    """What the report calls it: a module name (``layer4``), or several joined (``conv1+bn1``)."""
    modules: tuple[str, ...]
    """Modules whose own parameters (``recurse=False``) and buffers the step re-initialises."""
    parameters: int = 0
    """How many parameter values the step re-initialises (the modules' own parameters)."""


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


def _first_call(record: _CallRecord, name: str) -> int | None:
    """Call index of ``name`` or, when it was not called itself (a ``ModuleList`` or
    ``ModuleDict`` iterated in ``forward``), of the first module below it that was."""
    if name in record.order:
        return record.order[name]
    prefix = f"{name}." if name else ""
    below = [i for n, i in record.order.items() if n.startswith(prefix)]
    return min(below) if below else None


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
        if _first_call(record, prefix + child_name) is not None
        and _units_under(model, prefix + child_name)
    ]
    children.sort(key=lambda nc: _first_call(record, nc[0]) or 0)
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
    _cover_every_parameter(model, unit_groups)
    return [Stage(n, tuple(us), _param_count(model, us)) for n, us in reversed(unit_groups)]


def _common_parts(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _cover_every_parameter(model: nn.Module, unit_groups: list[tuple[str, list[str]]]) -> None:
    """Give every parameter-owning module a stage, so the cascade's last state is the whole
    network re-initialised: one never called in the sample pass joins the stage of its nearest
    relative by name (else the input-most stage). Raises when anything is still left out."""
    owners = _units_under(model, "")
    covered = {u for _, us in unit_groups for u in us}
    for unit in owners:
        if unit in covered or not unit_groups:
            continue

        def shared(us: list[str], unit: str = unit) -> int:
            """Leading name parts ``unit`` shares with the closest of ``us``."""
            parts = unit.split(".")
            return max(_common_parts(parts, u.split(".")) for u in us)

        best = max(range(len(unit_groups)), key=lambda i: (shared(unit_groups[i][1]), -i))
        unit_groups[best][1].append(unit)
        covered.add(unit)
    missing = [u for u in owners if u not in covered]
    if missing:
        raise ReportgenError(
            f"randomisation stages leave {len(missing)} module(s) with parameters out "
            f"({', '.join(missing[:5])}); name the stages in attribution_checks.stages"
        )


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
        stages.append(
            (
                _stage_position(record, model, units),
                Stage(name, tuple(units), _param_count(model, units)),
            )
        )
    stages.sort(key=lambda ps: -ps[0])
    return [s for _, s in stages]
