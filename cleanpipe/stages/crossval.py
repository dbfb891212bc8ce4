"""The crossval stage (``cleanpipe crossval``): out-of-fold ``pred_probs`` for a run's training split.

The folds' algorithm is :mod:`cleanpipe.detect.crossval`; this module reads the run, sends the fold tasks
to an executor (:mod:`cleanpipe.executors`), keeps each finished fold as a shard
(``crossval/shards/fold_I.npz``) keyed by the settings that made it, and combines them. So an interrupted
job, or folds run as separate jobs on separate GPUs or machines (``--fold I``), combine into
``pred_probs.npy`` without recomputing anything (``--combine``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cleanpipe.data import DataSpec
from cleanpipe.detect.crossval import (
    N_FOLDS,
    CrossvalSettings,
    FoldResult,
    default_settings,
    fold_plans,
    train_fold,
)
from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.executors import Placement, map_tasks, placement
from cleanpipe.files import atomic_path
from cleanpipe.models import check_model
from cleanpipe.progress import NullProgress
from cleanpipe.rundir import RunDir
from cleanpipe.validation import ParameterError

SHARDS = "shards"


# ---- the fold task: what every executor runs ----------------------------------------------


@dataclass
class FoldTask:
    """Train fold task ``t`` (= repeat * n_folds + fold): picklable (plain arrays and settings), the same
    wherever it runs, so the same seed gives the same shards on every executor."""

    X: np.ndarray
    labels: np.ndarray
    folds: np.ndarray  # int64 (R, N): each repeat's fold plan
    settings: CrossvalSettings
    n_classes: int
    device: str = "auto"
    threads: int | None = None  # torch threads per fold (one fold's result depends on it on CPU)
    device_memory: int | None = None

    def __call__(self, task: int, **hooks) -> FoldResult:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        repeat, fold = divmod(task, self.settings.n_folds)
        return train_fold(self.X, self.labels, self.folds[repeat], fold, self.settings, self.n_classes,
                          device=self.device, device_memory=self.device_memory, repeat=repeat, **hooks)


@dataclass
class SlurmFoldTask:
    """A job-array task on a shared filesystem: reload the run's data on the node, train one fold (resuming
    from its last epoch if preempted), write its shard there."""

    root: str
    settings: CrossvalSettings
    device: str
    threads: int | None
    device_memory: int | None

    def __call__(self, task: int) -> str:
        run = RunDir(self.root)
        _, ds, _ = run.bind_dataset(None)
        labels, _, _ = run.training_labels(ds)
        n_folds = self.settings.n_folds
        folds = fold_plans(labels, n_folds, self.settings.seed, self.settings.repeats, ds.class_names)
        shard = fold_shard_path(run, task, n_folds)
        ckpt = checkpoint_path(shard)
        fold = FoldTask(ds.X_train, labels, folds, self.settings, ds.n_classes, self.device, self.threads,
                        self.device_memory)
        save_shard(shard, fold(task, checkpoint=ckpt), self.settings.key(labels, ds.fingerprint(), task // n_folds),
                   self.settings)
        ckpt.unlink(missing_ok=True)
        return str(shard)


class _WithProgress:
    """A local fold task with its bars (epochs, batches) and a per-epoch checkpoint beside its shard."""

    def __init__(self, task: FoldTask, run: RunDir, progress, name) -> None:
        self.task, self.run, self.progress, self.name = task, run, progress, name

    def __call__(self, t: int) -> FoldResult:
        progress, new_epoch = self.progress, [True]  # the batch bar restarts with each epoch
        shard = fold_shard_path(self.run, t, self.task.settings.n_folds)
        ckpt = checkpoint_path(shard)
        progress.start(f"{self.name(t)} epochs", self.task.settings.epochs, level=1)
        progress.start("batches", 1, level=2)

        def on_epoch(e, m):
            progress.advance(1, completed=e + 1, note=f"loss {m['loss']:.3f} acc {m['train_accuracy']:.3f}")
            new_epoch[0] = True

        def on_batch(s, total):
            if new_epoch[0]:
                progress.start("batches", total, level=2)
                new_epoch[0] = False
            progress.advance(2, completed=s)

        return self.task(t, checkpoint=ckpt, on_epoch=on_epoch, on_batch=on_batch)  # the driver removes ckpt


# ---- shards ------------------------------------------------------------------------------


def fold_shard_path(run: RunDir, task: int, n_folds: int | None = None) -> Path:
    """Shard of task ``task`` = repeat * n_folds + fold: ``fold_K.npz`` in repeat 0, ``repeat_R_fold_K.npz`` after."""
    repeat, fold = divmod(task, n_folds) if n_folds else (0, task)
    name = f"fold_{fold}.npz" if repeat == 0 else f"repeat_{repeat}_fold_{fold}.npz"
    return run.path("crossval", SHARDS) / name


def checkpoint_path(shard: Path) -> Path:
    """Where a fold keeps its per-epoch checkpoint until its shard is written (a preempted fold resumes from it)."""
    return shard.with_name(f"{shard.stem}.ckpt.pt")


def task_name(task: int, n_folds: int, repeats: int) -> str:
    repeat, fold = divmod(task, n_folds)
    return f"fold {fold}" if repeats == 1 else f"repeat {repeat} fold {fold}"


def save_shard(path: Path, result: FoldResult, key: str, settings: CrossvalSettings) -> dict:
    """Write one fold's rows and probabilities atomically (plain arrays, no pickle); return it as :func:`load_shard` would."""
    shard = {
        "rows": result.rows.astype(np.int64), "probs": result.probs.astype(np.float32), "key": np.array(key),
        "seconds": np.array(result.seconds), "device": np.array(result.device),
    }
    with atomic_path(path) as tmp:
        np.savez(tmp, **shard, settings=np.array(json.dumps(asdict(settings))))
    return {**shard, "settings": asdict(settings)}


