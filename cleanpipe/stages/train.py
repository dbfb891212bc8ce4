"""The train stage: read a run's inputs, ask the method's registry entry, train through the library call, write.

Methods live in :mod:`cleanpipe.robust` (one module each, named in :mod:`cleanpipe.robust.registry`);
:func:`cleanpipe.robust.train_model` trains them on arrays. This stage adds the run directory: the
labels and prune outputs a method asks for, the test split (scored after every epoch,
``train/history.csv``), resumable checkpoints, and ``train/model.pt``: the first network's weights
and what is needed to rebuild it (:mod:`cleanpipe.saved_model`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.recipes import fit_settings
from cleanpipe.robust import PruneOutputs, RunInputs, get_method, train_model
from cleanpipe.rundir import RunDir
from cleanpipe.saved_model import model_state, save_model


@dataclass
class TrainStage:
    """What ``cleanpipe train`` did, for the CLI's summary."""

    manifest: dict
    history: list[dict]
    outputs: list[str]  # the files written into RUN/train/
    note: str | None = None  # e.g. where corrected labels went


def read_label_quality(run: RunDir, n: int) -> np.ndarray:
    """float32 (n,): every training row's label quality from ``prune/label_issues.csv`` (its ``index`` column)."""
    import pandas as pd

    path = run.path("prune", "label_issues.csv")
    try:
        report = pd.read_csv(path, usecols=["index", "label_quality"])
    except (OSError, ValueError) as e:
        raise CleanpipeError(f"{path}: cannot read the label quality ({e}); re-run `cleanpipe prune {run.root}`") from None
    index = report["index"].to_numpy()
    if len(report) != n or index.min(initial=0) < 0 or index.max(initial=0) >= n or len(np.unique(index)) != n:
        raise CleanpipeError(f"{path}: the report does not cover the run's {n} rows; re-run `cleanpipe prune {run.root}`")
    quality = np.empty(n, np.float32)
    quality[index] = report["label_quality"].to_numpy(np.float32)
    return quality


def read_prune_outputs(run: RunDir, n: int, need: str) -> PruneOutputs:
    """The prune stage's keep mask and estimates (``need`` ``incv``: and INCV's sets; ``quality``: and every row's
    label quality), checked against this run."""
    man = run.require("prune", hint=f"cleanpipe prune {run.root}")
    if man["parameters"].get("standalone"):
        raise CleanpipeError(
            f"{run.root}: the prune stage ran on files from outside the run; run `cleanpipe prune {run.root}` on the run's own data"
        )
    keep = load_npy(run.path("prune", "keep_mask.npy"), what="keep mask").astype(bool)
    if keep.shape != (n,):
        raise CleanpipeError(f"{run.root}: the prune stage is stale ({len(keep)} rows for {n} labels); re-run `cleanpipe prune {run.root}`")
    m, method = man["metrics"], man["parameters"].get("method")
    out = PruneOutputs(keep=keep, method=method, estimated_noise_rate=m.get("estimated_noise_rate"),
                       estimated_noise_rate_kept=m.get("estimated_noise_rate_kept"))
    if need == "quality":
        out.label_quality = read_label_quality(run, n)
    if need == "incv":
        sets = run.path("prune", "incv_sets.npz")
        if method != "incv":
            raise CleanpipeError(f"this training method reads INCV's sets; run `cleanpipe prune {run.root} --method incv` first")
        if not sets.is_file():
            raise CleanpipeError(f"{run.root}: the INCV prune stage predates incv_sets.npz; re-run `cleanpipe prune {run.root} --method incv`")
        with np.load(sets, allow_pickle=False) as z:
            out.incv_selected, out.incv_candidates = np.flatnonzero(z["select"]), np.flatnonzero(z["candidate"])
        out.eval_ratio, out.symmetric = float(m["eval_ratio"]), bool(man["parameters"].get("symmetric", True))
    return out


