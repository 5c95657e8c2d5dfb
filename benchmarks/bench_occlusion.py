"""reportgen's batched occlusion vs Captum's ``Occlusion``, measured in one process.

Same model (torchvision resnet18, ``weights=None``, seeded), same inputs, window, stride and fill.
Captum runs with its default ``perturbations_per_eval=1`` and with a tuned value; reportgen as
the report runs it: channels-last (``run.memory_format: auto``) at the batch size the report's
measurement picks for this model and machine (``reportgen.pipeline.calibration``). Reported: seconds, speed ratios and the largest absolute difference of the
per-pixel maps (Captum's attribution = unoccluded probability minus the mean occluded probability
over the windows covering each pixel, which reportgen's per-window map reproduces exactly).

Run from the repository root: ``python -m benchmarks.bench_occlusion [--device cuda] [--quick]``.
Timings are ratios from one run on a possibly noisy machine (best of three for the batched runs
except in CPU quick mode); they are never asserted in tests.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torchvision

from benchmarks.common import standalone_main
from reportgen.methods.perturbation import occlusion_maps, pixel_probability, resolve_geometry
from reportgen.pipeline.calibration import measure

TARGETS = {"cuda": (5.0, 1.5), "cpu": (1.5, 1.3)}
"""Device type -> (× Captum default, × Captum tuned)."""


@dataclass(frozen=True)
class Setup:
    size: int
    images: int
    window: int
    stride: int
    batch_size: int
    captum_tuned: int


def setup_for(device: str, quick: bool) -> Setup:
    size = 64 if quick else 224
    window, stride = resolve_geometry(size, size, 0, 0)
    batch = 256 if device.startswith("cuda") else 64
    return Setup(
        size, 1 if quick else 2, window, stride, batch, 256 if device.startswith("cuda") else 64
    )


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Time reportgen and Captum on the same occlusion job; return the figures."""
    from captum.attr import Occlusion

    dev = torch.device(device)
    s = setup_for(device, quick)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(s.images, 3, s.size, s.size, generator=gen).to(dev)
    fill = torch.tensor([0.1, -0.05, 0.02], device=dev)
    with torch.inference_mode():
        targets = model(inputs).argmax(1)

    # reportgen runs the model in channels_last (as the report does) at its measured batch;
    # Captum runs the model as users hand it over, and once more on the same channels_last copy
    # (last row).
    cuda = dev.type == "cuda"
    ours_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    s = replace(s, batch_size=measure(ours_model, (3, s.size, s.size), dev).forward_batch)

    def ours() -> torch.Tensor:
        maps = occlusion_maps(
            ours_model,
            inputs,
            targets,
            s.window,
            s.stride,
            fill,
            batch_size=s.batch_size,
            channels_last=True,
            module=ours_model,
        )
        return maps.base_prob[:, None, None] - pixel_probability(
            maps.prob, s.size, s.size, s.window, s.stride
        )

    def captum(per_eval: int, on: torch.nn.Module = model) -> Callable[[], torch.Tensor]:
        occ = Occlusion(lambda x: on(x).softmax(1))

        def go() -> torch.Tensor:
            with torch.no_grad():
                attr = occ.attribute(
                    inputs,
                    sliding_window_shapes=(3, s.window, s.window),
                    strides=(3, s.stride, s.stride),
                    baselines=fill.view(1, 3, 1, 1),
                    target=targets,
                    perturbations_per_eval=per_eval,
                )
            return attr[:, 0]

        return go

    # Warm-up at every batch size either side uses (kernel selection, allocator growth), so
    # that neither side pays one-off costs inside its timing: both cheap batched runs once in
    # full, Captum's default through its one-image forward.
    ours()
    captum(s.captum_tuned)()
    with torch.inference_mode():
        model(inputs[:1])
    repeats = 1 if quick and dev.type == "cpu" else 3
    t_ours, m_ours = min((_timed(ours, dev) for _ in range(repeats)), key=lambda r: r[0])
    t_default, m_default = _timed(captum(1), dev)
    t_tuned, m_tuned = min(
        (_timed(captum(s.captum_tuned), dev) for _ in range(repeats)), key=lambda r: r[0]
    )
    # Captum on the channels_last copy too: the layout's share of the speed-up.
    captum(s.captum_tuned, ours_model)()
    t_cl, m_cl = min(
        (_timed(captum(s.captum_tuned, ours_model), dev) for _ in range(repeats)),
        key=lambda r: r[0],
    )
    extra: list[dict[str, Any]] = [
        {
            "method": f"Captum Occlusion (perturbations_per_eval={s.captum_tuned}, "
            "channels_last model)",
            "seconds": t_cl,
            "speedup": t_cl / t_ours,
            "max_abs_diff": float((m_cl - m_ours).abs().max()),
        }
    ]
    vs_default, vs_tuned = TARGETS["cuda" if cuda else "cpu"]
    positions = s.images * (-(-(s.size - s.window) // s.stride) + 1) ** 2
    rows: list[dict[str, Any]] = [
        {
            "method": f"reportgen occlusion (incremental, measured batch {s.batch_size}, channels_last)",
            "seconds": t_ours,
            "speedup": 1.0,
            "max_abs_diff": 0.0,
        },
        {
            "method": "Captum Occlusion (perturbations_per_eval=1, default)",
            "seconds": t_default,
            "speedup": t_default / t_ours,
            "max_abs_diff": float((m_default - m_ours).abs().max()),
        },
        {
            "method": f"Captum Occlusion (perturbations_per_eval={s.captum_tuned}, tuned)",
            "seconds": t_tuned,
            "speedup": t_tuned / t_ours,
            "max_abs_diff": float((m_tuned - m_ours).abs().max()),
        },
        *extra,
    ]
    return {
        "benchmark": "occlusion",
        "device": device,
        "quick": quick,
        "torch": torch.__version__,
        "setup": {**asdict(s), "model": "resnet18 (weights=None, seed 0)", "positions": positions},
        "rows": rows,
        "speedup_vs_captum_default": t_default / t_ours,
        "speedup_vs_captum_tuned": t_tuned / t_ours,
        "targets": {"vs_default": vs_default, "vs_tuned": vs_tuned},
        "meets_targets": t_default / t_ours >= vs_default and t_tuned / t_ours >= vs_tuned,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        f"Occlusion on {result['device']} ({s['model']}, {s['images']} image(s) "
        f"{s['size']}×{s['size']}, window {s['window']}, stride {s['stride']}, "
        f"{s['positions']} occluded copies; torch {result['torch']})",
        "",
        "| method | seconds | reportgen speed-up | max abs diff of maps |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['seconds']:.3f} | {r['speedup']:.1f}× | {r['max_abs_diff']:.2e} |"
        )
    lines.append("")
    lines.append(
        f"Targets: ≥ {result['targets']['vs_default']:g}× Captum default, "
        f"≥ {result['targets']['vs_tuned']:g}× Captum tuned — "
        f"{'met' if result['meets_targets'] else 'not met'}."
    )
    return "\n".join(lines)


def main() -> None:
    standalone_main(__doc__, run, markdown)


if __name__ == "__main__":
    main()