def load_shard(path: Path) -> dict | None:
    """A shard's arrays, or None when it is missing or unreadable (it will be recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("rows", "probs", "key", "seconds", "device")}
            out["settings"] = json.loads(str(z["settings"])) if "settings" in z.files else {}
            return out
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _valid_shard(shard: dict | None, key: str, rows: np.ndarray) -> bool:
    return shard is not None and str(shard["key"]) == key and np.array_equal(shard["rows"], rows)


# ---- the stage ---------------------------------------------------------------------------


@dataclass
class CrossvalStage:
    """What ``cleanpipe crossval`` did, for the CLI's summary."""

    settings: CrossvalSettings
    n_folds: int
    trained: list[int]
    reused: list[int]
    manifest: dict | None = None  # None after a single --fold job (or a Slurm array left running)
    missing: list[int] = field(default_factory=list)
    job_id: str | None = None  # the Slurm job array's ID
    repeats: int = 1


@dataclass
class _Folds:
    """What the stage read and planned: the labels, the fold plans, each task's key, rows and shard."""

    settings: CrossvalSettings
    spec: DataSpec
    ds: object
    is_new: bool
    labels: np.ndarray
    true_labels: np.ndarray | None
    inputs: list[Path]
    folds: np.ndarray
    keys: dict[int, str]
    rows_of: dict[int, np.ndarray]
    shards: dict[int, dict | None]

    def valid(self, t: int) -> bool:
        return _valid_shard(self.shards[t], self.keys[t], self.rows_of[t])


