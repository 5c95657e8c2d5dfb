"""reportgen: one self-contained interpretability report from a CNN checkpoint and an image folder.

The public names are loaded lazily, so that ``import reportgen`` (and ``reportgen --help``)
does not import torch.

The package is laid out by layer, each importing only from those below it (checked by
import-linter and tests/test_architecture.py):

* ``errors``, ``report/`` (plain report data and its rendering: section, text, figures, render,
  pdf, predictions.csv, gates), ``runtime/`` (output folder and lock, atomic writes, interrupts,
  progress, lazy imports), ``params``, ``config``;
* ``loading/`` (all input I/O: checkpoints, model builders, metadata, image folders);
* ``methods/`` (the science, tensors in and arrays out: attribution, perturbation, receptive
  fields, ViT tokens, hooks, k-NN, t-SNE, calibration, statistics, and ``methods/trust``, the
  attribution checks);
* ``contract/`` (what analyses and the pipeline agree on), ``analyses/`` (one module per section),
  ``compare/`` (two models on the same images), ``pipeline/`` (one run), ``api``, ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reportgen.version import __version__

if TYPE_CHECKING:
    from reportgen.api import RunResult, load_config, run_report
    from reportgen.config import Config
    from reportgen.errors import ReportgenError

_LAZY = {
    "Config": "reportgen.config",
    "ReportgenError": "reportgen.errors",
    "RunResult": "reportgen.api",
    "load_config": "reportgen.api",
    "run_report": "reportgen.api",
}

__all__ = ["Config", "ReportgenError", "RunResult", "__version__", "load_config", "run_report"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
