"""reportgen: one self-contained interpretability report from a CNN checkpoint and an image folder."""

from __future__ import annotations

__version__ = "0.1.0"

from reportgen.config import Config, load_config
from reportgen.errors import ReportgenError
from reportgen.runner import RunResult, run_report

__all__ = ["Config", "ReportgenError", "RunResult", "__version__", "load_config", "run_report"]
