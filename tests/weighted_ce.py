"""A toy training method, as a contributor would add one: this module, plus one registry line.

Plain cross-entropy with every example's loss scaled by a fixed ``weight`` (the test registers it with
``cleanpipe.robust.register(WeightedCETraining())``; in the package it would be one line in
``cleanpipe/robust/registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from cleanpipe.engine import Method
from cleanpipe.robust.base import Plan, TrainingMethod, cli_option
from cleanpipe.validation import check_number


@dataclass
class WeightedCEOptions:
    weight: float = field(default=0.5, metadata=cli_option("weighted-ce: the fixed loss weight."))

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0.0, low_open=True)


class WeightedCE(Method):
    def __init__(self, weight: float) -> None:
        self.weight = weight

    def loss(self, step):
        logits = step.nets[0](step.x)
        return self.weight * F.cross_entropy(logits.float(), step.y), logits


class WeightedCETraining(TrainingMethod):
    name = "weighted-ce"
    summary = "cross-entropy times a fixed weight (a test's toy method)"
    Options = WeightedCEOptions

    def prepare(self, options, job):
        return Plan(rows=job.rows, step=WeightedCE(options.weight), method_settings={"weight": options.weight})
