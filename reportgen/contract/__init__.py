"""What analyses and the pipeline agree on. Imports nothing above ``loading``.

An analysis module needs only this package (plus ``params`` for its parameters and shared
helpers); the pipeline builds the contexts and reads the declarations. See
:class:`~reportgen.contract.analysis.Analysis`.
"""

from reportgen.contract.analysis import Analysis, Metric, Needs, Result, SkipSection
from reportgen.contract.collectors import Collector, MergeableCollector
from reportgen.contract.context import AnalysisContext, QueryBatch, SetupContext, autocast
from reportgen.contract.passes import PassResult

__all__ = [
    "Analysis",
    "AnalysisContext",
    "Collector",
    "MergeableCollector",
    "Metric",
    "Needs",
    "PassResult",
    "QueryBatch",
    "Result",
    "SetupContext",
    "SkipSection",
    "autocast",
]
