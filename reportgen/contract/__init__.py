"""What analyses and the pipeline agree on. Imports nothing above ``loading``.

An analysis module needs only this package (plus ``params`` for its parameters and shared
helpers); the pipeline builds the contexts and reads the declarations. See
:class:`~reportgen.contract.analysis.Analysis`.

The declarations (``Analysis``, ``Needs``, ``Metric``, ``Result``, ``SkipSection``) import no
torch; the contexts and the pass result, which hold tensors, load on first use, so that reading
the analyses' declarations (``reportgen list-analyses``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reportgen.contract.analysis import (
    DISCOVERED_SLICES,
    Analysis,
    Cost,
    Metric,
    Needs,
    Result,
    SkipSection,
    UnitImage,
)
from reportgen.contract.collectors import MODEL_INPUT, Collector, MergeableCollector

if TYPE_CHECKING:
    from reportgen.contract.context import (
        AnalysisContext,
        QueryBatch,
        SetupContext,
        autocast,
    )
    from reportgen.contract.passes import PassResult

_LAZY = {
    "AnalysisContext": "reportgen.contract.context",
    "QueryBatch": "reportgen.contract.context",
    "SetupContext": "reportgen.contract.context",
    "autocast": "reportgen.contract.context",
    "PassResult": "reportgen.contract.passes",
}

__all__ = [
    "DISCOVERED_SLICES",
    "MODEL_INPUT",
    "Analysis",
    "AnalysisContext",
    "Collector",
    "Cost",
    "MergeableCollector",
    "Metric",
    "Needs",
    "PassResult",
    "QueryBatch",
    "Result",
    "SetupContext",
    "SkipSection",
    "UnitImage",
    "autocast",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reportgen.contract' has no attribute {name!r}")
