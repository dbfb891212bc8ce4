"""K-fold cross-validated out-of-fold predicted probabilities (``pred_probs``, the papers' ``psx``).

Folds are stratified and shuffled with the seed. Each fold trains a fresh model on the
other folds through the engine and scores its own rows, which no model that scored them
has seen. Every finished fold is saved as a shard (``crossval/shards/fold_I.npz``) keyed by
the settings that made it, so an interrupted job, or folds run as separate jobs on
separate GPUs or machines (``--fold I``), combine into ``pred_probs.npy`` without
recomputing anything (``--combine``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cleanpipe.data.base import shuffled_classes
from cleanpipe.errors import CleanpipeError
from cleanpipe.recipes import FitSettings, fit_settings
from cleanpipe.run import Run
from cleanpipe.validation import ParameterError, check_choice, check_number

SHARDS = "shards"


def fold_plan(labels: np.ndarray, n_folds: int, seed: int, class_names=None) -> np.ndarray:
    """Assign every example to a fold: stratified, shuffled with ``seed``.

    Each class's examples, in an order shuffled by ``numpy.random.default_rng(seed)``, are dealt to
    the folds in turn, each class starting where the previous one stopped: every fold holds each
    class's count divided by K give or take one, and fold sizes differ by at most one. (Written with
    NumPy rather than scikit-learn's ``StratifiedKFold``: importing scikit-learn costs crossval
    0.8 s of a 1-epoch run's start-up, and this is its only use there.)

    Parameters
    ----------
    labels : np.ndarray
        int of shape (N,).
    n_folds : int
        K, at least 2 and at most the size of the smallest class.
    seed : int
    class_names : sequence of str, optional
        Names the smallest class in the error when there are too few of it.

    Returns
    -------
    np.ndarray
        int64 of shape (N,), values 0..K-1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    check_number(n_folds, "n_folds", low=2)
    k = int(np.flatnonzero(counts == smallest)[0])
    name = repr(class_names[k]) if class_names is not None else str(k)
    if smallest < 2:
        raise CleanpipeError(f"class {name} has only 1 example; cross-validation needs at least 2 of every class "
                             "(one per fold): add examples of it or leave the class out")
    if n_folds > smallest:
        raise ParameterError(
            "n_folds", f"{n_folds} is larger than the smallest class ({smallest} examples of class {name}); "
            f"use {smallest} or fewer"
        )
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for _, members in shuffled_classes(labels, np.random.default_rng(seed)):
        folds[members] = (start + np.arange(len(members))) % n_folds
        start = (start + len(members)) % n_folds
    return folds


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` (repeat 0 keeps ``seed``, so one repeat is the plain K-fold run)."""
    return int(seed) if repeat == 0 else int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0] >> 1)


def fold_plans(labels: np.ndarray, n_folds: int, seed: int, repeats: int = 1, class_names=None) -> np.ndarray:
    """Fold assignments of every repeat: int64 (R, N), row r a :func:`fold_plan` with :func:`repeat_seed` (seed, r)."""
    check_number(repeats, "repeats", low=1)
    return np.stack([fold_plan(labels, n_folds, repeat_seed(seed, r), class_names) for r in range(repeats)])


@dataclass
class CrossvalSettings(FitSettings):
    """What makes a fold's result (the recipe, the fold count, test-time augmentation): shards made with
    other settings are never mixed in. ``repeats`` is how many fold splits are averaged; a repeat's
    shards do not depend on it, so ``--repeats 2`` reuses the shards of a run with one.

    ``tta`` scores each held-out image also shifted by the training translation (up, down, left,
    right) and averages the five views (ten with flips).
    """

    n_folds: int = 4
    repeats: int = 1
    tta: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.n_folds, "n_folds", low=2)
        check_number(self.repeats, "repeats", low=1)

    def train_config(self, seed: int, **overrides):
        return super().train_config(seed, **{"tta_shift": self.tta, **overrides})

    def key(self, labels: np.ndarray, fingerprint: str, repeat: int = 0) -> str:
        made_by = {k: v for k, v in asdict(self).items() if k != "repeats"}
        h = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        h.update(fingerprint.encode())
        if repeat:
            h.update(f"repeat {repeat}".encode())
        return h.hexdigest()[:16]


def default_settings(input_shape: tuple[int, ...], source: str | None = None, model: str = "auto",
                     **overrides) -> CrossvalSettings:
    """Crossval's recipe for data of this shape (``cleanpipe.recipes``), with the overrides that are not None."""
    return fit_settings("crossval", input_shape, source=source, model=model, cls=CrossvalSettings, **overrides)


@dataclass
class FoldResult:
    fold: int
    rows: np.ndarray
    probs: np.ndarray
    seconds: float
    device: str


def train_fold(
    X: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    fold: int,
    settings: CrossvalSettings,
    n_classes: int,
    *,
    device: str = "auto",
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    device_memory: int | None = None,
    repeat: int = 0,
) -> FoldResult:
    """Train a fresh model on every fold but ``fold`` and predict ``fold``'s rows.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) or float32 (N, D).
    labels : np.ndarray
        int64 (N,): the labels to train on (noisy ones in a benchmark).
    folds : np.ndarray
        int64 (N,) from :func:`fold_plan`.
    fold : int
    settings : CrossvalSettings
    n_classes : int
    device : {'auto', 'cpu', 'cuda'}
    checkpoint : Path, optional
        Per-epoch checkpoint of this fold's model (resumed from when present).
    device_memory : int, optional
        Bytes of device memory the dataset may take; larger data is streamed from host memory
        (:class:`cleanpipe.engine.DeviceData`). None: a share of the free memory on CUDA, unlimited on CPU.
    repeat : int
        Which repeat ``folds`` belongs to: a different, reproducible initialisation per repeat.

    Returns
    -------
    FoldResult
        ``probs`` is float32 (n_fold, K) for ``rows`` (sorted row indices of the fold).
    """
    import torch

    from cleanpipe.engine import DeviceData, device_name, fit, predict_proba, resolve_device
    from cleanpipe.models import build_model

    train_rows = np.flatnonzero(folds != fold)
    test_rows = np.flatnonzero(folds == fold)
    t0 = time.perf_counter()
    seed = repeat_seed(settings.seed * 100 + fold, repeat) % 2**31  # a different, reproducible init per fold
    torch.manual_seed(seed)
    model = build_model(settings.model, tuple(X.shape[1:]), n_classes)
    if not isinstance(model, torch.nn.Module):  # scikit-learn estimator (logreg)
        model.fit(X[train_rows], labels[train_rows])
        probs = np.zeros((len(test_rows), n_classes), dtype=np.float32)
        probs[:, model.classes_] = model.predict_proba(X[test_rows])
        return FoldResult(fold, test_rows, probs, time.perf_counter() - t0, "cpu (scikit-learn)")
    dev = resolve_device(device)
    cfg = settings.train_config(seed)
    data = DeviceData(X, dev, fit_rows=train_rows, budget=device_memory)
    nets = fit(model, data, labels, train_rows, cfg, checkpoint=checkpoint, on_epoch=on_epoch, on_batch=on_batch)
    probs = predict_proba(nets, data, test_rows, cfg)
    return FoldResult(fold, test_rows, probs, time.perf_counter() - t0, device_name(dev))


# ---- shards ------------------------------------------------------------------------------


def fold_shard_path(run: Run, task: int, n_folds: int | None = None) -> Path:
    """Shard of task ``task`` = repeat * n_folds + fold: ``fold_K.npz`` in repeat 0, ``repeat_R_fold_K.npz`` after."""
    repeat, fold = divmod(task, n_folds) if n_folds else (0, task)
    name = f"fold_{fold}.npz" if repeat == 0 else f"repeat_{repeat}_fold_{fold}.npz"
    return run.path("crossval", SHARDS) / name


def task_name(task: int, n_folds: int, repeats: int) -> str:
    repeat, fold = divmod(task, n_folds)
    return f"fold {fold}" if repeats == 1 else f"repeat {repeat} fold {fold}"


def save_shard(path: Path, result: FoldResult, key: str, settings: CrossvalSettings) -> dict:
    """Write one fold's rows and probabilities atomically (plain arrays, no pickle); return it as :func:`load_shard` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    shard = {
        "rows": result.rows.astype(np.int64), "probs": result.probs.astype(np.float32), "key": np.array(key),
        "seconds": np.array(result.seconds), "device": np.array(result.device),
    }
    np.savez(tmp, **shard, settings=np.array(json.dumps(asdict(settings))))
    os.replace(tmp, path)
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


def run_crossval_stage(
    run: Run,
    *,
    spec=None,
    model: str = "auto",
    n_folds: int = 4,
    repeats: int | None = None,
    tta: bool | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    fold: int | None = None,
    combine: bool = False,
    compile: bool = False,
    executor: str = "local",
    ray=None,
    slurm=None,
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
    that did not see it. ``tta`` averages shifted views of each held-out image. None: the recipe's.

    ``executor`` runs the folds here (``local``), as Ray tasks (``ray``; options ``ray``, a
    :class:`cleanpipe.executors.RayOptions`) or as a Slurm job array (``slurm``; options ``slurm``, a
    :class:`cleanpipe.executors.SlurmOptions`); each writes the same shards. ``threads`` sets torch's
    threads per fold (a fold's numbers on the CPU depend on it).
    """
    from cleanpipe.engine import resolve_device
    from cleanpipe.models import build_model
    from cleanpipe.progress import NullProgress

    progress = progress or NullProgress()
    started = time.perf_counter()
    if fold is not None and combine:
        raise CleanpipeError("--fold and --combine are separate jobs: run each fold with --fold I, then --combine once")
    resolve_device(device)  # fail now on --device cuda without a GPU
    from cleanpipe.executors import EXECUTORS, preflight

    check_choice(executor, "executor", EXECUTORS)
    preflight(executor, ray, slurm)
    if executor != "local" and fold is not None:
        raise CleanpipeError("--fold runs one fold here; leave it out with --executor ray or slurm, which run every fold")

    with run.transaction():
        spec, ds, is_new = run.bind_dataset(spec)
        labels, true_labels, inputs = run.training_labels(ds)
        settings = default_settings(ds.input_shape, spec.source, model, epochs=epochs, batch_size=batch_size, lr=lr,
                                    seed=seed, compile=compile, n_folds=n_folds, repeats=repeats, tta=tta)
        build_model(settings.model, ds.input_shape, ds.n_classes)  # wrong model for the data fails here
        repeats = settings.repeats
        folds = fold_plans(labels, n_folds, seed, repeats, ds.class_names)
        n_tasks = repeats * n_folds
        if fold is not None and not 0 <= fold < n_tasks:
            what = f"folds are 0..{n_folds - 1}" if repeats == 1 else \
                f"with --repeats {repeats} the fold tasks are 0..{n_tasks - 1} (repeat r's fold k is r * {n_folds} + k)"
            raise ParameterError("fold", f"{fold} is out of range: {what}")
        if is_new:
            run.write_dataset(spec, ds)
        fingerprint = ds.fingerprint()
        keys = {t: settings.key(labels, fingerprint, repeat=t // n_folds) for t in range(n_tasks)}

        rows_of = {t: np.flatnonzero(folds[t // n_folds] == t % n_folds) for t in range(n_tasks)}
        shards = {t: load_shard(fold_shard_path(run, t, n_folds)) for t in range(n_tasks)}  # each read once
        valid = {t for t in range(n_tasks) if _valid_shard(shards[t], keys[t], rows_of[t])}
        todo = [fold] if fold is not None else ([] if combine else [t for t in range(n_tasks) if t not in valid])
        stage = CrossvalStage(settings, n_folds, trained=[], reused=sorted(valid - set(todo)), repeats=repeats)
        name = lambda t: task_name(t, n_folds, repeats)  # noqa: E731

        from cleanpipe.executors import FoldJob, RayOptions, SlurmOptions, run_fold

        job = FoldJob(ds.X_train, labels, folds, settings, ds.n_classes, device, threads, device_memory)
        failed: dict[int, str] = {}

        def finished(k: int, result) -> None:  # the driver writes each shard as it arrives
            shards[k] = save_shard(fold_shard_path(run, k, n_folds), result, keys[k], settings)
            acc = float(np.mean(result.probs.argmax(1) == labels[result.rows]))
            stage.trained.append(k)
            progress.advance(0, note=f"{name(k)}: acc {acc:.3f} in {result.seconds:.1f}s")

        if todo:
            progress.start("folds", len(todo), level=0)
        if todo and executor == "ray":
            from cleanpipe.executors import ray_folds

            for k, result, error in ray_folds(job, todo, ray or RayOptions()):
                if error is None:
                    finished(k, result)
                else:
                    failed[k] = error
                    progress.advance(0, note=f"{name(k)} failed")
        elif todo and executor == "slurm":
            from cleanpipe.executors import SlurmFold, submit_slurm, wait_slurm

            opts = slurm or SlurmOptions()
            task = SlurmFold(str(run.root.resolve()), settings, n_folds, seed, device,
                             threads if threads is not None else opts.cpus_per_fold, device_memory)
            jobs = submit_slurm(task, todo, opts, run.path("crossval", "slurm"))
            stage.job_id = str(jobs[0].job_id).split("_")[0]
            if not opts.wait:
                stage.missing = todo
                return stage

            def ended(k: int, error: str | None) -> None:
                shard = load_shard(fold_shard_path(run, k, n_folds))  # written by the task on the shared filesystem
                if error is None and _valid_shard(shard, keys[k], rows_of[k]):
                    shards[k] = shard
                    stage.trained.append(k)
                    progress.advance(0, note=f"{name(k)}: done in {float(shard['seconds']):.1f}s")
                else:
                    failed[k] = error or "the task ended without a valid shard"
                    progress.advance(0, note=f"{name(k)} failed")

            wait_slurm(jobs, todo, ended)
        else:
            for k in todo:
                shard_path = fold_shard_path(run, k, n_folds)
                ckpt = shard_path.with_name(f"{shard_path.stem}.ckpt.pt")
                progress.start(f"{name(k)} epochs", settings.epochs, level=1)
                progress.start("batches", 1, level=2)
                new_epoch = [True]  # the batch bar restarts with each epoch

                def on_epoch(e, m):
                    progress.advance(1, completed=e + 1, note=f"loss {m['loss']:.3f} acc {m['train_accuracy']:.3f}")
                    new_epoch[0] = True

                def on_batch(s, total):
                    if new_epoch[0]:
                        progress.start("batches", total, level=2)
                        new_epoch[0] = False
                    progress.advance(2, completed=s)

                finished(k, run_fold(job, k, checkpoint=ckpt, on_epoch=on_epoch, on_batch=on_batch))
                ckpt.unlink(missing_ok=True)
        failure = None
        if failed:  # raised once the transaction has ended well: the finished shards (and logs) stay
            kept = f"; the {len(stage.trained)} finished fold(s) are kept" if stage.trained else ""
            k, why = next(iter(sorted(failed.items())))
            failure = CleanpipeError(f"fold(s) {', '.join(map(str, sorted(failed)))} failed (fold {k}: {why}){kept}; "
                                     "re-run the same command to retry only those")
        elif fold is not None:
            stage.missing = [t for t in range(n_tasks) if not _valid_shard(shards[t], keys[t], rows_of[t])]
            return stage
        else:
            stage.manifest = _combine(
                run, settings, keys, labels, true_labels, folds, rows_of, shards, inputs, ds.n_classes, started
            )
            return stage
    raise failure


def _combine(run, settings, keys, labels, true_labels, folds, rows_of, loaded, inputs, n_classes, started) -> dict:
    n_folds, repeats = settings.n_folds, settings.repeats
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
        for p in inputs:
            w.record_input(p)
        w.save_npy("pred_probs.npy", pred_probs)
        w.save_npy("folds.npy", folds[0] if repeats == 1 else folds)  # (N,), or (R, N) with repeats
        devices = sorted({v["device"] for v in per_fold.values()})
        return w.finish(
            parameters={**asdict(settings), "shard_key": keys[0]},
            metrics={**metrics, "per_fold": per_fold},
            device=", ".join(devices),
        )
