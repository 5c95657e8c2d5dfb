"""Analysis parameters and the rules they carry.

Every analysis' parameters are a frozen dataclass derived from :class:`AnalysisParams`. A field's
constraint is declared once, as field metadata, with :func:`rule` (``between(1, 50)``,
``one_of(...)``, ``each(...)``, ...) or :func:`layer_ref` for a field that names model layers.
One validator (:func:`validate_params`) reads the rules; ``list-analyses`` and the README table
read :func:`describe`; the pipeline's plan reads :func:`layer_fields` to check every named layer
against the model before any work. Nothing here knows any particular analysis.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from reportgen.errors import ConfigError


@dataclass(frozen=True)
class AnalysisParams:
    """Base of every analysis' parameters. ``enabled: false`` leaves the analysis out."""

    enabled: bool = True


@dataclass(frozen=True)
class Rule:
    """A constraint on one value: ``check`` returns True when the value is fine."""

    check: Callable[[Any], bool]
    text: str
    """What a valid value is, in words ("must be between 1 and 50")."""

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def between(lo: float, hi: float) -> Rule:
    return Rule(lambda v: _finite_number(v) and lo <= v <= hi, f"must be between {lo:g} and {hi:g}")


def at_least(lo: float, text: str | None = None) -> Rule:
    return Rule(lambda v: _finite_number(v) and v >= lo, text or f"must be at least {lo:g}")


def positive() -> Rule:
    return Rule(lambda v: _finite_number(v) and v > 0, "must be positive")


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """``lo ≤ v ≤ hi`` with either end optionally open (e.g. ``(0, 1]``)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"

    def ok(v: Any) -> bool:
        return (
            _finite_number(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )

    return Rule(ok, f"must be in {left}{lo:g}, {hi:g}{right}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(repr(c) for c in choices)}")


def each(inner: Rule, text: str | None = None) -> Rule:
    """Every element of a list satisfies ``inner``."""
    return Rule(lambda v: all(inner(x) for x in v), text or f"every entry {inner.text}")


def non_empty(text: str = "needs at least one entry") -> Rule:
    return Rule(lambda v: len(v) > 0, text)


def either(*rules: Rule, text: str) -> Rule:
    """The value satisfies at least one of ``rules`` (e.g. ``'mean'`` or a number in [0, 1])."""
    return Rule(lambda v: any(r(v) for r in rules), text)


def literal(value: Any) -> Rule:
    return Rule(lambda v: v == value, f"must be {value!r}")


def rule(*rules: Rule) -> dict[str, Any]:
    """Field metadata declaring the rules a field's value must satisfy (all of them)."""
    return {"rules": rules}


def layer_ref(
    *,
    auto: str | None = None,
    spatial: bool = False,
    parameters: bool = False,
    also: Sequence[Rule] = (),
) -> dict[str, Any]:
    """Field metadata: the field names model layers (a name, or a list of names).

    ``auto``: a value that means "chosen automatically" and is not a layer name. ``spatial``:
    the layers must output N×C×H×W maps. ``parameters``: each layer must own parameters (a
    randomisation stage). The plan checks every such name against the model (and, for
    ``spatial``, with one probe forward pass) before the dataset pass.
    """
    return {
        "rules": tuple(also),
        "layer": True,
        "auto": auto,
        "spatial": spatial,
        "parameters": parameters,
    }


def needs_parameters(params: AnalysisParams, field_name: str) -> bool:
    """True when the layers named by ``field_name`` must own parameters."""
    return bool(params.__dataclass_fields__[field_name].metadata.get("parameters"))


def field_rules(f: dataclasses.Field[Any]) -> tuple[Rule, ...]:
    return tuple(f.metadata.get("rules", ()))


def validate_params(params: AnalysisParams, path: str) -> None:
    """Raise ConfigError naming ``path.field`` for the first value that breaks its rules."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        for r in field_rules(f):
            if not r(value):
                raise ConfigError(f"{path}.{f.name}: {r.text} (got {value!r})")


def layer_fields(
    params: AnalysisParams, *, spatial_only: bool = False
) -> Iterator[tuple[str, list[str]]]:
    """(field name, layer names) for every layer-valued field, automatic values left out;
    ``spatial_only``: only the fields whose layers must output spatial maps."""
    for f in dataclasses.fields(params):
        if not f.metadata.get("layer") or (spatial_only and not f.metadata.get("spatial")):
            continue
        value = getattr(params, f.name)
        names = [value] if isinstance(value, str) else list(value or [])
        auto = f.metadata.get("auto")
        yield f.name, [n for n in names if isinstance(n, str) and n != auto]


@dataclass(frozen=True)
class FieldInfo:
    name: str
    default: Any
    rules: str
    """The rules in words, "" when none."""
    layer: bool
    doc: str


def _choices(tp: Any) -> list[str]:
    """The literal values an annotation allows (``Literal['a', 'b'] | float`` -> ['a', 'b'])."""
    if typing.get_origin(tp) is Literal:
        return [repr(a) for a in typing.get_args(tp)]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in _choices(arg)]
    return []


def describe(cls: type[AnalysisParams]) -> list[FieldInfo]:
    """Each parameter with its default and rules in words (for list-analyses and the docs)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        texts = [r.text for r in field_rules(f)]
        choices = _choices(hints.get(f.name))
        if choices and not texts:
            texts.append(f"one of {', '.join(choices)}")
        if f.metadata.get("layer"):
            texts.insert(
                0,
                "layer name(s) in the model"
                + (f" or {f.metadata['auto']!r}" if f.metadata.get("auto") else ""),
            )
        out.append(
            FieldInfo(
                f.name,
                default,
                "; ".join(texts),
                bool(f.metadata.get("layer")),
                f.metadata.get("doc", ""),
            )
        )
    return out
