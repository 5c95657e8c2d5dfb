"""reportgen: one self-contained interpretability report from a CNN checkpoint and an image folder.

The public names are loaded lazily, so that ``import reportgen`` (and ``reportgen --help``)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
