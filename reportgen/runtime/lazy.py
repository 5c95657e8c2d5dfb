"""Modules imported on first use: the one way compute dependencies are bound.

The analysis modules are imported whole to read their declarations (name, title, parameters and
their rules, needs, metrics) — by ``reportgen list-analyses`` and the config validation — long
before, or without, any computation. So nothing they import at the top may import torch. One
mechanism makes that hold without a preamble in every module:

* torch itself is :data:`torch` here (``from reportgen.runtime.lazy import torch``): a stand-in
  that imports the real module on the first attribute access;
* the packages whose modules hold torch code, :mod:`reportgen.methods` and
  :mod:`reportgen.loading`, load their modules on first attribute access
  (:func:`lazy_submodules`): ``from reportgen import methods`` then ``methods.knn.knn(...)``.

Type checkers see the real modules in both cases.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any


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
    """``name`` (e.g. ``"torch"``), imported when first used."""
    return _LazyModule(name)


def lazy_submodules(package: str, names: Iterable[str]) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports ``package.<name>`` for
    each of ``names`` on first access (Python then keeps it as the package's attribute)."""
    known = frozenset(names)

    def __getattr__(name: str) -> ModuleType:
        if name in known:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


if TYPE_CHECKING:
    import torch as torch
else:
    torch = lazy_module("torch")
