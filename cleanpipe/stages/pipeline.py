"""``cleanpipe run``: the stages in order, skipping what is up to date; callable from Python.

>>> from cleanpipe.data import DataSpec
>>> from cleanpipe.rundir import RunDir
>>> from cleanpipe.stages.pipeline import run_pipeline
>>> result = run_pipeline(RunDir("runs/demo"), DataSpec("digits"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cleanpipe.data import SOURCES, DataSpec
from cleanpipe.detect.confident import DEFAULT_METHOD
from cleanpipe.detect.crossval import N_FOLDS
from cleanpipe.errors import CleanpipeError
from cleanpipe.executors import Placement, placement
from cleanpipe.progress import NullProgress
from cleanpipe.robust import get_method
from cleanpipe.rundir import RunDir
from cleanpipe.stages.crossval import run_crossval_stage
from cleanpipe.stages.noise import run_noise_stage
from cleanpipe.stages.prune import run_prune_stage
from cleanpipe.stages.report import run_report_stage
from cleanpipe.stages.train import run_train_stage
from cleanpipe.validation import ParameterError


@dataclass
class PipelineResult:
    """What each stage of :func:`run_pipeline` did (None where it was up to date and skipped)."""

    noise: object | None
    crossval: object | None
    prune: object
    train_manifest: dict
    train: object | None
    report: Path
    kind: str = "none"  # the synthetic noise it used ("none": the labels as they are)
    rate: float = 0.0


def same_spec(run: RunDir, spec) -> bool:
    """The run already uses this data (or no data was asked for)."""

    recorded = run.dataset_json()
    return recorded is not None and (spec is None or DataSpec.from_json(recorded["spec"]) == spec)


def noise_is_current(run: RunDir, spec, kind: str, rate: float, seed: int) -> bool:
    """The run's noise stage was made with these settings on this data and nothing changed since."""
    man = run.manifest("noise")
    wanted = {"kind": kind, "rate": rate, "sparsity": 0.0, "seed": seed}
    return (
        man is not None
        and {k: man["parameters"].get(k) for k in wanted} == wanted
        and man["parameters"].get("class_map") is None
        and same_spec(run, spec)
        and run.is_current("noise", man["parameters"])
    )


def train_is_current(run: RunDir, method: str, seed: int) -> bool:
    """The run's train stage trained ``method`` with ``seed`` on its default subset, and is current."""

    man = run.manifest("train")
    if man is None or man["parameters"].get("method") != method or man["parameters"].get("seed") != seed:
        return False
    if man["parameters"].get("subset") != get_method(method).subset_name("kept"):
        return False
    try:
        run.require("train")
    except CleanpipeError:
        return False
    return True


DEMO_NOISE = ("symmetric", 0.4)  # what `cleanpipe run` adds to the embedded demo data, to have errors to find


def default_noise(run: RunDir, spec, kind: str | None, rate: float | None) -> tuple[str, float]:
    """The synthetic noise to add: as asked, else the demo's on the embedded data, else none.

    A person's own data (``--data`` or ``--labels``) gets noise only when ``kind`` is given:
    synthetic noise is for benchmarks, and would bury the real errors they want found.
    """

    if kind is not None:
        return kind, (DEMO_NOISE[1] if rate is None else rate) if kind != "none" else 0.0
    noised = run.manifest("noise")
    if noised is not None and rate is None:  # the run already has its noise (e.g. from `cleanpipe noise`): keep it
        return noised["parameters"]["kind"], float(noised["parameters"]["rate"])
    if spec is None and run.dataset_json() is not None:
        spec = DataSpec.from_json(run.dataset_json()["spec"])
    demo = spec is None or (not SOURCES[spec.source].needs_path and spec.labels is None)
    if demo:
        return DEMO_NOISE[0], DEMO_NOISE[1] if rate is None else rate
    if rate is not None:
        raise ParameterError("rate", "adds synthetic noise, which your own data gets only with --kind (e.g. --kind symmetric)")
    return "none", 0.0


def run_pipeline(
    run: RunDir,
    spec=None,
    *,
    kind: str | None = None,
    rate: float | None = None,
    seed: int = 0,
    model: str = "auto",
    folds: int = N_FOLDS,
    device: str = "auto",
    method: str = "coteaching",
    prune_method: str = DEFAULT_METHOD,
    where: Placement | str = "local",
    device_memory: int | None = None,
    progress=None,
    on_stage: Callable[[str, object | None], None] | None = None,
) -> PipelineResult:
    """Noise (on demo data, or when asked), crossval, prune, train and report, reusing what is current.

    Parameters
    ----------
    run : RunDir
    spec : cleanpipe.data.DataSpec, optional
        The data; None: the run's own.
    kind, rate : str, float, optional
        Synthetic noise; ``kind="none"`` trains on the labels as they are. Default: the demo's 40%
        symmetric noise on embedded data, none on a person's own (:func:`default_noise`).
    method : str
        The training method (a name from :data:`cleanpipe.robust.METHODS`); one that needs an INCV prune
        stage makes ``prune_method`` ``incv``.
    where, device_memory
        Where crossval's folds run and how much device memory their data may take
        (:func:`cleanpipe.stages.crossval.run_crossval_stage`); the executor is checked before any stage runs.
    on_stage : callable(name, stage), optional
        Called after each stage with its result (None when it was up to date and skipped).
    """

    trainer = get_method(method)
    where = placement(where) if isinstance(where, str) else where  # before the noise stage writes anything
    progress = progress or NullProgress()
    report = on_stage or (lambda name, stage: None)
    if run.dataset_json() is None and run.manifest("noise") is not None:
        raise CleanpipeError(
            f"{run.root} noised a bare label file and has no dataset; `cleanpipe run` needs one: use a new run directory"
        )
    if trainer.prune_needed(trainer.Options(), "kept") == "incv":
        prune_method = "incv"
    noise = crossval = trained = None
    asked = kind
    kind, rate = default_noise(run, spec, kind, rate)
    with run.transaction():
        if kind == "none":
            data_spec, ds, is_new = run.bind_dataset(spec)
            if is_new:
                run.write_dataset(data_spec, ds)
        elif noise_is_current(run, spec, kind, rate, seed) or (asked is None and run.has("noise") and same_spec(run, spec)):
            report("noise", None)
        else:
            noise = run_noise_stage(run, spec=spec, kind=kind, rate=rate, seed=seed)
            report("noise", noise)
        if prune_method != "incv":
            crossval = run_crossval_stage(run, model=model, n_folds=folds, seed=seed, device=device, progress=progress,
                                          where=where, device_memory=device_memory)
            progress.finish()
            report("crossval", crossval)
        pruned = run_prune_stage(run, method=prune_method, incv={"seed": seed, "device": device}, progress=progress)
        progress.finish()
        report("prune", pruned)
        if train_is_current(run, method, seed):
            report("train", None)
            train_manifest = run.manifest("train")
        else:
            trained = run_train_stage(run, method, seed=seed, device=device, progress=progress)
            progress.finish()
            report("train", trained)
            train_manifest = trained.manifest
        page = run_report_stage(run).html_path
    return PipelineResult(noise, crossval, pruned, train_manifest, trained, page, kind, rate)
