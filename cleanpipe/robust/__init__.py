"""Training methods that resist label noise, each a loss/selection step the one engine runs.

:func:`train_model` trains any registered method (:data:`METHODS`) on NumPy arrays; each method's
options are a dataclass that validates itself.
"""

from cleanpipe.robust.base import (
    NoOptions,
    PruneOutputs,
    RunInputs,
    TrainingMethod,
    TrainResult,
)
from cleanpipe.robust.coteaching import CoTeachingOptions, IncvCoTeachingOptions
from cleanpipe.robust.dividemix import DivideMixOptions
from cleanpipe.robust.elr import ELROptions
from cleanpipe.robust.ieg import IegOptions, L2ROptions
from cleanpipe.robust.noisystudent import NoisyStudentOptions, NoisyStudentResult
from cleanpipe.robust.registry import METHODS, get_method, register
from cleanpipe.robust.training import train_model

__all__ = [
    "METHODS", "CoTeachingOptions", "DivideMixOptions", "ELROptions", "IegOptions", "IncvCoTeachingOptions", "L2ROptions", "NoOptions",
    "NoisyStudentOptions", "NoisyStudentResult", "PruneOutputs", "RunInputs", "TrainResult", "TrainingMethod", "get_method",
    "register", "train_model",
]
