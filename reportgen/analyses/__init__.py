"""The analyses, registered in one place (name -> class), in report order."""

from __future__ import annotations

from reportgen.analyses.activations import ActivationsAnalysis
from reportgen.analyses.attribution_checks import AttributionChecksAnalysis
from reportgen.analyses.audit import AuditAnalysis
from reportgen.analyses.embedding import EmbeddingAnalysis
from reportgen.analyses.feature_viz import FeatureVizAnalysis
from reportgen.analyses.filters import FiltersAnalysis
from reportgen.analyses.max_patches import MaxPatchesAnalysis
from reportgen.analyses.neighbors import NeighborsAnalysis
from reportgen.analyses.occlusion import OcclusionAnalysis
from reportgen.analyses.saliency import SaliencyAnalysis
from reportgen.analyses.slices import SlicesAnalysis
from reportgen.contract import Analysis

_ALL: list[type[Analysis]] = [
    FiltersAnalysis,
    NeighborsAnalysis,
    EmbeddingAnalysis,
    ActivationsAnalysis,
    FeatureVizAnalysis,
    MaxPatchesAnalysis,
    OcclusionAnalysis,
    SaliencyAnalysis,
    AttributionChecksAnalysis,
    AuditAnalysis,
    SlicesAnalysis,
]

REGISTRY: dict[str, type[Analysis]] = {cls.name: cls for cls in sorted(_ALL, key=lambda c: c.order)}


def registered() -> dict[str, type[Analysis]]:
    """The registered analyses, name -> class, in report order (their ``order``). Importing
    this package imports no torch: analyses bind their compute dependencies lazily."""
    return dict(sorted(REGISTRY.items(), key=lambda item: item[1].order))


__all__ = ["REGISTRY", "registered"]
