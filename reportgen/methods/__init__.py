"""The science: tensors in, arrays out, no report types.

Attribution (:mod:`.attribution`: gradients, guided backprop, Grad-CAM, integrated gradients,
SmoothGrad; method names in :mod:`.names`), perturbation (:mod:`.perturbation`: occlusion),
receptive fields (:mod:`.receptive_field`), vision-transformer tokens and maps (:mod:`.vit`,
:mod:`.vit_maps`), hooks (:mod:`.hooks`), exact k-NN (:mod:`.knn`), t-SNE (:mod:`.tsne` and its
isolated native child :mod:`.native_tsne`), calibration (:mod:`.calibration`), paired statistics
(:mod:`.stats`), binary and multi-label scores (:mod:`.scores`: AUROC, average precision,
DeLong), subgroup statistics (:mod:`.slicing`), failing clusters in feature space
(:mod:`.discovery`), feature visualisation by optimisation (:mod:`.feature_viz`, the data's
spectra in :mod:`.spectra`), and the attribution checks (:mod:`.trust`). Nothing here imports analyses,
compare, pipeline or report.

The modules load on first attribute access (``from reportgen import methods`` then
``methods.knn.knn(...)``; see :mod:`reportgen.runtime.lazy`), so importing this package imports
no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reportgen.runtime.lazy import lazy_submodules

if TYPE_CHECKING:
    from reportgen.methods import (
        attribution,
        calibration,
        discovery,
        feature_viz,
        hooks,
        knn,
        names,
        native_tsne,
        perturbation,
        receptive_field,
        scores,
        slicing,
        spectra,
        stats,
        trust,
        tsne,
        vit,
        vit_maps,
    )

__all__ = [
    "attribution",
    "calibration",
    "discovery",
    "feature_viz",
    "hooks",
    "knn",
    "names",
    "native_tsne",
    "perturbation",
    "receptive_field",
    "scores",
    "slicing",
    "spectra",
    "stats",
    "trust",
    "tsne",
    "vit",
    "vit_maps",
]

__getattr__ = lazy_submodules(__name__, __all__)
