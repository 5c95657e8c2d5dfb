"""The attribution maps the checks compare: the sections' methods with their parameters bound."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reportgen.heads import MULTICLASS, Head
from reportgen.loading.models import extract_logits
from reportgen.loading.types import find_layer
from reportgen.methods import attribution
from reportgen.methods.names import METHODS
from reportgen.methods.perturbation import (
    grid_shape,
    occlusion_maps,
    pixel_probability,
    resolve_geometry,
)

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""An attribution method: (model, Q×C×H×W inputs, Q targets) -> Q×H×W map on the inputs' device."""


# --------------------------------------------------------------------------- keys

MapKey = tuple[Any, ...]


def map_key(
    method: str,
    *,
    smoothgrad_samples: int = 25,
    smoothgrad_noise: float = 0.15,
    ig_steps: int = 32,
    ig_method: str = "gausslegendre",
    ig_baseline: str | float = "zeros",
    gradcam_layer: str = "auto",
    occlusion_window: int = 0,
    occlusion_stride: int = 0,
    occlusion_fill: str | float = "mean",
    seed: int = 0,
) -> MapKey:
    """What a method's map of the original model depends on besides the image: the method and
    only the settings it reads. Two sections that compute a map under the same key compute the
    same map (``occlusion_window``/``_stride``: resolved, in pixels; fills and baselines as the
    configuration names them: ``mean``/``zeros`` or a gray value)."""
    settings: dict[str, tuple[Any, ...]] = {
        "gradient": (),
        "guided_backprop": (),
        "smoothgrad": (smoothgrad_samples, float(smoothgrad_noise), seed),
        "integrated_gradients": (ig_steps, ig_method, ig_baseline),
        "gradcam": (gradcam_layer,),
        "occlusion": (occlusion_window, occlusion_stride, occlusion_fill),
    }
    if method not in settings:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    return (method, *settings[method])


def passes_per_image(
    method: str,
    height: int,
    width: int,
    *,
    smoothgrad_samples: int = 25,
    ig_steps: int = 32,
    occlusion_window: int = 0,
    occlusion_stride: int = 0,
) -> tuple[int, int]:
    """(forward-only, forward+backward) passes of one image through the model for one map:
    one gradient per image for gradient, guided backprop and Grad-CAM, one per noisy copy for
    SmoothGrad and per path point for integrated gradients; occlusion one forward per window
    position plus the unoccluded image."""
    if method in ("gradient", "guided_backprop", "gradcam"):
        return 0, 1
    if method == "smoothgrad":
        return 0, smoothgrad_samples
    if method == "integrated_gradients":
        return 0, ig_steps
    if method == "occlusion":
        window, stride = resolve_geometry(height, width, occlusion_window, occlusion_stride)
        rows, cols = grid_shape(height, width, window, stride)
        return rows * cols + 1, 0
    raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")