def run_train_stage(run: RunDir, method: str = "standard", *, options=None, subset: str | None = None, model: str = "auto",
                    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
                    device: str = "auto", clean_labels: bool = False, progress=None) -> TrainStage:
    """Train on the run's (noisy) labels with a registered method and write ``RUN/train/``.

    Parameters
    ----------
    run : RunDir
    method : str
        A name from :data:`cleanpipe.robust.METHODS`.
    options : dataclass, optional
        The method's options (``METHODS[method].Options``); what they leave open (forget rates, INCV's
        sets, trusted labels, the flagged rows) is read from the run.
    subset : {'kept', 'all'}, optional
        Default the method's (``kept``; ``all`` for DivideMix). The prune stage's kept examples, or every training example (the "train on noisy labels" baseline
        with ``standard``). ``incv-coteaching`` trains on INCV's sets.
    model, epochs, batch_size, lr, seed
        Override the train recipe of the run's kind of data (``cleanpipe.recipes``).
    clean_labels : bool
        Benchmarks only: train on the true labels of a run with synthetic noise (the ceiling).
    """

    spec = get_method(method)
    options = spec.Options() if options is None else options
    subset = spec.default_subset if subset is None else subset
    spec.check_subset(subset)
    resolve_device(device)
    started = time.perf_counter()
    with run.transaction():
        if run.dataset_json() is None:
            raise CleanpipeError(f"{run.root} has no dataset; start with `cleanpipe noise` or `cleanpipe crossval` and --dataset")
        data_spec, ds, _ = run.bind_dataset(None)
        labels, truth, files = run.training_labels(ds)
        if clean_labels:
            if truth is None:
                raise CleanpipeError(f"--clean-labels needs a run with synthetic noise (true labels known); {run.root} has none")
            labels = truth
        settings = fit_settings("train", ds.input_shape, source=data_spec.source, model=model, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed)  # bad settings fail before any reading
        need = spec.prune_needed(options, subset)
        prune = None if need is None else read_prune_outputs(run, len(labels), need)
        if prune is not None:
            files += [run.path("prune", name) for name in ("keep_mask.npy", "label_issues.csv")]  # what the stage read
            files += [run.path("prune", "incv_sets.npz")] if need == "incv" else []
        inputs = RunInputs(ds, labels, truth, prune, subset, run.root)
        options, read = spec.from_run(options, inputs)
        scored = len(ds.y_test) > 0  # a run made with --test-fraction 0 has no test split to score
        result = train_model(ds.X_train, labels, spec.training_rows(inputs), method=spec, options=options,
                             X_test=ds.X_test if scored else None, y_test=ds.y_test if scored else None, settings=settings, class_names=ds.class_names,
                             truth=truth, device=device, resume_dir=run.path("train", "resume"), progress=progress)
        parameters = {"method": spec.name, "subset": spec.subset_name(subset), "clean_labels": clean_labels,
                      **{k: getattr(settings, k) for k in ("model", "epochs", "batch_size", "lr", "seed")},
                      **result.method_settings}
        extra = spec.outputs(result, ds, labels, truth)
        with run.write_stage("train", started=started) as w:
            for p in files + read:
                w.record_input(p)
            _write_train_files(w, result, ds, extra, spec.name)
            manifest = w.finish(parameters=parameters, metrics=train_metrics(result, labels, truth, len(ds.y_test)),
                                device=result.device)
        note = spec.after_write(result, options, ds)
        return TrainStage(manifest, result.history, ["model.pt", "history.csv", *extra], note)


def train_metrics(result, labels: np.ndarray, truth: np.ndarray | None, n_test: int) -> dict:
    """The manifest's metrics of a training: test accuracy, sizes, time per step, and the method's own."""
    final = result.history[-1]
    seconds = sum(h["seconds"] for h in result.history)
    metrics = {"test_accuracy": final.get("test_accuracy"), "n_train": int(len(result.rows)), "n_test": int(n_test),
               "final_train_accuracy": final["train_accuracy"], "train_seconds": round(seconds, 2),
               "seconds_per_step": round(seconds / max(1, result.steps), 6)}
    if "test_accuracy_peer" in final:
        metrics["test_accuracy_peer"] = final["test_accuracy_peer"]
    if truth is not None:
        metrics["train_noise_rate_true"] = round(float(np.mean(labels[result.rows] != truth[result.rows])), 6)
    return {**metrics, **result.metrics}


def _write_train_files(writer, result, dataset, extra: dict, method: str) -> None:
    import csv

    save_model(writer.path("model.pt"), model_state(result, dataset, method))
    columns = list(dict.fromkeys(k for row in result.history for k in row))  # every epoch's keys, first seen first
    with open(writer.path("history.csv"), "w", newline="") as f:  # the csv module: pandas costs 0.25 s to import
        out = csv.DictWriter(f, columns, restval="", lineterminator="\n")
        out.writeheader()
        out.writerows(result.history)
    for name, content in extra.items():
        if isinstance(content, dict):
            np.savez(writer.path(name), **content)
        else:
            content.to_csv(writer.path(name), index=False)
