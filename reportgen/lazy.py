"""Modules imported on first use.

The analysis modules are imported whole to read their declarations (name, title, parameters and
their rules, needs, metrics) — by ``reportgen list-analyses`` and the config validation — long
before, or without, any computation. Their compute dependencies (torch and the modules built on
it) are bound through :func:`lazy_module`, so that reading the declarations does not import
torch; the first attribute access imports the real module. Type checkers see the real imports
(the pattern is ``if TYPE_CHECKING: import torch`` / ``else: torch = lazy_module("torch")``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    """A stand-in that imports ``name`` on the first attribute access and then forwards."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """``name`` (e.g. ``"torch"``, ``"reportgen.knn"``), imported when first used."""
    return _LazyModule(name)
