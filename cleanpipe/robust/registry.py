"""The training methods, by name: one line each. Adding a method is one module and one line here.

The command line's ``--method`` choices, its help and the method options it offers, ``cleanpipe run``
and the benchmarks all read this table.
"""

from __future__ import annotations

from cleanpipe.robust.base import TrainingMethod
from cleanpipe.robust.coteaching import (
    CoTeachingPlusTraining,
    CoTeachingTraining,
    IncvCoTeachingTraining,
)
from cleanpipe.robust.dividemix import DivideMixTraining
from cleanpipe.robust.elr import ELRTraining
from cleanpipe.robust.ieg import IegTraining, L2RTraining
from cleanpipe.robust.noisystudent import NoisyStudentTraining
from cleanpipe.robust.standard import StandardTraining
from cleanpipe.validation import ParameterError

METHODS: dict[str, TrainingMethod] = {}


def register(method: TrainingMethod) -> TrainingMethod:
    """Add a method to :data:`METHODS` under its ``name`` (a second method of the same name is refused)."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"a training method needs a new name; {method.name!r} is taken or empty")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> TrainingMethod:
    """The registered method called ``name``, or a ParameterError naming the choices."""
    if name not in METHODS:
        raise ParameterError("method", f"{name!r} is not a training method; choose one of {', '.join(METHODS)}")
    return METHODS[name]


register(StandardTraining())
register(CoTeachingTraining())
register(CoTeachingPlusTraining())
register(IncvCoTeachingTraining())
register(L2RTraining())
register(IegTraining())
register(NoisyStudentTraining())
register(ELRTraining())
register(DivideMixTraining())
