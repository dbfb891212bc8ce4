"""Tasks as a Slurm job array through submitit (the ``slurm`` extra): an array task per index."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from cleanpipe.errors import CleanpipeError
from cleanpipe.executors.options import SlurmOptions
from cleanpipe.lazy import import_extra


def import_submitit():
    return import_extra("submitit", needed_by="--executor slurm", extra="slurm", requirement="submitit>=1.5")


def preflight(options: SlurmOptions) -> None:
    """submitit is installed and, for a real cluster, ``sbatch`` is on the PATH."""
    import_submitit()
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise CleanpipeError("--executor slurm: no Slurm here (sbatch not found); run on a Slurm login node, "
                             "or use --executor ray or local")


def submit(task: Callable[[int], object], indices: list[int], options: SlurmOptions, folder: Path, name: str = "cleanpipe"):
    """Submit ``indices`` as one job array called ``name`` (logs under ``folder``); the submitit jobs, in index order."""
    submitit = import_submitit()
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=options.cluster)
    params = dict(timeout_min=options.time_min, cpus_per_task=options.cpus_per_task, name=name,
                  slurm_array_parallelism=options.array_parallelism)
    if options.gpus_per_task:
        params["gpus_per_node"] = options.gpus_per_task
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    try:
        executor.update_parameters(**params)
        return executor.map_array(task, indices)
    except Exception as e:  # noqa: BLE001 - sbatch's refusals arrive as submitit errors
        raise CleanpipeError(f"Slurm refused the job array: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from None


def results(jobs, indices: list[int], poll_s: float = 2.0) -> Iterator[tuple[int, object, str | None]]:
    """Wait for the array; yield ``(index, result or None, error or None)`` as each task ends."""
    left = dict(zip(indices, jobs))
    while left:
        for i, job in list(left.items()):
            if job.done():
                del left[i]
                exc = job.exception()
                if exc is None:
                    yield i, job.result(), None
                else:
                    lines = str(exc).strip().splitlines()
                    yield i, None, f"{type(exc).__name__}: {lines[-1] if lines else ''} (log: {job.paths.stderr})"
        if left:
            time.sleep(poll_s)
