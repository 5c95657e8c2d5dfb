"""Randomised copies of a model: re-initialise stages on a deep copy, seeded on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from reportgen.methods.trust.stages import Stage

# --------------------------------------------------------------------------- randomised copies


def _reinit_module(module: nn.Module) -> None:
    """Re-initialise ``module``'s own parameters and buffers from the default CPU generator.

    ``reset_parameters`` runs on CPU tensors (so the draws do not depend on the device); any
    parameter below the module that it touched is restored, because it belongs to another stage.
    Modules without ``reset_parameters`` get their own parameters redrawn from a normal with each
    tensor's mean and standard deviation.
    """
    own = list(module.named_parameters(recurse=False)) + [
        (n, b) for n, b in module.named_buffers(recurse=False) if b is not None
    ]
    own_names = {n for n, _ in own}
    below = {
        n: t.detach().clone()
        for n, t in [*module.named_parameters(), *module.named_buffers()]
        if n not in own_names
    }
    reset = getattr(module, "reset_parameters", None)
    with torch.no_grad():
        if callable(reset):
            devices = {n: t.device for n, t in own}
            for _, t in own:
                t.data = t.data.cpu()
            try:
                reset()
            finally:
                # Look the tensors up again: a reset may have replaced them.
                for n, dev in devices.items():
                    cur = module._parameters.get(n, module._buffers.get(n))
                    if cur is not None:
                        cur.data = cur.data.to(dev)
            for n, saved in below.items():
                path, _, leaf = n.rpartition(".")
                owner = module.get_submodule(path)
                current = owner._parameters.get(leaf, owner._buffers.get(leaf))
                if current is not None:
                    current.copy_(saved)
        else:
            for _, p in module.named_parameters(recurse=False):
                mean = float(p.float().mean())
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                scale = std if std > 0 else (abs(mean) or 1.0)
                draw = torch.randn(p.shape, generator=torch.default_generator) * scale + mean
                p.copy_(draw.to(p.device, p.dtype))


def randomize_stage(model: nn.Module, stage: Stage, seed: int) -> None:
    """Re-initialise one stage of ``model`` in place, from a CPU generator seeded with ``seed``.

    The caller's global random state is restored afterwards. Every stage starts from the same seed
    (as Quantus' MPRT does), so a stage gets the same random weights in the cascading and the
    independent variant. An untrained model built right after ``torch.manual_seed(seed)`` would
    get its own initial weights back at its first stage: test models need another seed.
    """
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for name in stage.modules:
            _reinit_module(modules[name])


def randomized_models(
    model: nn.Module, stages: Sequence[Stage], *, seed: int, cascade: bool = True
) -> Iterator[tuple[Stage, nn.Module]]:
    """Yield (stage, randomised copy) for each stage, in the order given (logits first).

    ``cascade``: stage k's copy has stages 0..k re-initialised (Adebayo's cascading test);
    otherwise only stage k (independent). One deep copy is made and changed between yields, so use
    each yielded model before asking for the next. ``model`` itself is never modified.
    """
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for stage in stages:
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not cascade:
            for name in stage.modules:
                m = modules[name]
                for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                    saved.append((t, t.detach().clone()))
        randomize_stage(work, stage, seed)
        yield stage, work
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
