"""Modules imported on first use, so that ``cleanpipe --help`` and the commands that train nothing start fast.

The command line imports every stage and registry when it starts (it lists their options and choices);
torch is needed only once something trains. A module that uses torch writes ``torch = lazy_module("torch")``
instead of ``import torch`` (and :func:`no_grad` for ``@torch.no_grad()``). Only
:mod:`cleanpipe.models.nets`, whose classes subclass ``torch.nn.Module``, imports torch at import time; the
model registry reaches it through ``lazy_module`` too.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from cleanpipe.errors import CleanpipeError


class _LazyModule:
    """Stands in for a module until an attribute of it is first read, then imports it and forwards to it.

    Attributes are kept once read, so a module attribute rebound afterwards (a test's monkeypatch of
    ``torch.x``) is not seen through the stand-in."""

    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attr: str):  # only for names not yet read: each is then kept as a plain attribute
        if self._module is None:
            self._module = importlib.import_module(self._name)
        value = getattr(self._module, attr)
        setattr(self, attr, value)  # the training loop's torch.x lookups cost a plain attribute read after the first
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"


def lazy_module(name: str) -> ModuleType:
    """``name`` (e.g. ``"torch.nn.functional"``), imported when first used."""
    return _LazyModule(name)  # type: ignore[return-value]


def import_extra(module: str, *, needed_by: str, extra: str, requirement: str) -> ModuleType:
    """An optional dependency, or one clear line naming the extra that installs it (no traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CleanpipeError(f"{needed_by} needs {module}: pip install 'cleanpipe[{extra}]' (or pip install "
                             f"'{requirement}')") from None


def no_grad(fn):
    """``@torch.no_grad()`` for a function of a module that imports torch lazily (torch is imported at the call)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
