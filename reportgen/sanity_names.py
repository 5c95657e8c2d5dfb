"""The names the attribution checks use, importable without torch (the analysis' parameter
rules and its presentation read them; :mod:`reportgen.sanity` computes with them)."""

from __future__ import annotations

METHODS: tuple[str, ...] = (
    "gradient",
    "smoothgrad",
    "guided_backprop",
    "gradcam",
    "integrated_gradients",
    "occlusion",
)
"""The maps the checks can judge, in report order."""

RANDOM = "random"
"""Name of the random-map control in curve and AUC dictionaries."""
