"""The audit stage (``cleanpipe audit RUN``): duplicates, near duplicates, outliers and test leaks.

Reads the run's data and labels, embeds every row in one space (a network trained on all training rows with
crossval's recipe, or ``--features FILE``), hashes the raw rows for exact copies, and writes
``RUN/audit/issues.csv`` (one row per example and issue: ``id, split, issue, other_id, score, labels_differ``,
then ``index, other_index, given_label, other_label, distance``), ``features.npy`` (the space used, training
rows then test rows) and ``manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cleanpipe.audit import AuditSettings, find_audit_issues, issue_table, row_digests
from cleanpipe.audit.features import check_features, embed, train_embedding
from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.recipes import FitSettings, fit_settings
from cleanpipe.rundir import RunDir

SUMMARY_HEAD = 5  # rows per issue kind the summary shows


@dataclass
class AuditStage:
    """What ``cleanpipe audit`` did, for the CLI's summary."""

    manifest: dict
    table: object  # pandas.DataFrame: issues.csv
    n_train: int
    n_test: int


def _user_features(path: Path, n_train: int, n_test: int):
    features = load_npy(Path(path), what="features")
    return check_features(features, n_train, n_test, source=f"--features {path}")


def _model_features(run: RunDir, ds, labels, spec, *, seed: int, epochs: int | None, device: str, progress):
    # one more fold, on every row: crossval's network and epochs (plain cross-entropy); the train recipe's long
    # ResNet-18 runs on colour images would cost more than the audit is worth
    settings = fit_settings("crossval", ds.input_shape, source=spec.source, cls=FitSettings, epochs=epochs, seed=seed)
    result = train_embedding(ds.X_train, labels, settings=settings, device=device,
                             resume_dir=run.path("audit", "resume"), progress=progress)
    net = result.nets[0]
    train = embed(net, result.mean, result.std, ds.X_train)
    test = embed(net, result.mean, result.std, ds.X_test) if len(ds.X_test) else None
    return train, test, {"encoder": result.model, "encoder_epochs": settings.epochs, "encoder_seed": seed,
                         "encoder_train_accuracy": result.history[-1]["train_accuracy"]}


def run_audit_stage(run: RunDir, *, features: Path | None = None, settings: AuditSettings | None = None, seed: int = 0,
                    epochs: int | None = None, device: str = "auto", progress=None) -> AuditStage:
    """Audit the run's training rows (and its test split for leaks) and write ``RUN/audit/``.

    Parameters
    ----------
    run : RunDir
    features : Path, optional
        ``.npy`` float (N, D) of the training rows, or (N + M, D) with the test rows after them: a user's own
        embeddings, used instead of training an encoder.
    settings : AuditSettings, optional
        k and the thresholds (Datalab's defaults).
    seed, epochs : int
        The encoder's seed and epochs (default crossval's recipe).
    """
    settings = settings or AuditSettings(seed=seed)
    if epochs is not None and epochs < 1:
        raise CleanpipeError(f"--epochs must be at least 1, got {epochs}")
    resolve_device(device)
    started = time.perf_counter()
    with run.transaction():
        if run.dataset_json() is None:
            raise CleanpipeError(f"{run.root} has no dataset; start with `cleanpipe crossval {run.root} --dataset ...` "
                                 "(or `cleanpipe noise`)")
        spec, ds, _ = run.bind_dataset(None)
        labels, _, files = run.training_labels(ds)
        n_train, n_test = len(ds.y_train), len(ds.y_test)
        if n_train < 3:
            raise CleanpipeError(f"{run.root}: {n_train} training rows; the audit needs at least 3")
        if features is not None:
            f_train, f_test = _user_features(features, n_train, n_test)
            about = {"features": "file", "features_file": str(features)}
            files = files + [Path(features)]
        else:
            f_train, f_test, about = _model_features(run, ds, labels, spec, seed=seed, epochs=epochs, device=device,
                                                     progress=progress)
            about = {"features": "encoder", **about}
        found = find_audit_issues(f_train, labels, train_digests=row_digests(ds.X_train),
                                  test_features=f_test, test_digests=row_digests(ds.X_test) if n_test else None,
                                  images=ds.X_train if ds.is_image else None,
                                  test_images=ds.X_test if ds.is_image else None, settings=settings)
        table = issue_table(found, labels, ds.ids_train, ds.ids_test if f_test is not None else None, ds.y_test)
        counts = found.counts()
        metrics = {**{f"n_{k}": v for k, v in counts.items()},
                   "n_labels_differ": int(table["labels_differ"].sum()),
                   "median_nn_distance": round(found.median_nn_distance, 6), "pixel_checks": bool(ds.is_image), "outlier_fence": round(found.outlier_fence, 6),
                   "exact_search": found.exact_search, "feature_dim": int(f_train.shape[1]),
                   "test_leak_share": round(counts["test_leak"] / n_test, 6) if f_test is not None and n_test else None}
        with run.write_stage("audit", started=started) as w:
            for p in files:
                w.record_input(p)
            table.to_csv(w.path("issues.csv"), index=False)
            w.save_npy("features.npy", f_train if f_test is None else np.concatenate([f_train, f_test]))
            manifest = w.finish(parameters={**asdict(settings), **about, "leak_check": f_test is not None},
                                metrics=metrics, device=str(device))
    return AuditStage(manifest, table, n_train, n_test)


def read_audit(run: RunDir, n_train: int):
    """The audit stage's ``issues.csv`` (checked current), or None when the run has no audit."""
    import pandas as pd

    if not run.has("audit"):
        return None
    run.require("audit", hint=f"cleanpipe audit {run.root}")
    path = run.path("audit", "issues.csv")
    table = pd.read_csv(path, dtype={"id": str, "other_id": str}, keep_default_na=False)
    train_rows = table.loc[table["split"] == "train", "index"].to_numpy()
    if len(train_rows) and int(train_rows.max()) >= n_train:
        raise CleanpipeError(f"{path}: the audit does not fit the run's {n_train} training rows; re-run `cleanpipe audit {run.root}`")
    return table
