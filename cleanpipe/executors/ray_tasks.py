"""Tasks as Ray tasks: one per index, results as they finish (the ``ray`` extra)."""

from __future__ import annotations

import os
from typing import Callable, Iterator

from cleanpipe.errors import CleanpipeError
from cleanpipe.executors.options import RayOptions
from cleanpipe.lazy import import_extra


def import_ray():
    return import_extra("ray", needed_by="--executor ray", extra="ray", requirement="ray>=2.9")


def preflight(options: RayOptions) -> None:
    """Ray is installed and, when an address is given, something answers there."""
    import_ray()
    if options.address and options.address != "auto":
        reachable(options.address)


def reachable(address: str, timeout_s: float = 5.0) -> None:
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


def _call(task, index: int):
    # Runs in a Ray worker; the task arrives from the object store (its arrays zero-copy, read-only).
    return task(index)


def _init(ray, options: RayOptions) -> None:
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


def map_ray(task: Callable[[int], object], indices: list[int], options: RayOptions) -> Iterator[tuple[int, object, str | None]]:
    """Yield ``(index, result or None, error or None)`` as each Ray task finishes."""
    ray = import_ray()
    import torch

    gpus = options.gpus_per_task
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, options)
    pending: dict = {}
    try:
        remote = ray.remote(num_cpus=options.cpus_per_task, num_gpus=gpus, max_retries=1, retry_exceptions=True)(_call)
        if options.gpus_per_task is None and options.address:  # the cluster's GPUs, not the driver's
            remote = remote.options(num_gpus=1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)
        task_ref = ray.put(task)
        pending = {remote.remote(task_ref, i): i for i in indices}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                yield i, ray.get(done[0]), None
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None) or e
                yield i, None, f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    finally:
        for ref in pending:  # stopped early (the caller failed on a result): free their workers
            ray.cancel(ref)
        if started_here:
            ray.shutdown()
