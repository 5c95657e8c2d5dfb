"""All input I/O: checkpoints, models and images. Nothing else opens user files.

:mod:`.types` (a loaded model and its metadata, plain types at the bottom), :mod:`.checkpoints`
(safe state-dict and whole-model loading), :mod:`.hub` (timm and Hugging Face folders),
:mod:`.metadata` (class names and preprocessing from a model's files), :mod:`.models` (building
and loading every ``--model`` form), :mod:`.model_checks` (pre-pass checks of a model's outputs),
:mod:`.folders` (scanning image folders, reading files) and :mod:`.images` (decoding,
preprocessing, the dataset). The modules load on first attribute access (see
:mod:`reportgen.runtime.lazy`), so importing this package imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reportgen.runtime.lazy import lazy_submodules

if TYPE_CHECKING:
    from reportgen.loading import (
        checkpoints,
        folders,
        hub,
        images,
        metadata,
        model_checks,
        models,
        types,
    )

__all__ = [
    "checkpoints",
    "folders",
    "hub",
    "images",
    "metadata",
    "model_checks",
    "models",
    "types",
]

__getattr__ = lazy_submodules(__name__, __all__)