@dataclass(frozen=True)
class KeyedMap:
    """A :data:`MapFn` that knows its :func:`map_key` (so a map computed elsewhere is reused)
    and its price (:func:`passes_per_image`, for the run's cost plan)."""

    key: MapKey
    fn: MapFn
    passes: Callable[[int, int], tuple[int, int]]
    """(height, width) -> (forward-only, forward+backward) passes per image."""

    def __call__(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(model, x, t)


# --------------------------------------------------------------------------- methods


def attribution_methods(
    names: Sequence[str],
    *,
    smoothgrad_samples: int = 25,
    smoothgrad_noise: float = 0.15,
    ig_steps: int = 32,
    ig_method: attribution.IGMethod = "gausslegendre",
    ig_baseline: torch.Tensor | None = None,
    gradcam_layer: str | None = None,
    occlusion_window: int = 0,
    occlusion_stride: int = 0,
    occlusion_fill: torch.Tensor | None = None,
    occlusion_fill_name: str | float = "mean",
    seed: int = 0,
    batch_size: int = 32,
    occlusion_batch_size: int = 64,
    head: Head = MULTICLASS,
) -> dict[str, KeyedMap]:
    """Method name -> function (model, inputs, targets) -> Q×H×W map, with the parameters bound.

    The maps are the ones the saliency and occlusion sections draw: gradient, SmoothGrad and
    guided backprop: max over channels of |gradient|; Grad-CAM: upsampled to the input size;
    integrated gradients: |sum over channels|; occlusion: the probability drop per pixel
    (unoccluded minus the mean over the windows covering the pixel; signed).
    ``ig_baseline``: model input space, broadcastable to the inputs (None: zeros).
    ``gradcam_layer``: module name (None: the last spatial layer of the model it is called with).
    ``occlusion_fill``: C values in model input space (None: zeros). A function raises (and the
    checks report the method as unavailable) when the method cannot run on the model.
    ``occlusion_fill_name``: how the configuration names that fill (``mean`` or a gray value), for
    the maps' keys. Each function carries its :func:`map_key`, with the occluder geometry as
    given (pass it resolved, as the occlusion section keys its maps, for the two to meet).
    """
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; known: {', '.join(METHODS)}")

    def gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = attribution.input_gradients(model, x, t, batch_size, head=head)
        return attribution.saliency_map(g)

    def smoothgrad(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = attribution.smoothgrad(
            model, x, t, smoothgrad_samples, smoothgrad_noise, seed, batch_size, head=head
        )
        return attribution.saliency_map(g)

    def guided(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = attribution.guided_backprop(model, x, t, batch_size, head=head)
        return attribution.saliency_map(g)

    def gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        layer = gradcam_layer or attribution.default_gradcam_layer(model, x[:1])
        cam = attribution.grad_cam(model, x, t, find_layer(model, layer), batch_size, head=head)
        return attribution.upsample_maps(cam, (x.shape[2], x.shape[3]))

    def integrated(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ig = attribution.integrated_gradients(
            model, x, t, ig_baseline, ig_steps, ig_method, batch_size, head=head
        )
        return ig.sum(dim=1).abs()

    def occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        window, stride = resolve_geometry(h, w, occlusion_window, occlusion_stride)
        fill = (
            torch.zeros(x.shape[1], device=x.device)
            if occlusion_fill is None
            else occlusion_fill.to(x.device).flatten()
        )
        maps = occlusion_maps(
            lambda b: extract_logits(model(b)),
            x,
            t,
            window,
            stride,
            fill,
            occlusion_batch_size,
            module=model,
            head=head,
        )
        pixel = pixel_probability(maps.prob, h, w, window, stride)
        return maps.base_prob[:, None, None] - pixel

    table: dict[str, MapFn] = {
        "gradient": gradient,
        "smoothgrad": smoothgrad,
        "guided_backprop": guided,
        "gradcam": gradcam,
        "integrated_gradients": integrated,
        "occlusion": occlusion,
    }
    keys = {
        n: map_key(
            n,
            smoothgrad_samples=smoothgrad_samples,
            smoothgrad_noise=smoothgrad_noise,
            ig_steps=ig_steps,
            ig_method=ig_method,
            ig_baseline="zeros" if ig_baseline is None else "custom",
            gradcam_layer=gradcam_layer or "auto",
            occlusion_window=occlusion_window,
            occlusion_stride=occlusion_stride,
            occlusion_fill=occlusion_fill_name,
            seed=seed,
        )
        for n in names
    }

    def price(name: str) -> Callable[[int, int], tuple[int, int]]:
        def passes(height: int, width: int) -> tuple[int, int]:
            return passes_per_image(
                name,
                height,
                width,
                smoothgrad_samples=smoothgrad_samples,
                ig_steps=ig_steps,
                occlusion_window=occlusion_window,
                occlusion_stride=occlusion_stride,
            )

        return passes

    return {n: KeyedMap(keys[n], table[n], price(n)) for n in names}


def random_maps(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Q×H×W uniform [0, 1) maps from a CPU generator seeded with ``seed`` (the control)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen)
