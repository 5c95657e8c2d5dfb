"""The cost of a baseline model in the run: dataset pass with a baseline ÷ without.

Both models ride one pass (each image decoded once), so the cost should be one more forward per
batch: about 2× the forward-bound pass at most (target ≤ 2.1× on the CPU), far less when
decoding dominates. ``python -m benchmarks.bench_baseline [--device cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torchvision

from benchmarks.common import (
    resnet18_config,
    resnet18_weights,
    standalone_main,
    table,
    write_images,
)
from reportgen.api import pipeline

TARGET = 2.1


def _baseline_weights(path: Path) -> Path:
    """A second resnet18 (another seed): a different model of the same architecture."""
    if not path.exists():
        torch.manual_seed(1)
        torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    return path


def run(device: str = "cpu", quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    n = 64 if quick else 256
    work = Path(workdir or tempfile.mkdtemp(prefix="reportgen-bench-"))
    root = write_images(work / f"images-{n}", n)
    weights = resnet18_weights(work / "resnet18.pt")
    old = _baseline_weights(work / "resnet18-baseline.pt")
    batch = 256 if torch.device(device).type == "cuda" else 32
    extra = {"output.formats": ["html"], "run.workers": "auto", "data.queries": 0}
    plain = resnet18_config(weights, root, work / "out-plain", device, batch, extra)
    with_old = resnet18_config(
        weights, root, work / "out-baseline", device, batch, {**extra, "baseline.weights": str(old)}
    )
    times: dict[str, list[float]] = {"without": [], "with": []}
    # Alternate (best of three each) so that a noisy machine's slow spells hit both.
    for _ in range(3):
        for key, cfg in (("without", plain), ("with", with_old)):
            pipe = pipeline(cfg, warn=lambda _m: None)
            prepared = pipe.prepare()
            assert (prepared.context.pass_result.baseline_logits is not None) == (key == "with")
            times[key].append(pipe.timings["dataset_pass"])
    best = {k: min(v) for k, v in times.items()}
    ratio = best["with"] / best["without"]
    return {
        "benchmark": "baseline",
        "device": device,
        "n_images": n,
        "batch_size": batch,
        "pass_seconds": best,
        "ratio": ratio,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }


def markdown(r: dict[str, Any]) -> str:
    rows = [
        ["dataset pass, new model only", r["pass_seconds"]["without"], 1.0],
        ["dataset pass, new model + baseline", r["pass_seconds"]["with"], r["ratio"]],
    ]
    return (
        f"resnet18 (new) and another resnet18 (baseline), {r['n_images']} JPEGs 256² → 224², "
        f"{r['device']}, batch {r['batch_size']}, best of 3 alternating. With ÷ without = "
        f"**{r['ratio']:.2f}** (target ≤ {r['target']}).\n\n"
        + table(["pass", "seconds", "÷ without"], rows)
    )


if __name__ == "__main__":
    standalone_main(__doc__, run, markdown)
