"""Modules imported on first use, so that ``cleanpipe --help`` and the commands that train nothing start fast.

The command line lists every training method's options when it starts (they are fields of the methods'
options dataclasses); the methods' loss steps need torch only once they run. A method module writes
``torch = lazy_module("torch")`` instead of ``import torch``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class _LazyModule:
    """Stands in for a module until an attribute of it is first read, then imports it and forwards to it."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"


def lazy_module(name: str) -> ModuleType:
    """``name`` (e.g. ``"torch.nn.functional"``), imported when first used."""
    return _LazyModule(name)  # type: ignore[return-value]
