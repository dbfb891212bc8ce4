"""``cleanpipe predict`` and ``cleanpipe evaluate``: a run's trained model labels new data shaped like the
run's, or is scored on the run's test split.

New data is read as :mod:`cleanpipe.data.unlabeled` reads it (a folder of images resized as the run's
were, a table with the run's feature columns, an ``.npz`` with ``X``), scored in batches with the
training rows' normalisation, and written as ``id,predicted_label,predicted_class,confidence``
(with ``--probs``, one ``p_<class>`` column per class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cleanpipe.data import DataSpec
from cleanpipe.data.unlabeled import load_unlabeled
from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import atomic_write_bytes
from cleanpipe.rundir import RunDir
from cleanpipe.saved_model import load_model, model_probabilities


def predictions_table(ids: np.ndarray, probs: np.ndarray, class_names: list[str], with_probs: bool = False):
    """The predictions as a DataFrame: ``id``, ``predicted_label`` (int), ``predicted_class``, ``confidence``
    (the top probability), then ``p_<class>`` per class when ``with_probs``."""
    import pandas as pd

    pred = probs.argmax(1)
    cols = {"id": np.asarray(ids, dtype=str), "predicted_label": pred,
            "predicted_class": np.asarray(class_names, dtype=object)[pred],
            "confidence": np.round(probs.max(1), 6)}
    if with_probs:
        cols.update({f"p_{name}": np.round(probs[:, k], 6) for k, name in enumerate(class_names)})
    return pd.DataFrame(cols)


@dataclass
class PredictStage:
    out: Path
    n: int
    class_counts: dict
    mean_confidence: float
    device: str


def run_predict(run: RunDir, data: Path, *, kind: str | None = None, out: Path | None = None, with_probs: bool = False,
                checkpoint: Path | None = None, device: str = "auto", progress=None) -> PredictStage:
    """Label ``data`` with the run's trained model; writes ``out`` (default ``RUN/predict/predictions.csv``).

    Parameters
    ----------
    run : RunDir
        A run with a train stage (or give ``checkpoint``).
    data : Path
        A folder of images, a ``.csv``/``.parquet`` table with the run's feature columns, or an ``.npz``
        archive with ``X`` (and optionally ``ids``).
    kind : {'folder', 'table', 'npz'}, optional
        How to read ``data``; default: by its form.
    out : Path, optional
        A ``.csv`` file in an existing folder; default ``RUN/predict/predictions.csv`` (with a manifest).
    """

    if out is not None:
        out = Path(out)
        if out.suffix.lower() != ".csv":
            raise CleanpipeError(f"--out {out}: predictions are written as CSV; give a .csv file name")
        if not out.resolve().parent.is_dir():
            raise CleanpipeError(f"--out {out}: its folder does not exist; create it first")
    dev = resolve_device(device)
    recorded = run.dataset_json()
    if recorded is None:
        raise CleanpipeError(f"{run.root} has no dataset; predict needs a run that trained a model (`cleanpipe run {run.root}`)")
    if checkpoint is None:
        run.require("train", hint=f"cleanpipe train {run.root}")
        checkpoint = run.path("train", "model.pt")
    net, state = load_model(Path(checkpoint))
    spec = DataSpec.from_json(recorded["spec"])
    shape = tuple(recorded["input_shape"])
    like = SimpleNamespace(input_shape=shape, is_image=len(shape) == 3, meta=recorded.get("meta", {}))
    if tuple(state["input_shape"]) != shape:
        raise CleanpipeError(f"{checkpoint} was trained on data shaped {tuple(state['input_shape'])}, not {run.root}'s {shape}")
    side = shape[1] if like.is_image else spec.image_size  # images from a folder take the run's own size
    X, ids = load_unlabeled(Path(data), like, side, kind=kind, flag="--data", prefix="")
    probs = model_probabilities(net, state, X, dev, progress)
    names = list(state["class_names"])
    table = predictions_table(ids, probs, names, with_probs)
    csv = table.to_csv(index=False).encode()
    if out is None:
        with run.transaction(), run.write_stage("predict") as w:
            w.path("predictions.csv").write_bytes(csv)
            w.record_input(Path(checkpoint))
            w.finish(parameters={"data": str(Path(data).resolve()), "kind": kind, "probs": with_probs},
                     metrics={"n": int(len(ids))}, device=str(dev))
        out = run.path("predict", "predictions.csv")
    else:
        try:
            atomic_write_bytes(out, csv)
        except OSError as e:
            raise CleanpipeError(f"--out {out}: cannot write it ({e.strerror or e}); choose another path") from None
    pred = probs.argmax(1)
    counts = {names[k]: int(c) for k, c in enumerate(np.bincount(pred, minlength=len(names))) if c}
    return PredictStage(out, int(len(ids)), counts, float(probs.max(1).mean()) if len(probs) else 0.0, str(dev))


def evaluate(run: RunDir, checkpoint: Path | None = None, device: str = "auto") -> dict:
    """Accuracy and the confusion matrix (rows = true class, counts) of a trained model on the run's test split."""

    dev = resolve_device(device)
    if checkpoint is None:
        run.require("train", hint=f"cleanpipe train {run.root}")
        checkpoint = run.path("train", "model.pt")
    net, state = load_model(Path(checkpoint))
    _, ds, _ = run.bind_dataset(None)
    if not len(ds.y_test):
        raise CleanpipeError(
            f"{run.root} has no test split (made with --test-fraction 0), so there is nothing to evaluate on; "
            f"label new data with `cleanpipe predict {run.root} --data PATH`, or make a run with --test-fraction 0.2"
        )
    if tuple(state["input_shape"]) != tuple(ds.input_shape) or int(state["n_classes"]) != ds.n_classes:
        raise CleanpipeError(f"{checkpoint} was trained on data of another shape or class count than {run.root}'s")
    pred = model_probabilities(net, state, ds.X_test, dev).argmax(1)
    K = ds.n_classes
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (ds.y_test, pred), 1)
    return {"accuracy": float(np.mean(pred == ds.y_test)), "confusion": confusion, "class_names": list(ds.class_names),
            "n_test": int(len(ds.y_test)), "checkpoint": str(checkpoint)}
