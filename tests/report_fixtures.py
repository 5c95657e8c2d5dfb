"""Hand-made report data for rendering tests (a fake summary, photo-like noise, a context)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reportgen.report.render import (
    Headline,
    ReportContext,
)
from reportgen.report.section import Section

HOSTILE = "<script>alert(1)</script> \"><img src=x onerror=alert(1)> &amp; 'q'"


def fake_summary(arch: str = "tiny") -> dict[str, Any]:
    """The parts of summary.json the templates read."""
    metrics = dict.fromkeys(
        ["accuracy", "knn_agreement_feature", "knn_agreement_pixel", "tsne_trustworthiness"], 0.5
    )
    return {
        "model": {"arch": arch, "sha256": "ab" * 32, "num_classes": 3},
        "data": {
            "num_images": 4,
            "labelled": True,
            "num_classes": 3,
            "num_skipped": 1,
            "manifest_sha256": "cd" * 32,
        },
        "metrics": metrics,
        "sections": [{"name": "demo", "status": "ok", "reason": None}],
        "provenance": {"seed": 0, "device": "cpu"},
    }


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def context(sections: list[Section], arch: str = "tiny") -> ReportContext:
    return ReportContext(
        title=arch,
        summary=fake_summary(arch),
        overview_rows=[("model", arch)],
        headlines=[Headline("knn_agreement_feature", f"k-NN {HOSTILE}")],
        sections=sections,
        skipped=[{"path": f"{HOSTILE}.png", "reason": "cannot identify image file"}],
        config_yaml=f"data:\n  labels: [{HOSTILE}]\n",
        versions={"reportgen": "0", "torch": "0"},
    )
