"""Cost of the attribution checks, and the same metrics side by side with Quantus 0.6.

Same model (torchvision resnet18, ``weights=None``, seeded, 10 classes), same seeded inputs
(48 px in quick mode, 192 px otherwise: sizes whose pixel count 24 divides, see ``Setup``).

* **Whole check** (``reportgen.methods.trust.run_attribution_checks``: all six methods with the saliency
  section's defaults — SmoothGrad 25 samples, integrated gradients 32 steps, occlusion window
  side/4 stride window/4 — automatic stages, 16 curve steps): seconds, as a ratio to the
  forward+backward floor (one forward+backward pass of the same images), and as a ratio to the
  ideal time of the image passes it actually makes (counted with a hook; each costed at the
  per-image forward or forward+backward time measured at the same batch size).
* **MPRT** (Adebayo's cascading randomisation with the gradient map): Quantus ``MPRT``
  (top-down, one stage per module with ``reset_parameters``, Spearman of |map|) against
  reportgen with the same stages and seed (``seed + 1``, as Quantus seeds), so both re-initialise
  the same weights and compare the same maps: seconds and the largest difference of the
  per-stage Spearman values.
* **Deletion** (pixel flipping with a constant baseline, 24 steps of H·W/24 pixels): Quantus
  ``PixelFlipping`` against ``reportgen.methods.trust.perturbation_curves`` on the same gradient maps:
  seconds and the largest difference of the probability curves.
* **ROAD imputation** (noisy linear imputation without noise, pixels removed by the same maps at
  25/50/75 %): Quantus' per-image sparse solve against reportgen's batched conjugate gradients.

Run from the repository root: ``python -m benchmarks.bench_attribution_checks [--device cuda]
[--quick]``. Timings are ratios from one run on a possibly noisy machine (best of three for the
short runs); they are never asserted in tests.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from benchmarks.common import standalone_main
from reportgen.methods import trust


@dataclass(frozen=True)
class Setup:
    size: int
    images: int
    steps: int
    """Curve steps of the whole check."""
    deletion_steps: int
    """Steps of the Quantus deletion comparison: Quantus flips channel values, not pixels, and
    needs 3·H·W/steps to divide H·W; whole pixels per step also need steps to divide H·W."""
    batch_size: int


def setup_for(device: str, quick: bool) -> Setup:
    cuda = device.startswith("cuda")
    if quick:
        return Setup(size=48, images=2, steps=16, deletion_steps=24, batch_size=64)
    return Setup(
        size=192,
        images=8 if cuda else 2,
        steps=16,
        deletion_steps=24,
        batch_size=128 if cuda else 32,
    )


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


class PassCounter:
    """Counts the images each forward pass sees, split by whether autograd is recording."""

    def __init__(self) -> None:
        self.with_grad = 0
        self.without_grad = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> PassCounter:
        # The randomised copies are deep copies of the model: they must count here too.
        return self

    def __call__(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        n = int(args[0].shape[0])
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.with_grad += n
        else:
            self.without_grad += n


def per_image_costs(
    model: nn.Module, x: torch.Tensor, batch: int, device: torch.device
) -> tuple[float, float]:
    """(forward, forward+backward) seconds per image at ``batch`` images per pass."""
    xb = x.repeat(-(-batch // x.shape[0]), 1, 1, 1)[:batch].contiguous()

    def forward() -> None:
        with torch.inference_mode():
            model(xb)

    def backward() -> None:
        xg = xb.detach().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    forward()
    backward()
    t_f, _ = _timed(forward, device, 3)
    t_fb, _ = _timed(backward, device, 3)
    return t_f / batch, t_fb / batch


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Time the whole check and the three Quantus comparisons; return the figures."""
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_nli

    dev = torch.device(device)
    s = setup_for(device, quick)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(dev)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(s.images, 3, s.size, s.size, generator=gen).to(dev)
    with torch.no_grad():  # not inference_mode: the targets go through autograd code
        t = model(x).argmax(1)
    fill = torch.zeros(3, device=dev)

    # ---- the floor: one forward+backward pass of these images
    def floor_pass() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    floor_pass()
    t_floor, _ = _timed(floor_pass, dev, 3)
    f_img, fb_img = per_image_costs(model, x, s.batch_size, dev)

    # ---- the whole check with the report's defaults (all methods, automatic stages)
    methods = trust.attribution_methods(
        list(trust.METHODS), occlusion_fill=fill, batch_size=32, occlusion_batch_size=s.batch_size
    )
    counted = copy.deepcopy(model)
    counter = PassCounter()
    counted.register_forward_pre_hook(counter)
    t_check, result = _timed(
        lambda: trust.run_attribution_checks(
            counted, x, t, methods, mean_fill=fill, steps=s.steps, batch_size=s.batch_size
        ),
        dev,
    )
    ideal = counter.with_grad * fb_img + counter.without_grad * f_img

    # ---- MPRT: Quantus against reportgen with the same stages, seed and maps
    gradient = trust.attribution_methods(["gradient"])["gradient"]

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        out = gradient(
            model, torch.as_tensor(inputs, device=dev), torch.as_tensor(targets, device=dev)
        )
        return out.detach().cpu().numpy()

    names = [n for n, m in model.named_modules() if n and hasattr(m, "reset_parameters")]
    quantus_seed = 42

    def ours_mprt() -> trust.ChecksResult:
        stages = trust.randomization_stages(model, x[:1], names)
        return trust.run_attribution_checks(
            model,
            x,
            t,
            {"gradient": gradient},
            stages=stages,
            mean_fill=fill,
            seed=quantus_seed + 1,
            steps=1,
        )

    def quantus_mprt() -> dict[str, list[float]]:
        metric = quantus.MPRT(
            layer_order="top_down",
            seed=quantus_seed,
            disable_warnings=True,
            display_progressbar=False,
        )
        return metric(  # type: ignore[return-value]
            model=model,
            x_batch=x.cpu().numpy(),
            y_batch=t.cpu().numpy(),
            a_batch=None,
            explain_func=explain,
            device=device,
            batch_size=s.images,
        )

    repeats = 3 if quick else 1
    t_ours_mprt, ours_m = _timed(ours_mprt, dev, repeats)
    t_q_mprt, q_m = _timed(quantus_mprt, dev, repeats)
    mprt_diff = max(
        float(np.nanmax(np.abs(ours_m.spearman["gradient"][:, j] - np.asarray(q_m[st.name]))))
        for j, st in enumerate(ours_m.stages)
    )
    same_stages = [st.name for st in ours_m.stages] == [k for k in q_m if k != "original"]

    # ---- deletion: Quantus PixelFlipping against perturbation_curves on the same maps
    maps = gradient(model, x, t).detach()
    pixels = s.size * s.size

    def ours_deletion() -> np.ndarray:
        return trust.perturbation_curves(
            model,
            x,
            t,
            maps[None],
            kind="deletion",
            baseline=fill.view(1, 3, 1, 1),
            steps=s.deletion_steps,
            batch_size=s.batch_size,
        )[0]

    def quantus_deletion() -> np.ndarray:
        metric = quantus.PixelFlipping(
            features_in_step=3 * pixels // s.deletion_steps,
            perturb_baseline=0.0,  # type: ignore[arg-type]
            abs=False,
            normalise=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        return np.asarray(
            metric(
                model=model,
                x_batch=x.cpu().numpy(),
                y_batch=t.cpu().numpy(),
                a_batch=maps[:, None].cpu().numpy(),
                device=device,
                softmax=True,
                batch_size=s.images,
            )
        )

    ours_deletion()
    t_ours_del, d_ours = _timed(ours_deletion, dev, 3)
    t_q_del, d_q = _timed(quantus_deletion, dev, repeats)
    del_diff = float(np.abs(d_ours[:, 1:] - d_q).max())

    # ---- ROAD imputation: batched conjugate gradients against Quantus' sparse solve
    fractions = (0.25, 0.5, 0.75)
    ranks = trust.pixel_ranks(maps)
    masks = torch.stack(
        [(ranks < round(f * pixels)).view(-1, s.size, s.size) for f in fractions], dim=1
    ).flatten(0, 1)
    images = x.repeat_interleave(len(fractions), dim=0)

    def ours_road() -> torch.Tensor:
        return trust.noisy_linear_imputation(images, masks)

    def quantus_road() -> np.ndarray:
        arr = images.double().cpu().numpy()
        flat = masks.flatten(1).cpu().numpy()
        return np.stack(
            [
                quantus_nli(arr[i].copy(), np.flatnonzero(flat[i]), noise=0.0)  # type: ignore[arg-type]
                for i in range(len(arr))
            ]
        )

    ours_road()
    t_ours_road, r_ours = _timed(ours_road, dev, 3)
    t_q_road, r_q = _timed(quantus_road, dev, repeats)
    road_diff = float(np.abs(r_ours.double().cpu().numpy() - r_q).max())
    road_scale = float(np.abs(r_q).max())

    rows = [
        {
            "what": "MPRT, gradient, one stage per module (cascading)",
            "stages": len(ours_m.stages),
            "reportgen_s": t_ours_mprt,
            "quantus_s": t_q_mprt,
            "speedup": t_q_mprt / t_ours_mprt,
            "max_abs_diff": mprt_diff,
            "same_stages": same_stages,
        },
        {
            "what": f"deletion curve ({s.deletion_steps} steps, constant fill)",
            "stages": None,
            "reportgen_s": t_ours_del,
            "quantus_s": t_q_del,
            "speedup": t_q_del / t_ours_del,
            "max_abs_diff": del_diff,
            "same_stages": None,
        },
        {
            "what": f"ROAD imputation ({len(images)} images, no noise)",
            "stages": None,
            "reportgen_s": t_ours_road,
            "quantus_s": t_q_road,
            "speedup": t_q_road / t_ours_road,
            "max_abs_diff": road_diff / max(road_scale, 1e-12),
            "same_stages": None,
        },
    ]
    return {
        "benchmark": "attribution_checks",
        "device": device,
        "quick": quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setup": {**asdict(s), "model": "resnet18 (weights=None, seed 0, 10 classes)"},
        "floor_s": t_floor,
        "forward_per_image_s": f_img,
        "forward_backward_per_image_s": fb_img,
        "check": {
            "seconds": t_check,
            "stages": [st.name for st in result.stages],
            "methods": result.methods,
            "images_with_grad": counter.with_grad,
            "images_without_grad": counter.without_grad,
            "ideal_s": ideal,
            "ratio_to_floor": t_check / t_floor,
            "ratio_to_ideal": t_check / ideal,
        },
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    c = result["check"]
    lines = [
        f"Attribution checks on {result['device']} ({s['model']}, {s['images']} image(s) "
        f"{s['size']}×{s['size']}; torch {result['torch']}, {result['threads']} threads).",
        "",
        f"Whole check (methods: {', '.join(c['methods'])}; stages: {', '.join(c['stages'])}; "
        f"{s['steps']} curve steps): **{c['seconds']:.2f} s** = {c['ratio_to_floor']:.0f}× the "
        f"forward+backward floor ({result['floor_s'] * 1e3:.1f} ms for the {s['images']} "
        f"images). It made {c['images_with_grad']} forward+backward and "
        f"{c['images_without_grad']} forward-only image passes, ideally "
        f"{c['ideal_s']:.2f} s at the measured per-image costs "
        f"(batch {s['batch_size']}): {c['ratio_to_ideal']:.2f}× that.",
        "",
        "| metric | reportgen s | Quantus s | reportgen speed-up | max abs diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        extra = (
            f" ({r['stages']} stages, same order: {'yes' if r['same_stages'] else 'no'})"
            if r["stages"]
            else ""
        )
        lines.append(
            f"| {r['what']}{extra} | {r['reportgen_s']:.3f} | {r['quantus_s']:.3f} | "
            f"{r['speedup']:.1f}× | {r['max_abs_diff']:.1e} |"
        )
    lines.append("")
    lines.append(
        "ROAD's difference is relative to the largest pixel value; MPRT's is in Spearman ρ; "
        "deletion's in probability."
    )
    return "\n".join(lines)


def main() -> None:
    standalone_main(__doc__, run, markdown)


if __name__ == "__main__":
    main()
