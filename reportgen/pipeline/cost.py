"""The run's cost plan: each section's model passes before the work, counted ones after it.

Every analysis that runs the model after the dataset pass declares its price
(:meth:`~reportgen.contract.Analysis.cost`); the plan is made once the pass is done (the query
images, the stages and the shared maps are known then), printed before the sections run,
written to ``timings.json`` (``plan``) and summary.json (``run.planned_passes``), and set against
the passes actually counted (``timings.json``'s ``passes``) with a forward pre-hook on the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reportgen import methods
from reportgen.contract import Analysis, Cost
from reportgen.contract.context import AnalysisContext


def plan_costs(
    analyses: Sequence[tuple[str, Analysis[Any]]],
    context_for: Any,
    params: dict[str, Any],
) -> dict[str, Cost | None]:
    """Name -> planned passes (None when the analysis could not say: it will fail or skip with
    its own reason when it runs — a price that cannot be worked out never ends the run). Maps
    promised by one analysis are free for the later ones."""
    contexts: dict[str, AnalysisContext] = {name: context_for(name) for name, _ in analyses}
    for name, analysis in analyses:
        try:
            contexts[name].promise_maps(analysis.shares(contexts[name], params[name]))
        except Exception:  # the analysis fails with its own message when it runs
            continue
    out: dict[str, Cost | None] = {}
    for name, analysis in analyses:
        try:
            out[name] = analysis.cost(contexts[name], params[name])
        except Exception:  # the analysis fails with its own message when it runs
            out[name] = None
    return out


def as_record(cost: Cost | None) -> dict[str, int] | None:
    return None if cost is None else {"forward": cost.forward, "backward": cost.backward}


def describe_plan(costs: dict[str, Cost | None]) -> str:
    """One line: each section's passes and the total in forward-image equivalents."""
    shown = [f"{n} {c.describe()}" for n, c in costs.items() if c is not None and c.units]
    total = sum(c.units for c in costs.values() if c is not None)
    if not shown:
        return "no model passes after the dataset pass"
    return "; ".join(shown) + f" — about {total:,} forward-image equivalents in all"


@dataclass
class Counted:
    """Images the model saw while one section ran (with and without autograd)."""

    forward: int = 0
    backward: int = 0
    incremental: int = 0
    """Of the forwards: occluded copies computed incrementally (recomputing changed regions)."""

    def record(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}


@contextlib.contextmanager
def count_passes(model: nn.Module, enabled: bool = True) -> Iterator[Counted]:
    """Count the images through ``model``'s top-level forward (a forward pre-hook; copies of
    the model made meanwhile, e.g. the randomised ones, carry it too). A call with autograd on
    counts as forward+backward: the sections only take gradients when they need them. Occluded
    copies computed incrementally count as forwards too (``incremental`` says how many)."""
    counted = Counted()
    if not enabled:
        yield counted
        return
    tally = methods.incremental.TALLY
    before = tally.copies

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if tally.checking:
            return  # a self-check of the incremental path, not planned work
        x = args[0] if args else next(iter(kwargs.values()), None)
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim else 1
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            counted.backward += n
        else:
            counted.forward += n

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counted
    finally:
        handle.remove()
        counted.incremental = tally.copies - before
        counted.forward += counted.incremental


def eta_seconds(
    costs: dict[str, Cost | None],
    done: dict[str, float],
    first_rate: float | None,
) -> float | None:
    """Seconds left for the sections not yet run, at the speed the finished ones ran at
    (forward-image equivalents per second; before any, ``first_rate``: the dataset pass's)."""
    finished = [(done[n], c.units) for n, c in costs.items() if n in done and c is not None]
    spent = sum(sec for sec, units in finished if units)
    units = sum(u for _, u in finished)
    rate = units / spent if spent > 0 and units > 0 else first_rate
    if not rate:
        return None
    left = sum(c.units for n, c in costs.items() if n not in done and c is not None)
    return left / rate
