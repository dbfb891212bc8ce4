"""Standard training: plain cross-entropy on the given labels (the kept examples, or all of them)."""

from __future__ import annotations

from cleanpipe.robust.base import TrainingMethod


class StandardTraining(TrainingMethod):
    """One network, cross-entropy without label smoothing (the engine's :class:`~cleanpipe.engine.Standard`)."""

    name = "standard"
    summary = "cross-entropy on the given labels of the kept (or all) examples"