def _read(run: RunDir, spec, fold: int | None, options: dict) -> _Folds:
    spec, ds, is_new = run.bind_dataset(spec)
    labels, true_labels, inputs = run.training_labels(ds)
    settings = default_settings(ds.input_shape, spec.source, **options)
    check_model(settings.model, ds.input_shape)  # a model for other data fails here
    n_folds, repeats = settings.n_folds, settings.repeats
    folds = fold_plans(labels, n_folds, settings.seed, repeats, ds.class_names)
    n_tasks = repeats * n_folds
    if fold is not None and not 0 <= fold < n_tasks:
        what = f"folds are 0..{n_folds - 1}" if repeats == 1 else \
            f"with --repeats {repeats} the fold tasks are 0..{n_tasks - 1} (repeat r's fold k is r * {n_folds} + k)"
        raise ParameterError("fold", f"{fold} is out of range: {what}")
    fingerprint = ds.fingerprint()
    keys = {t: settings.key(labels, fingerprint, repeat=t // n_folds) for t in range(n_tasks)}
    rows_of = {t: np.flatnonzero(folds[t // n_folds] == t % n_folds) for t in range(n_tasks)}
    shards = {t: load_shard(fold_shard_path(run, t, n_folds)) for t in range(n_tasks)}  # each read once
    return _Folds(settings, spec, ds, is_new, labels, true_labels, inputs, folds, keys, rows_of, shards)


def run_crossval_stage(
    run: RunDir,
    *,
    spec=None,
    model: str = "auto",
    n_folds: int = N_FOLDS,
    repeats: int | None = None,
    tta: bool | None = None,
    mixup: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    fold: int | None = None,
    combine: bool = False,
    compile: bool = False,
    where: Placement | str = "local",
    threads: int | None = None,
    device_memory: int | None = None,
    progress=None,
) -> CrossvalStage:
    """Out-of-fold ``pred_probs`` for a run's training split, into ``RUN/crossval/``.

    Trains on the run's noisy labels when it has a noise stage, else on the dataset's
    labels. ``fold`` runs that single fold and saves its shard; ``combine`` only joins
    existing shards; neither: every fold without a valid shard, then the combination.

    ``repeats`` R > 1 splits the data R times (``R * n_folds`` fold tasks, numbered
    ``repeat * n_folds + fold``, each a shard) and averages each row's probabilities over the R models
    that did not see it. ``tta`` averages shifted views of each held-out image; ``mixup`` (alpha; 0: off)
    trains the folds with mixup. None: the recipe's.

    ``where`` runs the folds here (``"local"``), as Ray tasks or as a Slurm job array: an executor's name,
    or a :class:`cleanpipe.executors.Placement` with its options (:func:`cleanpipe.executors.placement`);
    each writes the same shards. ``threads`` sets torch's threads per fold (a fold's numbers on the CPU
    depend on it; on Ray and Slurm, default one per CPU a fold gets).
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    if fold is not None and combine:
        raise CleanpipeError("--fold and --combine are separate jobs: run each fold with --fold I, then --combine once")
    resolve_device(device)  # fail now on --device cuda without a GPU
    where = placement(where) if isinstance(where, str) else where
    if where.executor != "local" and fold is not None:
        raise CleanpipeError("--fold runs one fold here; leave it out with --executor ray or slurm, which run every fold")
    options = dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, compile=compile,
                   n_folds=n_folds, repeats=repeats, tta=tta, mixup=mixup)
    with run.transaction():
        f = _read(run, spec, fold, options)
        if f.is_new:
            run.write_dataset(f.spec, f.ds)
        settings, n_tasks = f.settings, len(f.keys)
        valid = {t for t in range(n_tasks) if f.valid(t)}
        todo = [fold] if fold is not None else ([] if combine else [t for t in range(n_tasks) if t not in valid])
        stage = CrossvalStage(settings, settings.n_folds, trained=[], reused=sorted(valid - set(todo)),
                              repeats=settings.repeats)
        failed = _run_folds(run, f, todo, where, stage, device, threads, device_memory, progress)
        if stage.job_id is not None and not where.slurm.wait:
            stage.missing = todo
            return stage
        failure = None
        if failed:  # raised once the transaction has ended well: the finished shards (and logs) stay
            kept = f"; the {len(stage.trained)} finished fold(s) are kept" if stage.trained else ""
            k, why = next(iter(sorted(failed.items())))
            failure = CleanpipeError(f"fold(s) {', '.join(map(str, sorted(failed)))} failed (fold {k}: {why}){kept}; "
                                     "re-run the same command to retry only those")
        elif fold is not None:
            stage.missing = [t for t in range(n_tasks) if not f.valid(t)]
            return stage
        else:
            stage.manifest = _combine(run, f, started)
            return stage
    raise failure


def _run_folds(run: RunDir, f: _Folds, todo: list[int], where: Placement, stage: CrossvalStage, device: str,
               threads: int | None, device_memory: int | None, progress) -> dict[int, str]:
    """Send the fold tasks ``todo`` where ``where`` says; keep each shard as it arrives. Returns the failures."""
    settings, n_folds = f.settings, f.settings.n_folds
    name = lambda t: task_name(t, n_folds, settings.repeats)  # noqa: E731
    if where.executor == "slurm":  # each array task reloads the run and writes its own shard
        task = SlurmFoldTask(str(run.root.resolve()), settings, device,
                             threads if threads is not None else where.slurm.cpus_per_task, device_memory)
    else:
        per_task = threads if threads is not None or where.executor == "local" else where.ray.cpus_per_task
        task = FoldTask(f.ds.X_train, f.labels, f.folds, settings, f.ds.n_classes, device, per_task, device_memory)
        task = _WithProgress(task, run, progress, name) if where.executor == "local" else task
    failed: dict[int, str] = {}
    if not todo:
        return failed
    progress.start("folds", len(todo), level=0)
    results = map_tasks(where, task, todo, folder=run.path("crossval", "slurm"), name="cleanpipe-crossval")
    stage.job_id = results.job_id
    if results.job_id is not None and not where.slurm.wait:
        return failed
    for t, result, error in results:
        if isinstance(result, FoldResult):  # the driver writes each shard as it arrives, then drops its checkpoint
            f.shards[t] = save_shard(fold_shard_path(run, t, n_folds), result, f.keys[t], settings)
            checkpoint_path(fold_shard_path(run, t, n_folds)).unlink(missing_ok=True)
            note = f"acc {float(np.mean(result.probs.argmax(1) == f.labels[result.rows])):.3f} in {result.seconds:.1f}s"
        elif error is None:  # written by the Slurm task on the shared filesystem
            f.shards[t] = load_shard(fold_shard_path(run, t, n_folds))
            error = None if f.valid(t) else "the task ended without a valid shard"
            note = f"done in {float(f.shards[t]['seconds']):.1f}s" if error is None else ""
        if error is None:
            stage.trained.append(t)
            progress.advance(0, note=f"{name(t)}: {note}")
        else:
            failed[t] = error
            progress.advance(0, note=f"{name(t)} failed")
    return failed


def _combine(run: RunDir, f: _Folds, started: float) -> dict:
    """Check that every fold task has its shard, average the repeats and write ``RUN/crossval/``."""
    settings, keys, labels, true_labels, folds, rows_of, loaded = (
        f.settings, f.keys, f.labels, f.true_labels, f.folds, f.rows_of, f.shards)
    n_folds, repeats, n_classes = settings.n_folds, settings.repeats, f.ds.n_classes
    shards, missing, foreign = {}, [], []
    for t, rows in rows_of.items():
        shard = loaded[t]
        if shard is None:
            missing.append(t)
        elif not _valid_shard(shard, keys[t], rows):
            foreign.append(t)
        else:
            shards[t] = shard
    if missing or foreign:
        parts = []
        noun = "fold" if repeats == 1 else "fold task"
        if missing:
            parts.append(f"no shard for {noun}(s) {', '.join(map(str, missing))}")
        if foreign:
            theirs = loaded[foreign[0]]["settings"]
            diff = [f"{k} {theirs[k]} (now {v})" for k, v in asdict(settings).items()
                    if k in theirs and theirs[k] != v and k != "repeats"]
            why = f": {', '.join(diff)}" if diff else " (other labels or data)"
            parts.append(f"{noun}(s) {', '.join(map(str, foreign))} were made with other settings{why}")
        raise CleanpipeError(
            f"cannot combine: {'; '.join(parts)}; run `cleanpipe crossval {run.root} --fold I` with the same options for each"
        )
    # Each repeat's probabilities in full, then their mean in a fixed order: the same shards give the same bytes.
    by_repeat = np.zeros((repeats, len(labels), n_classes), dtype=np.float32)
    for t, shard in shards.items():
        by_repeat[t // n_folds, shard["rows"]] = shard["probs"]
    pred_probs = by_repeat[0].astype(np.float64)
    for r in range(1, repeats):
        pred_probs += by_repeat[r]
    pred_probs = (pred_probs / repeats).astype(np.float32)
    oof = pred_probs.argmax(1)
    metrics = {"oof_accuracy": round(float(np.mean(oof == labels)), 6),
               # always predicting the largest class scores this: the floor a useful model must clear
               "chance_accuracy": round(float(np.bincount(labels).max() / max(len(labels), 1)), 6)}
    if true_labels is not None:
        metrics["oof_accuracy_true"] = round(float(np.mean(oof == true_labels)), 6)
    if repeats > 1:
        metrics["oof_accuracy_per_repeat"] = [round(float(np.mean(p.argmax(1) == labels)), 6) for p in by_repeat]
    per_fold = {
        (str(t) if repeats == 1 else f"{t // n_folds}/{t % n_folds}"): {
            "accuracy": round(float(np.mean(s["probs"].argmax(1) == labels[s["rows"]])), 6),
            "seconds": round(float(s["seconds"]), 2),
            "device": str(s["device"]),
        }
        for t, s in sorted(shards.items())
    }
    train_seconds = sum(float(s["seconds"]) for s in shards.values())
    metrics["fold_seconds_total"] = round(train_seconds, 2)
    metrics["train_examples_per_second"] = round(
        repeats * settings.epochs * (len(labels) * (n_folds - 1)) / max(train_seconds, 1e-9), 1
    )
    with run.write_stage("crossval", keep=(SHARDS, "slurm"), started=started) as w:  # slurm: the array's logs
        for p in f.inputs:
            w.record_input(p)
        w.save_npy("pred_probs.npy", pred_probs)
        w.save_npy("folds.npy", folds[0] if repeats == 1 else folds)  # (N,), or (R, N) with repeats
        devices = sorted({v["device"] for v in per_fold.values()})
        return w.finish(
            parameters={**asdict(settings), "shard_key": keys[0]},
            metrics={**metrics, "per_fold": per_fold},
            device=", ".join(devices),
        )
