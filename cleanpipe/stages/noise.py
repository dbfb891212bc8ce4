"""The noise stage (``cleanpipe noise``): noise a run's training labels (or a bare label file) into ``RUN/noise/``.

The kinds, matrices and sampling are :mod:`cleanpipe.noise`; semantic noise is
:mod:`cleanpipe.noise.semantic`. This module reads the run, calls them and writes the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import read_labels
from cleanpipe.noise import (
    REALISTIC_KINDS,
    NoiseResult,
    check_noise_arguments,
    default_class_map,
    make_noisy_labels,
    parse_class_map,
    top_confusions,
)
from cleanpipe.noise.semantic import LABELER_FRACTION, semantic_noisy_labels
from cleanpipe.rundir import RunDir
from cleanpipe.validation import ParameterError


@dataclass
class NoiseStage:
    """What ``cleanpipe noise`` did, for the CLI's summary."""

    result: NoiseResult
    true_labels: np.ndarray
    class_names: list[str]
    manifest: dict
    source: str


def run_noise_stage(
    run: RunDir,
    *,
    spec=None,
    labels_file: Path | None = None,
    kind: str,
    rate: float,
    sparsity: float = 0.0,
    class_map: str | None = None,
    n_classes: int | None = None,
    seed: int = 0,
    labeler_fraction: float = LABELER_FRACTION,
    device: str = "auto",
) -> NoiseStage:
    """Noise the training labels of a run's dataset (or a bare label file) into ``RUN/noise/``.

    Parameters
    ----------
    run : RunDir
    spec : DataSpec, optional
        The dataset to bind to the run; None uses the run's own ``dataset.json``
        (or, with ``labels_file``, no dataset at all).
    labels_file : Path, optional
        Standalone form (with ``spec=None``): noise this label vector (.npy/.csv/.json).
        With a ``spec``, put the file in ``spec.labels`` instead.
    kind, rate, sparsity, seed : see :func:`make_noisy_labels`.
    class_map : str, optional
        ``--map`` text for ``asymmetric``; None takes the dataset's standard map.
    n_classes : int, optional
        Standalone form only; default ``max(label) + 1``.
    labeler_fraction, device
        ``semantic`` only: the labeler's share of the data and where it trains.
    """

    standalone = spec is None and labels_file is not None
    check_noise_arguments(kind, n_classes, rate, sparsity)  # fail before touching the disk (K is checked once known)
    if class_map and kind != "asymmetric":
        raise ParameterError("class_map", "applies only to {kind} asymmetric", ("kind",))
    if n_classes and not standalone:
        raise ParameterError("n_classes", "applies only to the standalone form (a {labels} file without a {dataset})",
                             ("labels", "dataset"))
    if kind in REALISTIC_KINDS and standalone:
        raise ParameterError("kind", f"{{name}} {kind} learns from the examples: give the data (a {{dataset}}), not a bare label file",
                             ("dataset",))
    if labeler_fraction != LABELER_FRACTION and kind not in REALISTIC_KINDS:
        raise ParameterError("labeler_fraction", "applies only to {kind} semantic", ("kind",))
    if kind in REALISTIC_KINDS:
        resolve_device(device)
    with run.transaction():
        if standalone:
            if run.dataset_json() is not None:
                raise CleanpipeError(
                    f"{run.root} already has a dataset; noise a bare --labels file in a new run directory"
                )
            labels = read_labels(Path(labels_file))
            K = int(n_classes) if n_classes else int(labels.max()) + 1
            if labels.max() >= K:
                raise ParameterError("n_classes", f"is {K} but {labels_file} has label {labels.max()}")
            class_names, source, meta, ds = [str(k) for k in range(K)], None, {}, None
        else:
            spec, ds, is_new = run.bind_dataset(spec)
            labels, K, class_names, source, meta = ds.y_train, ds.n_classes, ds.class_names, spec.source, ds.meta
        if kind == "asymmetric":
            cmap = parse_class_map(class_map, class_names) if class_map else default_class_map(source, K, meta)
        else:
            cmap = None
        extra: dict = {}
        if kind == "semantic":
            sem = semantic_noisy_labels(ds.X_train, labels, rate, n_classes=K, labeler_fraction=labeler_fraction,
                                        source=source, seed=seed, device=device)
            result = sem.result
            extra = {"labeler_accuracy": round(sem.labeler_accuracy, 6), "labeler_rows": int(len(sem.labeler_rows)),
                     "top_confusions": top_confusions(labels, result.noisy_labels, class_names)}
        else:
            result = make_noisy_labels(labels, kind, rate, n_classes=K, class_map=cmap, sparsity=sparsity, seed=seed)
        changed = result.noisy_labels != labels
        parameters = {
            "kind": kind,
            "rate": rate,
            "sparsity": sparsity,
            "seed": seed,
            "class_map": {str(k): v for k, v in cmap.items()} if cmap else None,
            "labels_file": str(Path(labels_file).resolve()) if standalone else None,
            "n_classes": K,
        }
        if kind == "semantic":
            parameters.update({"labeler_fraction": labeler_fraction, "labeler": sem.settings})
        with run.write_stage("noise") as w:
            w.save_npy("noisy_labels.npy", result.noisy_labels)
            w.save_npy("noise_matrix.npy", result.noise_matrix)
            if kind == "semantic":
                w.save_npy("labeler_rows.npy", sem.labeler_rows)
            if standalone:
                w.record_input(Path(labels_file))
            else:
                if is_new:
                    run.write_dataset(spec, ds)
                w.record_input(run.root / "dataset.json")
            manifest = w.finish(
                parameters=parameters,
                metrics={
                    "actual_noise_rate": round(result.actual_noise_rate, 6),
                    "expected_noise_rate": round(result.expected_noise_rate, 6),
                    "n_changed": int(changed.sum()),
                    "n": int(len(labels)),
                    "n_changed_per_class": np.bincount(labels[changed], minlength=K).tolist(),
                    "n_per_class": np.bincount(labels, minlength=K).tolist(),
                    **extra,
                },
            )
    return NoiseStage(result, labels, class_names, manifest, source or "labels file")
