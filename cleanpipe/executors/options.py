"""The executors' options: plain dataclasses, so that a run's settings can name them without Ray or submitit."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a Ray instance on this machine
    cpus_per_task: int = 1
    gpus_per_task: float | None = None  # None: 1 when CUDA is visible (on the cluster, with an address), else 0
    num_cpus: int | None = None  # the local instance's CPUs (default: this machine's)


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    array_parallelism: int = 64
    extra: dict = field(default_factory=dict)  # other sbatch options, e.g. {"account": "ml", "qos": "high"}
    cluster: str = "slurm"  # "local": the same job array as local processes (to try it, and in tests)
    wait: bool = True
