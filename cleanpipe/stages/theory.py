"""The theory stage: check INCV's theory of noisy held-out predictions on the run's own data.

Chen et al. (2019) predict what a network trained on noisy labels does on unseen data:
its predictions follow the noise, ``P(ŷ = j | y* = i) = T[i, j]`` (Chen et al. 2019, section 3). The check of
``Verify_Theory.py``: train on one half of the noisy training set, score the other half,
and compare the noisy accuracy, label precision and label recall with the closed forms,
and the held-out confusion matrix with the noise matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanpipe.detect.incv import incv_settings, train_and_score
from cleanpipe.detect.theory import closed_form, measured_held_out, predicted_held_out
from cleanpipe.engine import device_name, resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.plots import plot_heatmaps
from cleanpipe.rundir import RunDir

QUANTITIES = {
    "noisy_accuracy": "noisy accuracy P(ŷ = ỹ)",
    "label_precision": "label precision",
    "label_recall": "label recall",
    "clean_accuracy": "clean accuracy P(ŷ = y*)",
}


@dataclass
class TheoryStage:
    """What ``cleanpipe theory`` measured, for the CLI's summary."""

    measured: dict
    predicted: dict
    closed_form: dict | None
    confusion: np.ndarray  # float64 (K, K), row-normalised, rows = true class
    transition: np.ndarray  # float64 (K, K), T[i, j] = P(noisy = j | true = i)
    class_names: list[str]
    manifest: dict


def run_theory_stage(run: RunDir, *, model: str = "auto", epochs: int | None = None, seed: int = 0,
                     device: str = "auto", progress=None) -> TheoryStage:
    """Train on half of the noisy training set, score the other half, write ``RUN/theory/``.

    Outputs: ``theory.csv`` (each quantity measured and predicted), ``confusion_matrix.npy``
    and ``transition_matrix.npy`` (float64 K x K, both rows = true class, so they compare
    cell by cell), ``confusion.png`` (the two as heat maps), ``held_out.csv`` (per held-out
    example: noisy, true and predicted label) and ``manifest.json``.
    """
    import pandas as pd

    dev = resolve_device(device)
    if not run.has("noise"):
        raise CleanpipeError(
            f"{run.root}: the theory check needs synthetic noise with known true labels; "
            f"run `cleanpipe noise {run.root} --dataset NAME --kind symmetric --rate 0.4` first"
        )
    if run.dataset_json() is None:
        raise CleanpipeError(
            f"{run.root} noised a bare label file and has no images to train on; use a run made with --dataset"
        )
    with run.transaction():
        noise_man = run.require("noise")
        spec, ds, _ = run.bind_dataset(None)
        labels, truth, files = run.training_labels(ds)
        matrix_file = run.path("noise", "noise_matrix.npy")
        transition = load_npy(matrix_file, what="noise matrix").astype(np.float64).T
        K = ds.n_classes
        if transition.shape != (K, K):
            raise CleanpipeError(f"{matrix_file} is {transition.shape}, not {K} x {K}; re-run `cleanpipe noise {run.root}`")
        settings = incv_settings(ds.input_shape, spec.source, model, epochs=epochs, seed=seed)
        order = np.random.default_rng(seed).permutation(len(labels))
        train_rows, held = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
        # As Verify_Theory: the last epoch, no checkpoint selection.
        probs, _ = train_and_score(ds.X_train, labels, train_rows, held, settings, K, device=device, progress=progress)
        predicted_label = probs.argmax(1)
        measured, confusion = measured_held_out(predicted_label, labels[held], truth[held], K)
        prior = np.bincount(truth[held], minlength=K)
        predicted = predicted_held_out(transition, prior)
        params = noise_man["parameters"]
        closed = closed_form(params["kind"], params["rate"], K)
        table = pd.DataFrame({
            "quantity": list(QUANTITIES),
            "measured": [round(measured[q], 6) for q in QUANTITIES],
            "predicted": [round(predicted[q], 6) for q in QUANTITIES],
            "closed_form": [round(closed[q], 6) if closed else None for q in QUANTITIES],
        })
        table["difference"] = (table["measured"] - table["predicted"]).round(6)
        held_out = pd.DataFrame({"index": held, "id": np.asarray(ds.ids_train)[held], "noisy_label": labels[held],
                                 "true_label": truth[held], "predicted_label": predicted_label})
        metrics = {
            "measured": {q: round(v, 6) for q, v in measured.items()},
            "predicted": {q: round(v, 6) for q, v in predicted.items()},
            "closed_form": {q: round(v, 6) for q, v in closed.items()} if closed else None,
            "max_abs_difference": round(float(table["difference"].abs().max()), 6),
            "confusion_vs_noise_max_abs": round(float(np.nanmax(np.abs(confusion - transition))), 6),
            "held_out_per_class": prior.tolist(),
            "n_train": int(len(train_rows)),
            "n_held_out": int(len(held)),
        }
        parameters = {"model": settings.model, "epochs": settings.epochs, "batch_size": settings.batch_size,
                      "lr": settings.lr, "seed": seed, "noise_kind": params["kind"], "noise_rate": params["rate"]}
        with run.write_stage("theory") as w:
            for p in [*files, matrix_file]:
                w.record_input(p)
            table.to_csv(w.path("theory.csv"), index=False)
            held_out.to_csv(w.path("held_out.csv"), index=False)
            w.save_npy("confusion_matrix.npy", confusion)
            w.save_npy("transition_matrix.npy", transition)
            plot_confusion(transition, confusion, list(ds.class_names), w.path("confusion.png"),
                           title=f"{params['kind']} noise, rate {params['rate']:g}")
            manifest = w.finish(parameters=parameters, metrics=metrics, device=device_name(dev))
    return TheoryStage(measured, predicted, closed, confusion, transition, list(ds.class_names), manifest)


def plot_confusion(transition: np.ndarray, confusion: np.ndarray, class_names: list[str], path: Path,
                   title: str = "") -> None:
    """Two heat maps side by side: the noise matrix T and the held-out confusion matrix M (PNG)."""

    plot_heatmaps([(transition, "noise matrix T: P(noisy label | true)", "noisy label", "true class"),
                   (confusion, "held-out predictions M: P(ŷ | true)", "predicted class", "true class")],
                  class_names, path, title=title, dpi=110)
