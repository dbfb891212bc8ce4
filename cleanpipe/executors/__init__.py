"""Where tasks run: here one after another, as Ray tasks, or as a Slurm job array (submitit).

Generic: a task is a picklable callable of an index (``task(i) -> result``), and an executor maps it over
indices, yielding ``(index, result, error)`` as each one ends. Executors know nothing of what a task does:
crossval's fold task (:mod:`cleanpipe.stages.crossval`) trains a fold; the same seed gives the same result
wherever it runs.

* ``local``: the tasks in this process, in order (an exception stops the map and propagates).
* ``ray``: one Ray task per index (``num_cpus``/``num_gpus`` each). Without an address a Ray instance is
  started on this machine, so one machine with 4 GPUs runs 4 tasks at once; with one, the driver joins that
  cluster. The task travels once through Ray's object store (its arrays zero-copy), so workers need no
  shared filesystem; a failing task is retried once, then reported with its error while the others go on.
* ``slurm``: one submitit job array, an array task per index, on a shared filesystem; the caller waits for
  the array's results, or keeps its job ID and leaves them for later.

Ray and submitit are optional extras: ``pip install 'cleanpipe[ray]'`` or ``'cleanpipe[slurm]'``. Choosing
an executor (:func:`placement`) checks once, before any work, that it can run here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cleanpipe.executors import ray_tasks, slurm_array
from cleanpipe.executors.options import RayOptions, SlurmOptions
from cleanpipe.validation import check_choice


@dataclass(frozen=True)
class Executor:
    """An executor's registry entry: its one-line summary (for ``--help``) and the check that it can run here."""

    summary: str
    preflight: Callable[["Placement"], None] = lambda where: None


EXECUTORS: dict[str, Executor] = {
    "local": Executor("here, one task after another"),
    "ray": Executor("a Ray task each; --address joins a cluster", lambda where: ray_tasks.preflight(where.ray)),
    "slurm": Executor("a submitit job array", lambda where: slurm_array.preflight(where.slurm)),
}


@dataclass(frozen=True)
class Placement:
    """A checked choice of executor and its options (made by :func:`placement`)."""

    executor: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self) -> None:
        check_choice(self.executor, "executor", EXECUTORS)


def placement(executor: str = "local", ray: RayOptions | None = None, slurm: SlurmOptions | None = None) -> Placement:
    """The executor ``executor`` with its options, once checked: a known name, its extra installed, Slurm
    present, a Ray address answering. Every check that can fail before any work happens here, once."""
    check_choice(executor, "executor", EXECUTORS)
    where = Placement(executor, ray or RayOptions(), slurm or SlurmOptions())
    EXECUTORS[executor].preflight(where)
    return where


@dataclass
class TaskMap:
    """The results of a map, as they arrive: iterate for ``(index, result or None, error or None)``.

    ``job_id`` is the Slurm array's ID (None elsewhere); a Slurm map's array runs whether or not it is iterated.
    """

    results: Iterator[tuple[int, object, str | None]]
    job_id: str | None = None

    def __iter__(self):
        return self.results


def map_tasks(where: Placement, task: Callable[[int], object], indices: list[int], *, folder: Path | None = None,
              name: str = "cleanpipe") -> TaskMap:
    """Run ``task`` on each of ``indices`` where ``where`` says (Slurm: an array called ``name``, logs in ``folder``)."""
    if where.executor == "ray":
        return TaskMap(ray_tasks.map_ray(task, indices, where.ray))
    if where.executor == "slurm":
        jobs = slurm_array.submit(task, indices, where.slurm, folder, name)
        return TaskMap(slurm_array.results(jobs, indices), job_id=str(jobs[0].job_id).split("_")[0])
    return TaskMap((i, task(i), None) for i in indices)


__all__ = ["EXECUTORS", "Executor", "Placement", "RayOptions", "SlurmOptions", "TaskMap", "map_tasks", "placement"]
