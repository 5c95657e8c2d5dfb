"""Names of the attribution methods, importable without torch: the saliency section, the
attribution checks (their parameter rules and presentation) and :mod:`reportgen.sanity` share
them."""

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

LABELS: dict[str, str] = {
    "gradient": "gradient",
    "smoothgrad": "SmoothGrad",
    "guided_backprop": "guided backprop",
    "gradcam": "Grad-CAM",
    "integrated_gradients": "integrated gradients",
    "attention_rollout": "attention rollout",
    "occlusion": "occlusion",
    RANDOM: "random map (control)",
}
"""How the report names each method (and the random-map control)."""
