"""The contract every analysis follows.

An analysis is one module with one :class:`Analysis` subclass: a ``name`` (config key and
``--analyses`` value), a ``title``, a frozen ``Params`` dataclass whose fields carry their rules
(:mod:`reportgen.params`), what it ``needs`` from the model and the run (:class:`Needs`, read in
one place by the pipeline's plan, which turns an unmet need into a skipped section with the
reason), the ``metrics`` it may report (:class:`Metric`; headline ones reach the run summary and
summary.md), an optional collector that rides along the single dataset pass, and :meth:`run`,
which turns the context into a :class:`Result`. Register it with one line in
``reportgen/analyses/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from reportgen.params import AnalysisParams
from reportgen.report.section import Section

if TYPE_CHECKING:
    from reportgen.contract.collectors import Collector
    from reportgen.contract.context import AnalysisContext, SetupContext
    from reportgen.methods.trust.maps import MapKey

P = TypeVar("P", bound=AnalysisParams)

DISCOVERED_SLICES = "slices.discovered"
"""Key under which the slices section shares (``AnalysisContext.share_array``) its flagged
discovered clusters (N int32 by pass position: 0 outside them, i inside ``D{i}``): a baseline in
the run says whether each failure was already there."""


@dataclass(frozen=True)
class Needs:
    """What an analysis needs; the plan skips it, with the reason, when the run cannot give it."""

    hooks: bool = False
    """Python forward hooks on submodules (not on TorchScript / exported models)."""
    features: bool = False
    """The penultimate features from the dataset pass (taken with a hook)."""
    gradients: bool = False
    """Backward passes through the model."""
    metadata: bool = False
    """Metadata columns in the data (a manifest's or dataset's extra columns). Data without any
    leaves the analysis out of the report quietly (listed in summary.json's ``run.left_out``),
    unless the configuration or ``--analyses`` names it: then it is a skipped section."""
    queries: bool = False
    """Query images (a per-image section; ``data.queries: 0`` leaves it out)."""


@dataclass(frozen=True)
class Metric:
    """A number (or short text) an analysis reports into summary.json's ``metrics``."""

    key: str
    label: str
    """How the run summary and summary.md name it."""
    headline: bool = False
    """Shown as a card in the run summary and a row in summary.md."""
    kind: Literal["number", "percent", "count", "text"] = "number"


@dataclass(frozen=True)
class Cost:
    """The images an analysis puts through the model after the dataset pass (its price)."""

    forward: int = 0
    """Forward-only passes, one image each."""
    backward: int = 0
    """Forward+backward passes, one image each."""

    BACKWARD_WEIGHT: ClassVar[int] = 3
    """A forward+backward pass costs about three forwards (the backward does about twice the
    forward's arithmetic)."""

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.forward + other.forward, self.backward + other.backward)

    @property
    def units(self) -> int:
        """Forward-image equivalents."""
        return self.forward + self.BACKWARD_WEIGHT * self.backward

    def describe(self) -> str:
        parts = []
        if self.forward:
            parts.append(f"{self.forward:,} forward")
        if self.backward:
            parts.append(f"{self.backward:,} forward+backward")
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class UnitImage:
    """An image optimised for one channel of a layer (feature visualisation), offered to the
    sections that show the same channel (the maximally activating patches)."""

    pixels: np.ndarray
    """H×W×3 uint8."""
    value: float
    """The channel's mean activation on it."""


class SkipSection(Exception):
    """Raised by an analysis that cannot run on this model/data; the message is the reason."""


@dataclass
class Result:
    """What an analysis returns: its section, raw arrays for arrays.npz, and its metrics."""

    section: Section
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    """Keys among the analysis' declared ``metrics``; values JSON-safe numbers, text or None."""
    record: dict[str, Any] | None = None
    """A JSON-safe record summary.json keeps under the analysis' name (its detailed results)."""
    warnings: list[str] = field(default_factory=list)
    """Findings the reader must see first (the run's warnings, "Read this first"), e.g. a
    subgroup the model serves significantly worse."""


class Analysis(Generic[P]):
    name: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type[AnalysisParams]] = AnalysisParams
    needs: ClassVar[Needs] = Needs()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    order: ClassVar[int] = 100

    def collector(self, setup: SetupContext, params: P) -> Collector | None:
        """A collector for the dataset pass, or None (the default)."""
        return None

    def run(self, ctx: AnalysisContext, params: P) -> Result:
        raise NotImplementedError

    def shares(self, ctx: AnalysisContext, params: P) -> tuple[MapKey, ...]:
        """Keys of the attribution maps ``run`` will offer later analyses
        (:meth:`AnalysisContext.share_maps`); known before any section runs, for the cost plan."""
        return ()

    def cost(self, ctx: AnalysisContext, params: P) -> Cost:
        """The model passes ``run`` will make (the run's cost plan, before the work): every
        analysis that runs the model after the dataset pass says how often."""
        return Cost()

    def section(self, how_to_read: str = "") -> Section:
        return Section(name=self.name, title=self.title, how_to_read=how_to_read)
