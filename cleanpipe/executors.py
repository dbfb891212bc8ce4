"""Where crossval's folds run: here one after another, as Ray tasks, or as a Slurm job array (submitit).

Every executor runs the same :func:`cleanpipe.crossval.train_fold` on the same inputs, so the same seed
gives the same shards, and the driver writes each shard as it arrives: an interrupted job resumes
without losing a finished fold, whichever executor ran it.

* ``local``: the folds in this process, in order (with per-epoch checkpoints).
* ``ray``: one Ray task per fold (``num_cpus``/``num_gpus`` per fold). Without an address a Ray instance
  is started on this machine, so one machine with 4 GPUs trains 4 folds at once; with one, the driver
  joins that cluster. The features travel through Ray's object store, so workers need no shared
  filesystem; a failing fold is retried once, then reported with its error while the others are kept.
* ``slurm``: one submitit job array, a task per fold; each task reloads the run's data from the shared
  filesystem, trains its fold (checkpointing each epoch) and writes its shard there. The driver waits
  and combines, or leaves ``crossval --combine`` for later.

Ray and submitit are optional extras: ``pip install 'cleanpipe[ray]'`` or ``'cleanpipe[slurm]'``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cleanpipe.errors import CleanpipeError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class FoldJob:
    """Everything one fold needs, the same for every executor (picklable: plain arrays and settings)."""

    X: np.ndarray
    labels: np.ndarray
    folds: np.ndarray  # int64 (R, N): each repeat's fold plan
    settings: object  # cleanpipe.crossval.CrossvalSettings
    n_classes: int
    device: str = "auto"
    threads: int | None = None  # torch threads per fold (one fold's result depends on it on CPU)
    device_memory: int | None = None


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray instance on this machine
    cpus_per_fold: int = 1
    gpus_per_fold: float | None = None  # None: 1 when CUDA is visible, else 0
    num_cpus: int | None = None  # the local instance's CPUs (default: this machine's)


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    gpus_per_fold: int = 0
    cpus_per_fold: int = 1
    array_parallelism: int = 64
    extra: dict = field(default_factory=dict)  # other sbatch options, e.g. {"account": "ml", "qos": "high"}
    cluster: str = "slurm"  # "local": the same job array as local processes (to try it, and in tests)
    wait: bool = True


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def run_fold(job: FoldJob, task: int, checkpoint: Path | None = None, on_epoch=None, on_batch=None):
    """Train fold task ``task`` (= repeat * n_folds + fold) of ``job`` (what every executor calls)."""
    from cleanpipe.crossval import train_fold

    _threads(job.threads)
    repeat, fold = divmod(task, job.settings.n_folds)
    return train_fold(job.X, job.labels, job.folds[repeat], fold, job.settings, job.n_classes, device=job.device,
                      checkpoint=checkpoint, on_epoch=on_epoch, on_batch=on_batch, device_memory=job.device_memory,
                      repeat=repeat)


def preflight(executor: str, ray: "RayOptions | None", slurm: "SlurmOptions | None") -> None:
    """Fail before any work or file when an executor cannot run: its extra missing, no Slurm, an unreachable address."""
    if executor == "ray":
        _import_ray()
        if ray is not None and ray.address and ray.address != "auto":
            _reachable(ray.address)
    elif executor == "slurm":
        _import_submitit()
        if (slurm is None or slurm.cluster == "slurm") and shutil.which("sbatch") is None:
            raise CleanpipeError("--executor slurm: no Slurm here (sbatch not found); run on a Slurm login node, "
                                 "or use --executor ray or local")


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to ``[ray://]host:port`` opens, else one clear line (Ray itself waits minutes to give up)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise CleanpipeError(f"--address {address}: expected HOST:PORT (the head node's GCS port, e.g. 10.0.0.5:6379), "
                             "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise CleanpipeError(f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                             "`ray start --head` or check the address, or leave --address out to run Ray here") from None


# ---- Ray --------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise CleanpipeError("--executor ray needs Ray: pip install 'cleanpipe[ray]' (or pip install 'ray>=2.9')") from None
    return ray


def _ray_fold(X, labels, folds, settings, n_classes, device, threads, device_memory, k):
    # Runs in a Ray worker; X arrives from the object store (zero-copy, read-only).
    return run_fold(FoldJob(np.asarray(X), labels, folds, settings, n_classes, device, threads, device_memory), k)


def ray_folds(job: FoldJob, todo: list[int], options: RayOptions) -> Iterator[tuple[int, object, str | None]]:
    """Yield ``(fold, FoldResult or None, error or None)`` as each Ray task finishes."""
    ray = _import_ray()
    import torch

    gpus = options.gpus_per_fold
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if options.address:
                ray.init(address=options.address, **kwargs)
            else:
                ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1, **kwargs)
        except ConnectionError as e:
            raise CleanpipeError(f"--address {options.address}: cannot reach a Ray cluster there ({e}); "
                                 "check the address (ray status on the head node), or leave --address out") from None
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds when a cluster is missing
            raise CleanpipeError(f"cannot start Ray{' at ' + options.address if options.address else ''}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    try:
        fold_task = ray.remote(num_cpus=options.cpus_per_fold, num_gpus=gpus, max_retries=1,
                               retry_exceptions=True)(_ray_fold)
        threads = job.threads if job.threads is not None else options.cpus_per_fold
        if options.gpus_per_fold is None and options.address:  # the cluster's GPUs, not the driver's
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            fold_task = fold_task.options(num_gpus=gpus)
        X_ref = ray.put(job.X)
        pending = {fold_task.remote(X_ref, job.labels, job.folds, job.settings, job.n_classes, job.device, threads,
                                    job.device_memory, k): k for k in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            try:
                yield k, ray.get(done[0]), None
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None) or e
                yield k, None, f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    finally:
        for ref in locals().get("pending", {}):  # stopped early (an error writing a shard): free their workers
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


# ---- Slurm (submitit) -------------------------------------------------------------------------


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise CleanpipeError("--executor slurm needs submitit: pip install 'cleanpipe[slurm]' (or pip install submitit)") from None
    return submitit


@dataclass
class SlurmFold:
    """A picklable job-array task: reload the run's data on the node, train one fold, write its shard."""

    root: str
    settings: object
    n_folds: int
    seed: int
    device: str
    threads: int | None
    device_memory: int | None

    def __call__(self, k: int) -> str:
        from cleanpipe.crossval import fold_plans, fold_shard_path, save_shard
        from cleanpipe.run import Run

        run = Run(self.root)
        _, ds, _ = run.bind_dataset(None)
        labels, _, _ = run.training_labels(ds)
        folds = fold_plans(labels, self.n_folds, self.seed, self.settings.repeats, ds.class_names)
        key = self.settings.key(labels, ds.fingerprint(), repeat=k // self.n_folds)
        shard = fold_shard_path(run, k, self.n_folds)
        ckpt = shard.with_name(f"{shard.stem}.ckpt.pt")  # a preempted task resumes from its last epoch
        result = run_fold(FoldJob(ds.X_train, labels, folds, self.settings, ds.n_classes, self.device, self.threads,
                                  self.device_memory), k, checkpoint=ckpt)
        save_shard(shard, result, key, self.settings)
        ckpt.unlink(missing_ok=True)
        return str(shard)


def submit_slurm(task: SlurmFold, todo: list[int], options: SlurmOptions, folder: Path):
    """Submit ``todo`` as one job array; returns the submitit jobs (fold order)."""
    submitit = _import_submitit()
    preflight("slurm", None, options)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=options.cluster)
    params = dict(timeout_min=options.time_min, cpus_per_task=options.cpus_per_fold, name="cleanpipe-crossval",
                  slurm_array_parallelism=options.array_parallelism)
    if options.gpus_per_fold:
        params["gpus_per_node"] = options.gpus_per_fold
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    try:
        executor.update_parameters(**params)
        return executor.map_array(task, todo)
    except Exception as e:  # noqa: BLE001 - sbatch's refusals arrive as submitit errors
        raise CleanpipeError(f"Slurm refused the job array: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from None


def wait_slurm(jobs, todo: list[int], on_done: Callable[[int, str | None], None], poll_s: float = 2.0) -> None:
    """Wait for the array; call ``on_done(fold, error or None)`` as each task ends."""
    left = dict(zip(todo, jobs))
    while left:
        for k, job in list(left.items()):
            if job.done():
                error = None
                exc = job.exception()
                if exc is not None:
                    lines = str(exc).strip().splitlines()
                    error = f"{type(exc).__name__}: {lines[-1] if lines else ''} (log: {job.paths.stderr})"
                del left[k]
                on_done(k, error)
        if left:
            time.sleep(poll_s)
